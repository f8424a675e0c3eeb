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
    FrameParser,
    HandshakeError,
    Message,
    Ping,
    Pong,
    WebSocketError,
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


def parse(data: bytes, max_size: int = 1024) -> list[wire.Event]:
    return FrameParser(max_size).feed(data)


def error_code(data: bytes, max_size: int = 1024) -> int:
    with pytest.raises(WebSocketError) as info:
        parse(data, max_size)
    return info.value.code


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
    parser = FrameParser(100)
    parser.feed(client_frame(OP_TEXT, b"z" * 60, fin=False) + client_frame(OP_CONT, b"z" * 40))
    assert parser.feed(client_frame(OP_TEXT, b"w" * 100)) == [Message(b"w" * 100, True)]


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    data = (
        client_frame(OP_TEXT, b'{"id":1,"connect":{}}')
        + client_frame(OP_PING, b"p")
        + client_frame(OP_TEXT, b"x" * 300, fin=False)
        + client_frame(OP_CONT, b"y" * 70000)
        + client_frame(OP_CLOSE, struct.pack("!H", 1000))
    )
    whole = parse(data, max_size=1 << 20)
    parser = FrameParser(1 << 20)
    pieces = [event for i in range(len(data)) for event in parser.feed(data[i : i + 1])]
    assert pieces == whole
    assert len(whole) == 4


def test_parser_holds_no_buffer_after_complete_frames() -> None:
    parser = FrameParser(1024)
    parser.feed(client_frame(OP_TEXT, b"hello"))
    assert parser._buf == b""


frames = st.builds(
    client_frame,
    st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 0x3]),
    st.binary(max_size=200),
    fin=st.booleans(),
    masked=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1]),
)


def feed_once(data: bytes) -> list[wire.Event] | WebSocketError:
    try:
        return FrameParser(256).feed(data)
    except WebSocketError as exc:
        return exc


@no_deadline
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_events_or_a_websocket_error(data: bytes) -> None:
    outcome = feed_once(data)
    if isinstance(outcome, WebSocketError):
        codes = (wire.CLOSE_PROTOCOL_ERROR, wire.CLOSE_INVALID_DATA, wire.CLOSE_TOO_BIG)
        assert outcome.code in codes
    else:
        assert all(isinstance(e, Message | Ping | Pong | Close) for e in outcome)


@no_deadline
@given(st.lists(frames, max_size=6), st.integers(min_value=1, max_value=50))
def test_frame_like_input_in_chunks_gives_the_same_outcome_as_in_one_piece(
    chunks: list[bytes], step: int
) -> None:
    data = b"".join(chunks)

    def outcome(pieces: list[bytes]) -> tuple[list[wire.Event], int | None]:
        parser = FrameParser(256)
        events: list[wire.Event] = []
        try:
            for piece in pieces:
                events += parser.feed(piece)
        except WebSocketError as exc:
            return events, exc.code
        return events, None

    whole = outcome([data])
    chunked = outcome([data[i : i + step] for i in range(0, len(data), step)])
    assert chunked[1] == whole[1]
    if whole[1] is None:
        assert chunked[0] == whole[0]


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
