"""Codecs of the client protocol: bytes in, typed commands out; replies and pushes out as bytes.

A :class:`Codec` is one encoding of the protocol (JSON today; Protobuf plugs in beside it).
It is pure: no I/O, no framing. The transport picks one per connection at the handshake,
the session encodes every reply and push of that connection with it, and the hub encodes
a publication at most once per codec present on its channel.

:data:`JSON` is the JSON encoding: a client frame holds one or more commands separated by
``\\n`` (the JSON protocol's batch rule). Decoding validates types and rejects unknown
fields; any problem raises :class:`~tether.errors.ProtocolViolation`, which the session
answers with disconnect code 3501 (bad request), as the protocol prescribes for malformed
frames.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import msgspec

from tether.errors import ProtocolViolation
from tether.protocol.messages import REQUEST_FIELDS, Command, Publication, Push, Reply

DEFAULT_MAX_COMMANDS = 100


class Codec(Protocol):
    """One encoding of the client protocol (pure: no I/O, no framing).

    Every ``encode_*`` returns ONE complete protocol message, ready to be one WebSocket
    message (a length-delimited encoding returns it already delimited); the result is
    shared by every connection of this encoding, so it must not depend on the connection.
    """

    @property
    def name(self) -> str:
        """``"json"``, ``"protobuf"``: for logs and metrics."""

    @property
    def binary(self) -> bool:
        """True: messages go out as binary WebSocket frames; False: as text frames."""

    @property
    def ping(self) -> bytes:
        """The encoded empty command: the server's heartbeat (the client answers one)."""

    def decode_commands(
        self, frame: bytes, *, max_commands: int = DEFAULT_MAX_COMMANDS
    ) -> list[Command]:
        """Decode one client message into its commands; an empty list for pongs only.
        Raises :class:`ProtocolViolation` for anything the protocol does not allow
        (including more than ``max_commands`` commands)."""

    def encode_reply(self, reply: Reply) -> bytes:
        """A reply to a command (or, with no id, a push wrapped in a reply)."""

    def encode_push(self, push: Push) -> bytes:
        """A push (join, leave, unsubscribe, subscribe, ...)."""

    def encode_publication_push(self, channel: str, publication: Publication) -> bytes:
        """A ``pub`` push: the fan-out hot path, encoded once per publication."""

    def join(self, messages: Sequence[bytes]) -> bytes:
        """Several encoded messages (commands, replies or pushes) as one WebSocket
        message (JSON: separated by newlines)."""

    def delta_publication(self, publication: Publication, delta: bytes | None) -> Publication:
        """``publication`` as a subscriber that negotiated delta compression gets it in
        this encoding: ``delta`` (a fossil delta of its data, ``delta: true``) or, with
        None, the full data."""


class JsonCodec:
    """The JSON encoding (text frames, newline-separated batches)."""

    __slots__ = ("_decoder", "_encoder")

    name: Final = "json"
    binary: Final = False
    ping: Final = b"{}"
    """The heartbeat: the server sends an empty object, the client answers with one."""

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(Command)
        self._encoder = msgspec.json.Encoder()

    def decode_commands(
        self, frame: bytes, *, max_commands: int = DEFAULT_MAX_COMMANDS
    ) -> list[Command]:
        """Decode one client frame into its commands.

        Returns an empty list for a frame that holds only pongs (``{}``).
        Raises :class:`ProtocolViolation` for invalid JSON, a wrong type, an unknown field,
        more than ``max_commands`` commands, or a command that does not hold exactly one
        request (an empty command with an id is also rejected: only ``{}`` is a pong).
        """
        lines = frame.split(b"\n") if b"\n" in frame else [frame]
        if len(lines) > max_commands:
            raise ProtocolViolation(f"more than {max_commands} commands in one frame")
        commands: list[Command] = []
        decode = self._decoder.decode
        for line in lines:
            if not line.strip():
                continue
            try:
                command = decode(line)
            except msgspec.DecodeError as exc:
                raise ProtocolViolation(f"malformed command: {exc}") from None
            if check_command(command):
                commands.append(command)
        return commands

    def encode_reply(self, reply: Reply) -> bytes:
        return self._encoder.encode(reply)

    def encode_push(self, push: Push) -> bytes:
        return self._encoder.encode(Reply(push=push))

    def encode_publication_push(self, channel: str, publication: Publication) -> bytes:
        return self._encoder.encode(Reply(push=Push(channel=channel, pub=publication)))

    def join(self, messages: Sequence[bytes]) -> bytes:
        # An encoded JSON message never holds a raw newline (strings escape it).
        return b"\n".join(messages)

    def delta_publication(self, publication: Publication, delta: bytes | None) -> Publication:
        # In the JSON protocol a delta subscription's data is always a JSON string (the
        # delta, or the document's JSON text): the SDKs apply the delta to the text's
        # bytes, then parse it. Deltas of UTF-8 are UTF-8 (tether.protocol.fossil).
        text = (delta if delta is not None else bytes(publication.data)).decode(errors="replace")
        return msgspec.structs.replace(
            publication, data=msgspec.Raw(self._encoder.encode(text)), delta=delta is not None
        )


JSON: Final[Codec] = JsonCodec()
"""The JSON codec."""


_requests: Callable[[Command], tuple[object, ...]] = operator.attrgetter(*REQUEST_FIELDS)
"""A command's request fields, in :data:`REQUEST_FIELDS` order (one C call per command)."""


def check_command(command: Command) -> bool:
    """The rules every encoding shares for a decoded command: False for a pong (an empty
    command), True for a command to run. Raises :class:`ProtocolViolation` for an empty
    command with an id, more than one request, an id beyond uint32, or a missing id
    (only ``send`` may omit it)."""
    requests = _requests(command)
    present = len(requests) - requests.count(None)
    if present == 0:
        if command.id:
            raise ProtocolViolation("command has an id but no request")
        return False
    if present > 1:
        raise ProtocolViolation("command holds more than one request")
    if command.id < 0 or command.id > 0xFFFFFFFF:
        raise ProtocolViolation("command id out of range (uint32)")
    if command.id == 0 and command.send is None:
        raise ProtocolViolation("command without id (only send may omit it)")
    return True


def request_of(command: Command) -> tuple[str, object]:
    """The name and value of the one request a decoded command holds."""
    for name, value in zip(REQUEST_FIELDS, _requests(command), strict=True):
        if value is not None:
            return name, value
    raise ProtocolViolation("command holds no request")  # decode_commands prevents this
