"""The JSON codec: client frames in, typed commands out; replies and pushes out as bytes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import ProtocolViolation
from tether.protocol import codec
from tether.protocol.codec import JSON
from tether.protocol.messages import (
    REQUEST_FIELDS,
    ClientInfo,
    Command,
    ConnectRequest,
    Disconnect,
    EmptyResult,
    Error,
    Publication,
    PublishRequest,
    Push,
    Reply,
    SubscribeRequest,
    SubscribeResult,
)

# Inputs are bounded in size; a wall-clock deadline would only fail on a loaded machine.
no_deadline = settings(deadline=None)


def decode(frame: bytes, **kwargs: Any) -> list[Command]:
    return JSON.decode_commands(frame, **kwargs)


# -- decoding -----------------------------------------------------------------------------


def test_single_command_is_decoded_with_its_request() -> None:
    [command] = decode(b'{"id":1,"subscribe":{"channel":"chat:a","recover":true,"offset":5}}')
    assert command.id == 1
    assert codec.request_of(command) == (
        "subscribe",
        SubscribeRequest(channel="chat:a", recover=True, offset=5),
    )


def test_commands_separated_by_newlines_are_decoded_in_order() -> None:
    frame = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"a"}}\n{"id":3,"ping":{}}'
    commands = decode(frame)
    assert [c.id for c in commands] == [1, 2, 3]
    assert [codec.request_of(c)[0] for c in commands] == ["connect", "subscribe", "ping"]


def test_trailing_newline_and_blank_lines_are_ignored() -> None:
    commands = decode(b'{"id":1,"connect":{}}\n\n{"id":2,"ping":{}}\n')
    assert [c.id for c in commands] == [1, 2]


def test_pong_frame_decodes_to_no_commands() -> None:
    assert decode(b"{}") == []


def test_pongs_inside_a_batch_are_skipped() -> None:
    [command] = decode(b'{}\n{"id":7,"ping":{}}\n{}')
    assert command.id == 7


def test_data_is_kept_as_raw_json() -> None:
    [command] = decode(b'{"id":1,"publish":{"channel":"a","data":{"text":"hi","n":[1,2]}}}')
    request = command.publish
    assert isinstance(request, PublishRequest)
    assert msgspec.json.decode(request.data) == {"text": "hi", "n": [1, 2]}


def test_request_without_data_has_empty_raw() -> None:
    [command] = decode(b'{"id":1,"connect":{}}')
    assert isinstance(command.connect, ConnectRequest)
    assert len(command.connect.data) == 0


def test_send_may_omit_the_id() -> None:
    [command] = decode(b'{"send":{"data":{"x":1}}}')
    assert command.id == 0
    assert codec.request_of(command)[0] == "send"


def test_command_without_id_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="without id"):
        decode(b'{"subscribe":{"channel":"a"}}')


def test_command_with_id_but_no_request_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="no request"):
        decode(b'{"id":5}')


def test_command_with_two_requests_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="more than one request"):
        decode(b'{"id":1,"subscribe":{"channel":"a"},"publish":{"channel":"a","data":1}}')


@pytest.mark.parametrize("request_field", REQUEST_FIELDS)
def test_every_request_field_alone_is_accepted(request_field: str) -> None:
    [command] = decode(b'{"id":1,"%s":{}}' % request_field.encode())
    assert codec.request_of(command)[0] == request_field


@pytest.mark.parametrize(
    "frame",
    [
        b'{"id":1,"connect":{},"bogus":true}',
        b'{"id":1,"connect":{"tokne":"x"}}',
        b'{"id":1,"subscribe":{"channel":"a","since":{"offset":1}}}',
        b'{"id":1,"history":{"channel":"a","since":{"offset":1,"epoch":"e","x":0}}}',
    ],
    ids=["top-level", "in-request", "misplaced-field", "nested"],
)
def test_unknown_field_is_rejected(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="malformed"):
        decode(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"id":"1","connect":{}}',
        b'{"id":1.5,"connect":{}}',
        b'{"id":1,"subscribe":{"channel":5}}',
        b'{"id":1,"subscribe":{"channel":"a","recover":"yes"}}',
        b'{"id":1,"connect":[]}',
        b"[]",
        b'"text"',
        b"null",
    ],
)
def test_wrong_type_is_rejected(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode(frame)


@pytest.mark.parametrize(
    "frame",
    [b"{", b"not json", b'{"id":1,"connect":{}', b"\xff\xfe", b'{"id":1,"connect":{}} x'],
)
def test_malformed_json_is_rejected(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="malformed"):
        decode(frame)


def test_one_bad_command_rejects_the_whole_frame() -> None:
    with pytest.raises(ProtocolViolation):
        decode(b'{"id":1,"connect":{}}\n{oops}')


@pytest.mark.parametrize("command_id", [-1, 0x1_0000_0000])
def test_id_outside_uint32_is_rejected(command_id: int) -> None:
    with pytest.raises(ProtocolViolation, match="out of range"):
        decode(b'{"id":%d,"ping":{}}' % command_id)


def test_largest_uint32_id_is_accepted() -> None:
    [command] = decode(b'{"id":4294967295,"ping":{}}')
    assert command.id == 0xFFFFFFFF


def test_frame_with_max_commands_is_accepted() -> None:
    frame = b"\n".join(b'{"id":%d,"ping":{}}' % i for i in range(1, 11))
    assert len(decode(frame, max_commands=10)) == 10


def test_frame_with_more_than_max_commands_is_rejected() -> None:
    frame = b"\n".join(b'{"id":%d,"ping":{}}' % i for i in range(1, 12))
    with pytest.raises(ProtocolViolation, match="more than 10 commands"):
        decode(frame, max_commands=10)


# -- encoding -----------------------------------------------------------------------------


def test_reply_with_result_is_encoded_without_defaults() -> None:
    reply = Reply(id=3, subscribe=SubscribeResult(recoverable=True, epoch="e1", offset=7))
    assert msgspec.json.decode(JSON.encode_reply(reply)) == {
        "id": 3,
        "subscribe": {"recoverable": True, "epoch": "e1", "offset": 7},
    }


def test_empty_result_is_encoded_as_an_empty_object() -> None:
    assert msgspec.json.decode(JSON.encode_reply(Reply(id=2, publish=EmptyResult()))) == {
        "id": 2,
        "publish": {},
    }


def test_error_reply_carries_code_message_and_temporary() -> None:
    reply = Reply(id=4, error=Error(code=100, message="internal server error", temporary=True))
    assert msgspec.json.decode(JSON.encode_reply(reply)) == {
        "id": 4,
        "error": {"code": 100, "message": "internal server error", "temporary": True},
    }


def test_publication_push_has_no_id_and_embeds_data_verbatim() -> None:
    pub = Publication(
        data=msgspec.Raw(b'{"text":"hi"}'), info=ClientInfo(user="u", client="c"), offset=9
    )
    encoded = JSON.encode_publication_push("chat:a", pub)
    assert b'"data":{"text":"hi"}' in encoded
    assert msgspec.json.decode(encoded) == {
        "push": {
            "channel": "chat:a",
            "pub": {"data": {"text": "hi"}, "info": {"user": "u", "client": "c"}, "offset": 9},
        }
    }


def test_publication_push_equals_the_generic_push_encoding() -> None:
    pub = Publication(data=msgspec.Raw(b"[1,2]"), offset=1)
    assert JSON.encode_publication_push("a", pub) == JSON.encode_push(Push(channel="a", pub=pub))


def test_disconnect_push_is_encoded() -> None:
    push = Push(disconnect=Disconnect(code=3001, reason="shutdown"))
    assert msgspec.json.decode(JSON.encode_push(push)) == {
        "push": {"disconnect": {"code": 3001, "reason": "shutdown"}}
    }


def test_encoded_messages_hold_no_newline() -> None:
    # Frames may batch messages with "\n"; an encoded message must never contain one.
    pub = Publication(data=msgspec.Raw(b'{"text": "a\\nb"}'), offset=1)
    assert b"\n" not in JSON.encode_publication_push("a\nb", pub)


def test_ping_is_an_empty_object() -> None:
    assert JSON.ping == b"{}"


# -- properties ---------------------------------------------------------------------------


def _outcome(frame: bytes) -> list[Command] | None:
    """Decode ``frame``; None for a ProtocolViolation. Anything else propagates."""
    try:
        return decode(frame)
    except ProtocolViolation:
        return None


@no_deadline
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_to_commands_or_a_protocol_violation(frame: bytes) -> None:
    commands = _outcome(frame)
    assert commands is None or all(isinstance(c, Command) for c in commands)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [*REQUEST_FIELDS, "id", "channel", "data", "offset", "epoch", "recover", "since", "bogus"]
)
command_like = st.dictionaries(
    field_names,
    json_values | st.dictionaries(field_names, json_values, max_size=4),
    max_size=4,
)


@no_deadline
@given(st.lists(command_like | json_values, min_size=1, max_size=4))
def test_json_shaped_input_decodes_to_commands_or_a_protocol_violation(
    values: list[Any],
) -> None:
    frame = b"\n".join(msgspec.json.encode(v) for v in values)
    commands = _outcome(frame)
    if commands is not None:
        for command in commands:
            name, _ = codec.request_of(command)
            assert name in REQUEST_FIELDS
            assert 0 <= command.id <= 0xFFFFFFFF
            assert command.id > 0 or name == "send"


@no_deadline
@given(st.lists(st.integers(min_value=1, max_value=0xFFFFFFFF), min_size=1, max_size=20))
def test_valid_batches_round_trip_every_id_in_order(ids: list[int]) -> None:
    frame = b"\n".join(b'{"id":%d,"ping":{}}' % i for i in ids)
    assert [c.id for c in decode(frame)] == ids
