"""The Protobuf codec: varint-delimited client frames in, typed commands out; replies out.

Client frames are built with the centrifuge-python SDK's own generated code (its
``centrifuge.protocol.client_pb2``, from the upstream schema and package name), and the
replies we encode are read back with it: the bytes are what a real SDK sends and reads.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import msgspec
import pytest
from centrifuge.protocol import client_pb2 as sdk
from google.protobuf.json_format import MessageToDict, ParseDict
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import ProtocolViolation
from tether.protocol import codec as json_codec
from tether.protocol.codec import JSON
from tether.protocol.messages import (
    REQUEST_FIELDS,
    ClientInfo,
    Command,
    ConnectResult,
    Disconnect,
    EmptyResult,
    Error,
    HistoryResult,
    Join,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    Push,
    Reply,
    StreamPosition,
    SubscribeRequest,
    SubscribeResult,
    Unsubscribe,
)
from tether.protocol.protobuf import PROTOBUF, delimit, varint

no_deadline = settings(deadline=None)


def command(fields: dict[str, Any]) -> bytes:
    """One SDK-encoded command, delimited as in a frame."""
    return delimit(ParseDict(fields, sdk.Command()).SerializeToString())


def decode(frame: bytes, **kwargs: Any) -> list[Command]:
    return PROTOBUF.decode_commands(frame, **kwargs)


def read_replies(data: bytes) -> list[dict[str, Any]]:
    """What the SDK reads from one of our messages (its own varint walk, its own parser)."""
    out = []
    pos = 0
    while pos < len(data):
        length, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        reply = sdk.Reply()
        reply.ParseFromString(data[pos : pos + length])
        pos += length
        out.append(MessageToDict(reply, preserving_proto_field_name=True))
    return out


def test_codec_declares_a_binary_encoding_named_protobuf() -> None:
    assert PROTOBUF.name == "protobuf"
    assert PROTOBUF.binary is True


# -- decoding -----------------------------------------------------------------------------


def test_sdk_subscribe_command_is_decoded_with_its_request() -> None:
    frame = command(
        {"id": 7, "subscribe": {"channel": "chat:a", "recover": True, "offset": 5, "epoch": "e"}}
    )
    [decoded] = decode(frame)
    assert decoded.id == 7
    assert json_codec.request_of(decoded) == (
        "subscribe",
        SubscribeRequest(channel="chat:a", recover=True, offset=5, epoch="e"),
    )


def test_batch_of_commands_is_decoded_in_order() -> None:
    frame = (
        command({"id": 1, "connect": {"token": "t", "name": "swift"}})
        + command({"id": 2, "subscribe": {"channel": "a"}})
        + command({"id": 3, "ping": {}})
    )
    commands = decode(frame)
    assert [c.id for c in commands] == [1, 2, 3]
    assert [json_codec.request_of(c)[0] for c in commands] == ["connect", "subscribe", "ping"]
    assert commands[0].connect is not None
    assert commands[0].connect.token == "t"
    assert commands[0].connect.name == "swift"


def test_empty_message_is_a_pong() -> None:
    assert decode(b"\x00") == []
    assert decode(b"\x00" + command({"id": 1, "ping": {}}) + b"\x00")[0].id == 1


def test_ping_is_an_empty_reply() -> None:
    assert PROTOBUF.ping == b"\x00"
    assert read_replies(PROTOBUF.ping) == [{}]


def test_data_bytes_are_kept_as_they_are() -> None:
    payload = bytes(range(256))  # not JSON: Protobuf clients may publish any bytes
    [decoded] = decode(command({"id": 1, "publish": {"channel": "a", "data": _b64(payload)}}))
    assert decoded.publish is not None
    assert bytes(decoded.publish.data) == payload


def test_request_without_data_has_empty_raw() -> None:
    [decoded] = decode(command({"id": 1, "publish": {"channel": "a"}}))
    assert decoded.publish is not None
    assert len(decoded.publish.data) == 0


def test_connect_with_subs_headers_and_flag_is_decoded() -> None:
    frame = command(
        {
            "id": 1,
            "connect": {
                "subs": {"a": {"recover": True, "offset": 3, "epoch": "x"}},
                "headers": {"k": "v"},
                "flag": 1,
            },
        }
    )
    [decoded] = decode(frame)
    assert decoded.connect is not None
    assert decoded.connect.subs["a"] == SubscribeRequest(recover=True, offset=3, epoch="x")
    assert decoded.connect.headers == {"k": "v"}
    assert decoded.connect.flag == 1


def test_history_since_is_decoded_and_absent_since_is_none() -> None:
    [with_since] = decode(
        command(
            {"id": 1, "history": {"channel": "a", "limit": -1, "since": {"offset": 4}}},
        )
    )
    assert with_since.history is not None
    assert with_since.history.since == StreamPosition(offset=4, epoch="")
    assert with_since.history.limit == -1
    [without] = decode(command({"id": 2, "history": {"channel": "a"}}))
    assert without.history is not None
    assert without.history.since is None


def test_tags_filter_is_decoded_recursively() -> None:
    tf = {"op": "and", "nodes": [{"key": "k", "cmp": "in", "vals": ["1", "2"]}]}
    [decoded] = decode(command({"id": 1, "subscribe": {"channel": "a", "tf": tf}}))
    assert decoded.subscribe is not None
    assert decoded.subscribe.tf is not None
    assert decoded.subscribe.tf.op == "and"
    assert decoded.subscribe.tf.nodes[0].vals == ["1", "2"]


@pytest.mark.parametrize("request_field", REQUEST_FIELDS)
def test_every_request_field_alone_is_accepted(request_field: str) -> None:
    [decoded] = decode(command({"id": 9, request_field: {}}))
    assert json_codec.request_of(decoded)[0] == request_field


def test_send_may_omit_the_id() -> None:
    [decoded] = decode(command({"send": {"data": _b64(b"hi")}}))
    assert decoded.id == 0


def test_command_without_id_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="without id"):
        decode(command({"subscribe": {"channel": "a"}}))


def test_command_with_id_but_no_request_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="no request"):
        decode(command({"id": 1}))


def test_command_with_two_requests_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="more than one request"):
        decode(command({"id": 1, "ping": {}, "presence": {"channel": "a"}}))


def test_one_bad_command_rejects_the_whole_frame() -> None:
    with pytest.raises(ProtocolViolation):
        decode(command({"id": 1, "ping": {}}) + command({"id": 2}))


def test_frame_with_max_commands_is_accepted() -> None:
    frame = b"".join(command({"id": i + 1, "ping": {}}) for i in range(5))
    assert len(decode(frame, max_commands=5)) == 5


def test_frame_with_more_than_max_commands_is_rejected() -> None:
    frame = b"".join(command({"id": i + 1, "ping": {}}) for i in range(6))
    with pytest.raises(ProtocolViolation, match="more than 5 commands"):
        decode(frame, max_commands=5)


def test_largest_uint32_id_is_accepted() -> None:
    assert decode(command({"id": 0xFFFFFFFF, "ping": {}}))[0].id == 0xFFFFFFFF


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [b"\x80", b"\x08\x01", b"\xff\xff", command({"id": 1, "ping": {}})[:1] + b"\x80"],
    ids=["continuation-only", "length-past-end", "two-continuations", "after-a-length"],
)
def test_truncated_varint_or_message_is_rejected(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode(frame)


def test_varint_longer_than_ten_bytes_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="longer than 10 bytes"):
        decode(b"\xff" * 11 + b"\x01")


def test_length_past_the_end_of_the_frame_is_rejected() -> None:
    body = ParseDict({"id": 1, "ping": {}}, sdk.Command()).SerializeToString()
    with pytest.raises(ProtocolViolation, match="past the end"):
        decode(varint(len(body) + 1) + body)


@pytest.mark.parametrize("length", [65537, 2**32, 2**63, 2**64 - 1])
def test_length_past_max_message_size_is_rejected_without_allocating(length: int) -> None:
    # The WebSocket layer caps a frame at max_message_size, so any larger length runs
    # past the frame: refused before anything is read or allocated.
    with pytest.raises(ProtocolViolation, match="past the end"):
        decode(varint(length) + b"\x08\x01")


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x01x",  # id (varint) sent as bytes
        b"\x08\x01\x20\x01",  # connect (message) sent as a varint
        b"\x08\x01\x2a\x02\x08\x05",  # subscribe.channel (string) sent as a varint
        b"\x08\x01\x52\x05\x3d\x00\x00\x00\x00",  # history.limit (int32) as fixed32
    ],
    ids=["id", "connect", "subscribe.channel", "history.limit"],
)
def test_known_field_with_another_wire_type_is_rejected(body: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="malformed command"):
        decode(delimit(body))


def test_unknown_field_numbers_are_ignored() -> None:
    # Field 111 (varint) at the top and field 99 (bytes) inside subscribe: a newer SDK's.
    subscribe = ParseDict({"channel": "a"}, sdk.SubscribeRequest()).SerializeToString()
    subscribe += b"\x9a\x06\x02hi"
    body = b"\x08\x01" + b"\x2a" + varint(len(subscribe)) + subscribe + b"\xf8\x06\x01"
    [decoded] = decode(delimit(body))
    assert decoded.subscribe == SubscribeRequest(channel="a")


def test_invalid_utf8_in_a_string_is_rejected() -> None:
    body = b"\x08\x01\x2a\x03\x0a\x01\xff"  # subscribe.channel = b"\xff"
    with pytest.raises(ProtocolViolation, match="malformed command"):
        decode(delimit(body))


def test_corrupt_nested_message_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="malformed command"):
        decode(delimit(b"\x22\x02\x0a\x80"))


@no_deadline
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_to_commands_or_a_protocol_violation(frame: bytes) -> None:
    try:
        commands = decode(frame)
    except ProtocolViolation:
        return
    for decoded in commands:
        json_codec.request_of(decoded)  # exactly one request, and an id unless a send


@no_deadline
@given(
    st.lists(
        st.sampled_from([command({"id": 1, "ping": {}}), command({"id": 2, "ping": {}})]),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=0),
    st.binary(min_size=1, max_size=3),
)
def test_damaged_valid_batches_never_crash(parts: list[bytes], cut: int, junk: bytes) -> None:
    frame = b"".join(parts)
    damaged = frame[: cut % len(frame)] + junk
    with contextlib.suppress(ProtocolViolation):
        decode(damaged)


@no_deadline
@given(st.lists(st.integers(min_value=1, max_value=0xFFFFFFFF), min_size=1, max_size=20))
def test_valid_batches_round_trip_every_id_in_order(ids: list[int]) -> None:
    frame = b"".join(command({"id": i, "ping": {}}) for i in ids)
    assert [c.id for c in decode(frame, max_commands=20)] == ids


# -- encoding -----------------------------------------------------------------------------


def test_empty_result_is_encoded_as_a_present_empty_message() -> None:
    assert read_replies(PROTOBUF.encode_reply(Reply(id=4, publish=EmptyResult()))) == [
        {"id": 4, "publish": {}}
    ]


def test_error_reply_carries_code_message_and_temporary() -> None:
    reply = Reply(id=2, error=Error(code=111, message="too many requests", temporary=True))
    assert read_replies(PROTOBUF.encode_reply(reply)) == [
        {"id": 2, "error": {"code": 111, "message": "too many requests", "temporary": True}}
    ]


def test_connect_result_is_read_by_the_sdk() -> None:
    result = ConnectResult(
        client="c1",
        version="0.1.0",
        ping=25,
        pong=True,
        node="n",
        subs={"s": SubscribeResult(recoverable=True, epoch="e", offset=3)},
    )
    [read] = read_replies(PROTOBUF.encode_reply(Reply(id=1, connect=result)))
    assert read["connect"]["client"] == "c1"
    assert read["connect"]["ping"] == 25
    assert read["connect"]["pong"] is True
    assert read["connect"]["subs"]["s"] == {"recoverable": True, "epoch": "e", "offset": "3"}


def test_publication_push_carries_raw_data_info_offset_and_tags() -> None:
    info = ClientInfo(user="u", client="c", conn_info=msgspec.Raw(b'{"n":1}'))
    publication = Publication(
        data=msgspec.Raw(b'{"text":"hi"}'), info=info, offset=9, tags={"k": "v"}
    )
    raw = PROTOBUF.encode_publication_push("chat:a", publication)
    reply = sdk.Reply()
    reply.ParseFromString(raw[1:])
    assert reply.id == 0
    assert reply.push.channel == "chat:a"
    assert reply.push.pub.data == b'{"text":"hi"}'
    assert reply.push.pub.offset == 9
    assert reply.push.pub.info.user == "u"
    assert reply.push.pub.info.conn_info == b'{"n":1}'
    assert dict(reply.push.pub.tags) == {"k": "v"}


texts = st.text(max_size=20)
raw_bytes = st.binary(max_size=40).map(msgspec.Raw)
client_infos = st.builds(
    ClientInfo,
    user=texts,
    client=texts,
    conn_info=st.none() | raw_bytes,
    chan_info=st.none() | raw_bytes,
)
publications = st.builds(
    Publication,
    data=raw_bytes,
    info=st.none() | client_infos,
    offset=st.integers(min_value=0, max_value=2**64 - 1),
    tags=st.none() | st.dictionaries(texts, texts, max_size=3),
    delta=st.booleans(),
    time=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@no_deadline
@given(texts, publications)
def test_the_hand_written_publication_push_reads_as_the_generic_encoding(
    channel: str, publication: Publication
) -> None:
    # encode_publication_push is written out for speed; encode_push walks the structs
    # through the generated code. The SDK must read the same message from both.
    fast, generic = sdk.Reply(), sdk.Reply()
    fast.ParseFromString(_body(PROTOBUF.encode_publication_push(channel, publication)))
    generic.ParseFromString(_body(PROTOBUF.encode_push(Push(channel=channel, pub=publication))))
    assert fast == generic


def _body(message: bytes) -> bytes:
    """One delimited message without its varint length."""
    return message[next(i for i, byte in enumerate(message) if not byte & 0x80) + 1 :]


def test_publication_push_equals_the_generic_push_encoding() -> None:
    publication = Publication(data=msgspec.Raw(b"1"), offset=2)
    assert PROTOBUF.encode_publication_push("a", publication) == PROTOBUF.encode_push(
        Push(channel="a", pub=publication)
    )


@pytest.mark.parametrize(
    "reply",
    [
        Reply(id=1, presence=PresenceResult(presence={})),
        Reply(id=1, presence=PresenceResult(presence={"c": ClientInfo(user="u", client="c")})),
        Reply(id=1, presence_stats=PresenceStatsResult(num_clients=2, num_users=1)),
        Reply(
            id=1,
            history=HistoryResult(
                publications=[Publication(data=msgspec.Raw(b'{"a":1}'), offset=1)],
                epoch="e",
                offset=1,
            ),
        ),
        Reply(push=Push(channel="a", join=Join(info=ClientInfo(user="u", client="c")))),
        Reply(push=Push(channel="a", unsubscribe=Unsubscribe(code=2500, reason="x"))),
        Reply(push=Push(disconnect=Disconnect(code=3001, reason="shutdown"))),
    ],
    ids=["presence-empty", "presence", "stats", "history", "join", "unsubscribe", "disconnect"],
)
def test_every_result_and_push_reads_back_as_the_json_codec_writes_it(reply: Reply) -> None:
    [from_protobuf] = read_replies(PROTOBUF.encode_reply(reply))
    from_json = msgspec.json.decode(JSON.encode_reply(reply))
    assert _normalise(from_protobuf, embedded_b64=True) == _normalise(from_json)


def test_join_concatenates_delimited_messages() -> None:
    one = PROTOBUF.encode_reply(Reply(id=1, publish=EmptyResult()))
    two = PROTOBUF.encode_reply(Reply(id=2, publish=EmptyResult()))
    assert [r["id"] for r in read_replies(PROTOBUF.join([one, two]))] == [1, 2]


def test_long_message_gets_a_multi_byte_length() -> None:
    data = msgspec.Raw(b'"' + b"x" * 300 + b'"')
    raw = PROTOBUF.encode_publication_push("a", Publication(data=data))
    assert raw[0] & 0x80  # 300+ bytes need two varint bytes
    assert len(read_replies(raw)) == 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


EMBEDDED = ("data", "conn_info", "chan_info")


def _normalise(value: Any, *, embedded_b64: bool = False) -> Any:
    """Protobuf's JSON mapping writes uint64 as strings and bytes as base64; JSON embeds
    raw JSON. Compare them as numbers and decoded values; drop zero values (proto3 never
    writes them)."""
    if isinstance(value, dict):
        items = {
            k: (
                msgspec.json.decode(base64.b64decode(v))
                if embedded_b64 and k in EMBEDDED
                else _normalise(v, embedded_b64=embedded_b64)
            )
            for k, v in value.items()
        }
        return {k: v for k, v in items.items() if v not in ({}, [], "", 0, False)}
    if isinstance(value, list):
        return [_normalise(v, embedded_b64=embedded_b64) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value
