"""JSON codec of the client protocol: bytes in, typed commands out; replies out as bytes.

A client frame holds one or more commands separated by ``\\n`` (the JSON protocol's batch
rule). Decoding validates types and rejects unknown fields; any problem raises
:class:`~tether.errors.ProtocolViolation`, which the session answers with disconnect code
3501 (bad request), as the protocol prescribes for malformed frames.

Encoding is done once per message: a publication's push is encoded once and the same bytes
go to every subscriber (see :func:`encode_publication_push`).
"""

from __future__ import annotations

import msgspec

from tether.errors import ProtocolViolation
from tether.protocol.messages import REQUEST_FIELDS, Command, Publication, Push, Reply

PING = b"{}"
"""The heartbeat: the server sends an empty object, the client answers with one."""

_decoder = msgspec.json.Decoder(Command)
_encoder = msgspec.json.Encoder()


def decode_commands(frame: bytes, *, max_commands: int = 100) -> list[Command]:
    """Decode one client frame into its commands.

    Returns an empty list for a frame that holds only pongs (``{}``).
    Raises :class:`ProtocolViolation` for invalid JSON, a wrong type, an unknown field, more
    than ``max_commands`` commands, or a command that does not hold exactly one request
    (an empty command with an id is also rejected: only ``{}`` is a pong).
    """
    lines = frame.split(b"\n") if b"\n" in frame else [frame]
    if len(lines) > max_commands:
        raise ProtocolViolation(f"more than {max_commands} commands in one frame")
    commands: list[Command] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            command = _decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise ProtocolViolation(f"malformed command: {exc}") from None
        present = sum(1 for name in REQUEST_FIELDS if getattr(command, name) is not None)
        if present == 0:
            if command.id:
                raise ProtocolViolation("command has an id but no request")
            continue  # a pong
        if present > 1:
            raise ProtocolViolation("command holds more than one request")
        if command.id < 0 or command.id > 0xFFFFFFFF:
            raise ProtocolViolation("command id out of range (uint32)")
        if command.id == 0 and command.send is None:
            raise ProtocolViolation("command without id (only send may omit it)")
        commands.append(command)
    return commands


def request_of(command: Command) -> tuple[str, object]:
    """The name and value of the one request a decoded command holds."""
    for name in REQUEST_FIELDS:
        value = getattr(command, name)
        if value is not None:
            return name, value
    raise ProtocolViolation("command holds no request")  # decode_commands prevents this


def encode_reply(reply: Reply) -> bytes:
    return _encoder.encode(reply)


def encode_push(push: Push) -> bytes:
    return _encoder.encode(Reply(push=push))


def encode_publication_push(channel: str, publication: Publication) -> bytes:
    """The bytes of a ``pub`` push: encoded once per publication, shared by all subscribers."""
    return _encoder.encode(Reply(push=Push(channel=channel, pub=publication)))


def encode(value: object) -> bytes:
    """Encode any protocol struct (used by the HTTP API for its results)."""
    return _encoder.encode(value)
