"""RFC 6455, server side, without sockets: the upgrade handshake and client frames."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.testing.wsclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    client_frame,
    upgrade_request,
)
from tether.transports.websocket import wire
from tether.transports.websocket.negotiation import WIRE_FORMATS, websocket_format
from tether.transports.websocket.wire import (
    Close,
    Failure,
    HandshakeError,
    Message,
    Ping,
    Pong,
    ServerConnection,
    State,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()

# Inputs are bounded in size; a wall-clock deadline would only fail on a loaded machine.
no_deadline = settings(deadline=None)


def head(request: bytes) -> bytes:
    """The request without its final blank line, as the server hands it to parse_upgrade."""
    return request.removesuffix(b"\r\n\r\n")


def rejected_status(request: bytes) -> int:
    with pytest.raises(HandshakeError) as info:
        wire.parse_upgrade(head(request))
    return info.value.status


# -- handshake ----------------------------------------------------------------------------


def test_valid_upgrade_is_accepted_with_path_and_lowercased_headers() -> None:
    request = upgrade_request(
        "/connection/websocket?format=json", headers={"Sec-WebSocket-Key": KEY}
    )
    upgrade = wire.parse_upgrade(head(request))
    assert upgrade.path == "/connection/websocket"
    assert upgrade.key == KEY
    assert upgrade.headers["upgrade"] == "websocket"


def test_upgrade_tokens_are_matched_case_insensitively_in_lists() -> None:
    request = upgrade_request(headers={"Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade"})
    assert wire.parse_upgrade(head(request)).path == "/connection/websocket"


def test_accept_response_carries_the_rfc_accept_hash() -> None:
    # The RFC 6455 section 1.3 example.
    response = wire.accept_response("dGhlIHNhbXBsZSBub25jZQ==")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n")


def test_accept_hash_is_sha1_of_key_and_guid() -> None:
    expected = base64.b64encode(hashlib.sha1(KEY.encode() + wire.GUID).digest())
    assert b"Sec-WebSocket-Accept: " + expected in wire.accept_response(KEY)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE", 400),
        (b"GET /connection/websocket", 400),
        (upgrade_request(version="HTTP/1.0"), 400),
        (upgrade_request(method="POST"), 405),
        (upgrade_request(headers={"Upgrade": None}), 426),
        (upgrade_request(headers={"Upgrade": "h2c"}), 426),
        (upgrade_request(headers={"Connection": "keep-alive"}), 426),
        (upgrade_request(headers={"Sec-WebSocket-Version": "8"}), 426),
        (upgrade_request(headers={"Sec-WebSocket-Version": None}), 426),
        (upgrade_request(headers={"Sec-WebSocket-Key": None}), 400),
        (upgrade_request(headers={"Sec-WebSocket-Key": "not base64!"}), 400),
        (upgrade_request(headers={"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}), 400),
        (b"GET / HTTP/1.1\r\nno colon here", 400),
        (b"GET / HTTP/1.1\r\n Folded: header", 400),
    ],
    ids=[
        "garbage",
        "no-version",
        "http-1.0",
        "post",
        "no-upgrade",
        "other-upgrade",
        "no-connection-upgrade",
        "version-8",
        "no-version-header",
        "no-key",
        "key-not-base64",
        "key-not-16-bytes",
        "header-without-colon",
        "folded-header",
    ],
)
def test_bad_upgrade_is_rejected_with_its_status(request_bytes: bytes, status: int) -> None:
    assert rejected_status(request_bytes) == status


def test_reject_response_is_a_complete_http_answer() -> None:
    response = wire.reject_response(426, "Upgrade Required")
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Content-Length: 16\r\n" in response
    assert response.endswith(b"\r\n\r\nUpgrade Required")


# -- server frames ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),
    ],
)
def test_text_frame_uses_the_smallest_length_encoding(size: int, header: bytes) -> None:
    payload = b"x" * size
    assert wire.text_frame(payload) == header + payload


def test_close_frame_carries_code_and_reason() -> None:
    assert wire.close_frame(3501, "bad request") == b"\x88\x0d\x0d\xadbad request"


def test_close_frame_reason_is_cut_to_fit_a_control_frame() -> None:
    frame = wire.close_frame(1000, "r" * 500)
    assert frame[1] == 125
    assert len(frame) == 2 + 125


# -- client frames ------------------------------------------------------------------------


def opened(max_size: int = 1024) -> ServerConnection:
    """A connection past a valid upgrade (its 101 already taken)."""
    conn = ServerConnection(max_size)
    [request] = conn.receive_data(upgrade_request(headers={"Sec-WebSocket-Key": KEY}))
    assert isinstance(request, wire.Request)
    assert conn.accept(request.upgrade) == []
    assert conn.data_to_send().startswith(b"HTTP/1.1 101 ")
    return conn


def parse(data: bytes, max_size: int = 1024) -> list[wire.Event]:
    """The events of ``data``, which must not break the protocol."""
    events = opened(max_size).receive_data(data)
    assert not any(isinstance(e, Failure) for e in events), events
    return events


def error_code(data: bytes, max_size: int = 1024) -> int:
    """The close code ``data`` is answered with (a protocol error: a Failure event, a
    close frame with that code, and the connection closing)."""
    conn = opened(max_size)
    failure = conn.receive_data(data)[-1]
    assert isinstance(failure, Failure), failure
    assert conn.state is State.CLOSING
    assert conn.data_to_send().endswith(wire.close_frame(failure.code, failure.reason))
    return failure.code


def test_masked_text_frame_is_a_text_message() -> None:
    assert parse(client_frame(OP_TEXT, b'{"id":1}')) == [Message(b'{"id":1}', text=True)]


def test_masked_binary_frame_is_a_binary_message() -> None:
    assert parse(client_frame(OP_BINARY, b"\x00\xff")) == [Message(b"\x00\xff", text=False)]


def test_empty_text_frame_is_an_empty_message() -> None:
    assert parse(client_frame(OP_TEXT, b"")) == [Message(b"", text=True)]


def test_several_frames_in_one_chunk_give_events_in_order() -> None:
    data = client_frame(OP_TEXT, b"a") + client_frame(OP_PING, b"p") + client_frame(OP_TEXT, b"b")
    assert parse(data) == [Message(b"a", True), Ping(b"p"), Message(b"b", True)]


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_frames_of_every_length_encoding_are_parsed(size: int) -> None:
    payload = b"y" * size
    assert parse(client_frame(OP_TEXT, payload), max_size=size) == [Message(payload, True)]


def test_unmasked_frame_is_a_protocol_error() -> None:
    assert error_code(client_frame(OP_TEXT, b"hi", masked=False)) == wire.CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("rsv", [1, 2, 4])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    assert error_code(client_frame(OP_TEXT, b"hi", rsv=rsv)) == wire.CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_unknown_opcode_is_a_protocol_error(opcode: int) -> None:
    assert error_code(client_frame(opcode, b"")) == wire.CLOSE_PROTOCOL_ERROR


def test_fragmented_message_is_reassembled() -> None:
    data = (
        client_frame(OP_TEXT, b"he", fin=False)
        + client_frame(OP_CONT, b"ll", fin=False)
        + client_frame(OP_CONT, b"o")
    )
    assert parse(data) == [Message(b"hello", True)]


def test_control_frame_between_fragments_is_delivered_first() -> None:
    data = (
        client_frame(OP_BINARY, b"ab", fin=False)
        + client_frame(OP_PING, b"!")
        + client_frame(OP_CONT, b"cd")
    )
    assert parse(data) == [Ping(b"!"), Message(b"abcd", False)]


def test_continuation_without_a_message_is_a_protocol_error() -> None:
    assert error_code(client_frame(OP_CONT, b"x")) == wire.CLOSE_PROTOCOL_ERROR


def test_new_message_inside_a_fragmented_one_is_a_protocol_error() -> None:
    data = client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b")
    assert error_code(data) == wire.CLOSE_PROTOCOL_ERROR


def test_fragmented_control_frame_is_a_protocol_error() -> None:
    assert error_code(client_frame(OP_PING, b"x", fin=False)) == wire.CLOSE_PROTOCOL_ERROR


def test_control_frame_over_125_bytes_is_a_protocol_error() -> None:
    assert error_code(client_frame(OP_PING, b"x" * 126)) == wire.CLOSE_PROTOCOL_ERROR


def test_ping_and_pong_carry_their_payload() -> None:
    data = client_frame(OP_PING, b"ping") + client_frame(OP_PONG, b"pong")
    assert parse(data) == [Ping(b"ping"), Pong(b"pong")]


def test_close_frame_gives_code_and_reason() -> None:
    payload = struct.pack("!H", 1000) + b"bye"
    assert parse(client_frame(OP_CLOSE, payload)) == [Close(1000, "bye")]


def test_empty_close_frame_means_no_status() -> None:
    assert parse(client_frame(OP_CLOSE, b"")) == [Close(1005, "")]


def test_nothing_after_a_close_frame_is_parsed() -> None:
    data = client_frame(OP_CLOSE, struct.pack("!H", 1001)) + client_frame(OP_TEXT, b"late")
    assert parse(data) == [Close(1001, "")]


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 3000, 3501, 4999])
def test_close_codes_a_peer_may_send_are_accepted(code: int) -> None:
    assert parse(client_frame(OP_CLOSE, struct.pack("!H", code))) == [Close(code, "")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_a_peer_may_not_send_are_a_protocol_error(code: int) -> None:
    assert error_code(client_frame(OP_CLOSE, struct.pack("!H", code))) == wire.CLOSE_PROTOCOL_ERROR


def test_close_frame_with_one_byte_is_a_protocol_error() -> None:
    assert error_code(client_frame(OP_CLOSE, b"\x03")) == wire.CLOSE_PROTOCOL_ERROR


def test_close_reason_that_is_not_utf8_is_invalid_data() -> None:
    payload = struct.pack("!H", 1000) + b"\xff"
    assert error_code(client_frame(OP_CLOSE, payload)) == wire.CLOSE_INVALID_DATA


def test_text_message_that_is_not_utf8_is_invalid_data() -> None:
    assert error_code(client_frame(OP_TEXT, b"\xc3\x28")) == wire.CLOSE_INVALID_DATA


def test_fragmented_text_is_checked_as_a_whole_for_utf8() -> None:
    # "é" is c3 a9: split across two fragments it is valid once reassembled.
    data = client_frame(OP_TEXT, b"\xc3", fin=False) + client_frame(OP_CONT, b"\xa9")
    assert parse(data) == [Message("é".encode(), True)]


def test_binary_message_is_not_checked_for_utf8() -> None:
    assert parse(client_frame(OP_BINARY, b"\xff")) == [Message(b"\xff", False)]


def test_message_at_max_size_is_accepted() -> None:
    assert parse(client_frame(OP_TEXT, b"z" * 100), max_size=100) == [Message(b"z" * 100, True)]


def test_message_over_max_size_is_too_big() -> None:
    assert error_code(client_frame(OP_TEXT, b"z" * 101), max_size=100) == wire.CLOSE_TOO_BIG


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    # The parser must not wait for (and buffer) a payload it will refuse anyway.
    header = client_frame(OP_TEXT, b"z" * 70000)[:10]
    assert error_code(header, max_size=65536) == wire.CLOSE_TOO_BIG


def test_fragments_over_max_size_together_are_too_big() -> None:
    data = client_frame(OP_TEXT, b"z" * 60, fin=False) + client_frame(OP_CONT, b"z" * 60)
    assert error_code(data, max_size=100) == wire.CLOSE_TOO_BIG


def test_a_new_message_after_a_fragmented_one_starts_from_zero_size() -> None:
    conn = opened(100)
    conn.receive_data(
        client_frame(OP_TEXT, b"z" * 60, fin=False) + client_frame(OP_CONT, b"z" * 40)
    )
    assert conn.receive_data(client_frame(OP_TEXT, b"w" * 100)) == [Message(b"w" * 100, True)]


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    data = (
        client_frame(OP_TEXT, b'{"id":1,"connect":{}}')
        + client_frame(OP_PING, b"p")
        + client_frame(OP_TEXT, b"x" * 300, fin=False)
        + client_frame(OP_CONT, b"y" * 70000)
        + client_frame(OP_CLOSE, struct.pack("!H", 1000))
    )
    whole = parse(data, max_size=1 << 20)
    conn = opened(1 << 20)
    pieces = [event for i in range(len(data)) for event in conn.receive_data(data[i : i + 1])]
    assert pieces == whole
    assert len(whole) == 4


def test_connection_holds_no_buffer_after_complete_frames() -> None:
    conn = opened(1024)
    conn.receive_data(client_frame(OP_TEXT, b"hello")[:3])
    assert conn.buffered == 3
    conn.receive_data(client_frame(OP_TEXT, b"hello")[3:])
    assert conn.buffered == 0


frames = st.builds(
    client_frame,
    st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 0x3]),
    st.binary(max_size=200),
    fin=st.booleans(),
    masked=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1]),
)


@no_deadline
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_events_or_a_websocket_error(data: bytes) -> None:
    events = opened(256).receive_data(data)
    failures = [e for e in events if isinstance(e, Failure)]
    if failures:
        codes = (wire.CLOSE_PROTOCOL_ERROR, wire.CLOSE_INVALID_DATA, wire.CLOSE_TOO_BIG)
        assert failures == [events[-1]]
        assert events[-1].code in codes
    assert all(isinstance(e, Message | Ping | Pong | Close | Failure) for e in events)


@no_deadline
@given(st.lists(frames, max_size=6), st.integers(min_value=1, max_value=50))
def test_frame_like_input_in_chunks_gives_the_same_outcome_as_in_one_piece(
    chunks: list[bytes], step: int
) -> None:
    data = b"".join(chunks)

    def outcome(pieces: list[bytes]) -> tuple[list[wire.Event], bytes]:
        conn = opened(256)
        events = [event for piece in pieces for event in conn.receive_data(piece)]
        return events, conn.data_to_send()

    whole = outcome([data])
    chunked = outcome([data[i : i + step] for i in range(0, len(data), step)])
    assert chunked == whole


# -- wire formats: one per codec, framed by its kind -------------------------------------


def test_a_binary_codec_goes_out_in_binary_frames_and_json_in_text_frames() -> None:
    class BinaryCodec:
        name, binary, ping = "fake", True, b"\x00"

    binary = websocket_format(BinaryCodec())  # type: ignore[arg-type]
    assert binary.ping == b"\x82\x01\x00"
    assert WIRE_FORMATS["json"].ping == b"\x81\x02{}"
    assert wire.binary_frame(b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"


def test_a_chosen_subprotocol_is_named_in_the_101_answer() -> None:
    response = wire.accept_response(KEY, "centrifuge-protobuf")
    assert b"\r\nSec-WebSocket-Protocol: centrifuge-protobuf\r\n" in response
    assert response.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Protocol" not in wire.accept_response(KEY)


# -- the server connection: states, the automatic pong, the close echo --------------------


def test_a_connection_starts_connecting_and_opens_when_accepted() -> None:
    conn = ServerConnection(1024)
    assert conn.state is State.CONNECTING
    [event] = conn.receive_data(upgrade_request(headers={"Sec-WebSocket-Key": KEY}))
    assert isinstance(event, wire.Request)
    assert event.upgrade.path == "/connection/websocket"
    conn.accept(event.upgrade)
    assert conn.state is State.OPEN
    assert conn.data_to_send() == wire.accept_response(KEY)
    assert conn.data_to_send() == b""


def test_frames_that_came_with_the_request_are_events_of_the_accept() -> None:
    conn = ServerConnection(1024)
    data = upgrade_request(headers={"Sec-WebSocket-Key": KEY}) + client_frame(OP_TEXT, b"hi")
    [event] = conn.receive_data(data)
    assert isinstance(event, wire.Request)
    assert conn.accept(event.upgrade) == [Message(b"hi", True)]


def test_a_request_split_over_reads_is_one_request() -> None:
    conn = ServerConnection(1024)
    data = upgrade_request(headers={"Sec-WebSocket-Key": KEY})
    assert conn.receive_data(data[:10]) == []
    assert conn.buffered == 10
    [event] = conn.receive_data(data[10:])
    assert isinstance(event, wire.Request)


def test_a_rejected_upgrade_sends_the_status_and_closes() -> None:
    conn = ServerConnection(1024)
    [_request] = conn.receive_data(upgrade_request(headers={"Sec-WebSocket-Key": KEY}))
    conn.reject(503, "Too Many Connections", retry_after=2)
    assert conn.state is State.CLOSING
    assert conn.data_to_send() == wire.reject_response(503, "Too Many Connections", 2)


def test_a_malformed_request_is_refused_by_the_connection_itself() -> None:
    conn = ServerConnection(1024)
    assert conn.receive_data(upgrade_request(method="POST")) == []
    assert conn.state is State.CLOSING
    assert conn.data_to_send().startswith(b"HTTP/1.1 405 ")


def test_a_request_head_over_the_limit_is_431_however_it_is_split() -> None:
    conn = ServerConnection(1024)
    for _ in range(wire.MAX_HANDSHAKE_BYTES // 1000 + 1):
        conn.receive_data(b"x" * 1000)
    assert conn.state is State.CLOSING
    assert conn.data_to_send().startswith(b"HTTP/1.1 431 ")
    assert conn.buffered == 0


def test_a_ping_is_answered_with_a_pong_carrying_its_payload() -> None:
    conn = opened()
    assert conn.receive_data(client_frame(OP_PING, b"are you there")) == [Ping(b"are you there")]
    assert conn.data_to_send() == wire.control_frame(OP_PONG, b"are you there")
    assert conn.state is State.OPEN


def test_a_close_is_echoed_with_its_code_and_nothing_is_read_after_it() -> None:
    conn = opened()
    events = conn.receive_data(client_frame(OP_CLOSE, struct.pack("!H", 4001) + b"bye"))
    assert events == [Close(4001, "bye")]
    assert conn.state is State.CLOSING
    assert conn.data_to_send() == wire.close_frame(4001)
    assert conn.receive_data(client_frame(OP_TEXT, b"late")) == []
    assert conn.data_to_send() == b""


def test_a_close_without_a_code_is_echoed_with_1000_never_1005() -> None:
    conn = opened()
    assert conn.receive_data(client_frame(OP_CLOSE, b"")) == [Close(1005, "")]
    assert conn.data_to_send() == wire.close_frame(wire.CLOSE_NORMAL)


def test_the_server_closing_sends_one_close_frame() -> None:
    conn = opened()
    conn.send_close(3501, "bad request")
    conn.send_close(3000, "again")  # already closing: nothing more
    assert conn.state is State.CLOSING
    assert conn.data_to_send() == wire.close_frame(3501, "bad request")


def test_a_lost_socket_is_closed_in_any_state() -> None:
    for conn in (ServerConnection(1024), opened()):
        conn.connection_lost()
        assert conn.state is State.CLOSED
        assert conn.receive_data(client_frame(OP_TEXT, b"x")) == []


def test_accepting_twice_is_our_bug_not_the_peers() -> None:
    conn = opened()
    with pytest.raises(RuntimeError, match="open, not connecting"):
        conn.reject(400, "late")


# -- the client side: frames out masked, server frames in ----------------------------------


def test_a_client_frame_is_masked_and_unmasks_to_its_payload() -> None:
    frame = client_frame(OP_TEXT, b"hello", mask=b"\x01\x02\x03\x04")
    assert frame[:2] == b"\x81\x85"
    assert frame[2:6] == b"\x01\x02\x03\x04"
    assert wire.apply_mask(frame[6:], b"\x01\x02\x03\x04") == b"hello"
    assert opened().receive_data(frame) == [Message(b"hello", True)]


def test_server_frames_are_read_back_as_frames_across_reads() -> None:
    data = wire.text_frame(b"a" * 300) + wire.close_frame(3001, "shutdown")
    reader = wire.ServerFrameReader()
    assert reader.feed(data[:5]) == []
    text, close = reader.feed(data[5:])
    assert (text.opcode, text.fin, text.payload) == (OP_TEXT, True, b"a" * 300)
    assert (close.close_code, close.close_reason) == (3001, "shutdown")


def test_frame_head_reads_every_length_encoding_and_waits_for_the_rest() -> None:
    for size, head in ((5, 2), (300, 4), (70000, 10)):
        frame = wire.text_frame(b"z" * size)
        assert wire.frame_head(frame, 0) == (0x81, frame[1], head, size)
        assert wire.frame_head(frame[: head - 1], 0) is None
    masked = client_frame(OP_TEXT, b"z" * 300)
    assert wire.frame_head(masked, 0) == (0x81, 0xFE, 8, 300)
