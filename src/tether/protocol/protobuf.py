"""Protobuf codec of the client protocol: the encoding the native mobile SDKs speak.

The schema is the protocol's published ``client.proto`` (``_pb/client.proto``; the code in
``_pb/client_pb2.py`` is generated from it by a pinned ``protoc``: ``make proto``). Messages
are mapped to and from the same typed structs as the JSON codec (:mod:`.messages`), so the
session and the hub never see which encoding a connection speaks.

Framing (protocol v2, Protobuf flavour): one WebSocket binary message holds one or more
messages, each preceded by its length as a base-128 varint. That holds in both directions:
a client frame is a batch of ``Command``; the server's messages are ``Reply`` (a push is a
``Reply`` with a ``push``). An empty message (length 0) is the ping, and the pong.

Validation is the JSON codec's (see :func:`tether.protocol.codec.check_command`), and
every rejection raises :class:`~tether.errors.ProtocolViolation` (disconnect 3501):

* a truncated or over-long varint, a length that runs past the end of the frame;
* bytes the Protobuf parser refuses (a truncated field, invalid UTF-8 in a ``string``),
  and a known field sent with another wire type (the parser would set it aside as unknown;
  Centrifugo's refuses it);
* more than ``max_commands`` messages in one frame;
* a command that holds no request but has an id, or more than one request, or no id
  (only ``send`` may omit it).

Unknown field numbers are skipped, as Protobuf's compatibility rule requires: a newer SDK
may send a field this schema does not have yet, and Centrifugo ignores it too. (The JSON
codec refuses unknown keys instead, because there an unknown key is a typo.)

In this encoding every ``bytes`` field (``data``, ``conn_info``, ``chan_info``) carries
the application's bytes as they are; they are held in the same :class:`msgspec.Raw` slots
the JSON codec fills with embedded JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from msgspec import Raw

from tether.errors import ProtocolViolation
from tether.protocol._pb import client_pb2 as pb
from tether.protocol.codec import DEFAULT_MAX_COMMANDS, Codec, check_command
from tether.protocol.messages import (
    REQUEST_FIELDS,
    ClientInfo,
    Command,
    ConnectRequest,
    FilterNode,
    HistoryRequest,
    PingRequest,
    PresenceRequest,
    PresenceStatsRequest,
    Publication,
    PublishRequest,
    Push,
    RefreshRequest,
    Reply,
    RPCRequest,
    SendRequest,
    StreamPosition,
    SubRefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)

_MAX_VARINT_BYTES: Final = 10
"""A uint64 takes at most 10 varint bytes; a longer run of continuation bits is garbage."""


_ONE_BYTE: Final = tuple(bytes((n,)) for n in range(0x80))


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint, least significant group first."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimit(message: bytes) -> bytes:
    """One message with its varint length in front: a unit of a Protobuf batch."""
    return varint(len(message)) + message


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it. Raises ProtocolViolation
    when the frame ends inside it or it runs past 10 bytes."""
    result = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if pos >= len(data):
            raise ProtocolViolation("truncated varint length")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise ProtocolViolation("varint length longer than 10 bytes")


def split_messages(frame: bytes, *, max_messages: int) -> list[bytes]:
    """The messages of one varint-length-delimited batch. Raises ProtocolViolation."""
    messages: list[bytes] = []
    pos = 0
    size = len(frame)
    while pos < size:
        length, pos = read_varint(frame, pos)
        end = pos + length
        if end > size:
            raise ProtocolViolation("message length runs past the end of the frame")
        if len(messages) == max_messages:
            raise ProtocolViolation(f"more than {max_messages} commands in one frame")
        messages.append(frame[pos:end])
        pos = end
    return messages


# ---------------------------------------------------------------------------------------
# Decoding: pb.Command -> messages.Command


def _raw(data: bytes) -> Raw:
    return Raw(data) if data else Raw()


def _filter(node: pb.FilterNode) -> FilterNode:
    return FilterNode(
        op=node.op,
        key=node.key,
        cmp=node.cmp,
        val=node.val,
        vals=list(node.vals),
        nodes=[_filter(child) for child in node.nodes],
    )


def _subscribe(r: pb.SubscribeRequest) -> SubscribeRequest:
    return SubscribeRequest(
        channel=r.channel,
        token=r.token,
        recover=r.recover,
        epoch=r.epoch,
        offset=r.offset,
        data=_raw(r.data),
        positioned=r.positioned,
        recoverable=r.recoverable,
        join_leave=r.join_leave,
        delta=r.delta,
        tf=_filter(r.tf) if r.HasField("tf") else None,
        flag=r.flag,
    )


def _connect(r: pb.ConnectRequest) -> ConnectRequest:
    return ConnectRequest(
        token=r.token,
        data=_raw(r.data),
        subs={channel: _subscribe(sub) for channel, sub in r.subs.items()},
        name=r.name,
        version=r.version,
        headers=dict(r.headers),
        flag=r.flag,
    )


def _history(r: pb.HistoryRequest) -> HistoryRequest:
    since = StreamPosition(r.since.offset, r.since.epoch) if r.HasField("since") else None
    return HistoryRequest(channel=r.channel, limit=r.limit, since=since, reverse=r.reverse)


def _request(name: str, command: pb.Command) -> object:
    match name:
        case "connect":
            return _connect(command.connect)
        case "subscribe":
            return _subscribe(command.subscribe)
        case "unsubscribe":
            return UnsubscribeRequest(channel=command.unsubscribe.channel)
        case "publish":
            return PublishRequest(channel=command.publish.channel, data=_raw(command.publish.data))
        case "presence":
            return PresenceRequest(channel=command.presence.channel)
        case "presence_stats":
            return PresenceStatsRequest(channel=command.presence_stats.channel)
        case "history":
            return _history(command.history)
        case "ping":
            return PingRequest()
        case "send":
            return SendRequest(data=_raw(command.send.data))
        case "rpc":
            return RPCRequest(data=_raw(command.rpc.data), method=command.rpc.method)
        case "refresh":
            return RefreshRequest(token=command.refresh.token)
        case "sub_refresh":
            return SubRefreshRequest(
                channel=command.sub_refresh.channel, token=command.sub_refresh.token
            )
    raise AssertionError(name)  # REQUEST_FIELDS and this match list the same names


def _check_wire_types(message: Message) -> None:
    """Refuse a known field sent with another wire type (the parser keeps it aside as an
    unknown field; Centrifugo's parser refuses it), in this message and every nested one.
    Unknown field numbers stay allowed."""
    known = message.DESCRIPTOR.fields_by_number
    unknowns = UnknownFieldSet(message)
    for i in range(len(unknowns)):
        unknown = unknowns[i]
        if unknown.field_number in known:
            name = known[unknown.field_number].name
            raise ProtocolViolation(f"malformed command: wrong wire type for field {name}")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for element in value.values():
                    _check_wire_types(element)
        elif field.is_repeated:
            for element in value:
                _check_wire_types(element)
        else:
            _check_wire_types(value)


def _command(message: bytes) -> Command | None:
    """One decoded command, or None for a pong. Raises ProtocolViolation."""
    parsed = pb.Command()
    try:
        parsed.ParseFromString(message)
    except DecodeError as exc:
        raise ProtocolViolation(f"malformed command: {exc}") from None
    _check_wire_types(parsed)
    command = Command(id=parsed.id)
    for name in REQUEST_FIELDS:
        if parsed.HasField(name):
            setattr(command, name, _request(name, parsed))
    return command if check_command(command) else None


# ---------------------------------------------------------------------------------------
# Encoding: messages.Reply -> pb.Reply
#
# The out structs (Reply, Push, every result) carry the proto's field names, so one walk
# fills a message from a struct: a nested struct fills the sub-message (marked present even
# when empty: ``publish: {}`` is the result), lists fill repeated fields, dicts fill maps.


def _fill(message: Any, value: msgspec.Struct) -> None:
    for name in value.__struct_fields__:
        item = getattr(value, name)
        if item is None:
            continue
        if isinstance(item, Raw):
            setattr(message, name, bytes(item))
        elif isinstance(item, msgspec.Struct):
            sub = getattr(message, name)
            sub.SetInParent()
            _fill(sub, item)
        elif isinstance(item, list):
            repeated = getattr(message, name)
            for element in item:
                _fill(repeated.add(), element)
        elif isinstance(item, Mapping):
            mapped = getattr(message, name)
            for key, element in item.items():
                if isinstance(element, msgspec.Struct):
                    _fill(mapped[key], element)
                else:
                    mapped[key] = element
        else:
            setattr(message, name, item)


def _encode(reply: Reply) -> bytes:
    message = pb.Reply()
    _fill(message, reply)
    return delimit(message.SerializeToString())


# The fan-out hot path, written out: a ``pub`` push straight to bytes. Measured, the generic
# walk above costs about 30 us per publication (upb attribute access dominates), JSON about
# 2 us; this costs a few. Each publication is encoded once per node, but with a few hundred
# subscribers that was a tenth of the per-delivery cost. tests/unit/test_protobuf_codec.py
# checks it against the generic encoding for any publication (hypothesis).


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def _client_info(info: ClientInfo) -> bytes:
    out = b""
    if info.user:
        out += _field(b"\x0a", _text(info.user))
    if info.client:
        out += _field(b"\x12", _text(info.client))
    if info.conn_info is not None and len(info.conn_info):
        out += _field(b"\x1a", bytes(info.conn_info))
    if info.chan_info is not None and len(info.chan_info):
        out += _field(b"\x22", bytes(info.chan_info))
    return out


def _publication(publication: Publication) -> bytes:
    out = b""
    data = bytes(publication.data)
    if data:
        out += _field(b"\x22", data)
    if publication.info is not None:
        out += _field(b"\x2a", _client_info(publication.info))
    if publication.offset:
        out += b"\x30" + varint(publication.offset)
    if publication.tags:
        for key, value in publication.tags.items():
            out += _field(b"\x3a", _field(b"\x0a", _text(key)) + _field(b"\x12", _text(value)))
    if publication.delta:
        out += b"\x40\x01"
    if publication.time:
        out += b"\x48" + varint(publication.time % (1 << 64))  # int64: two's complement
    return out


def _publication_push(channel: str, publication: Publication) -> bytes:
    push = _field(b"\x12", _text(channel)) if channel else b""
    push += _field(b"\x22", _publication(publication))
    return delimit(_field(b"\x22", push))


class ProtobufCodec:
    """The Protobuf encoding (binary WebSocket frames). Stateless: one instance serves
    every connection (:data:`PROTOBUF`)."""

    __slots__ = ()

    name: Final = "protobuf"
    binary: Final = True
    ping: Final = delimit(b"")
    """The heartbeat: an empty ``Reply`` (the client answers with an empty ``Command``)."""

    def decode_commands(
        self, frame: bytes, *, max_commands: int = DEFAULT_MAX_COMMANDS
    ) -> list[Command]:
        """Decode one client frame (a batch of varint-delimited ``Command``).

        Returns an empty list for a frame of pongs only. Raises ProtocolViolation (see the
        module docstring for every rule)."""
        commands: list[Command] = []
        for message in split_messages(frame, max_messages=max_commands):
            command = _command(message)
            if command is not None:
                commands.append(command)
        return commands

    def encode_reply(self, reply: Reply) -> bytes:
        return _encode(reply)

    def encode_push(self, push: Push) -> bytes:
        return _encode(Reply(push=push))

    def encode_publication_push(self, channel: str, publication: Publication) -> bytes:
        """A ``pub`` push: encoded once per publication, shared by all subscribers."""
        return _publication_push(channel, publication)

    def join(self, messages: Sequence[bytes]) -> bytes:
        """Several encoded messages as one WebSocket message (each is already delimited)."""
        return b"".join(messages)

    def delta_publication(self, publication: Publication, delta: bytes | None) -> Publication:
        if delta is None:
            return publication  # full data: the bytes as published
        return msgspec.structs.replace(publication, data=Raw(delta), delta=True)


schema = pb
"""The generated message classes of ``client.proto``, for clients of the protocol (the
bench's Protobuf driver): ``schema.Command``, ``schema.Reply``, ..."""

PROTOBUF: Final[Codec] = ProtobufCodec()
"""The Protobuf codec."""
