"""RFC 6455, sans-I/O: Tether's one WebSocket codec, both sides. Bytes in, events out.

* :class:`ServerConnection`: one server-side connection as a state machine (see its
  table): the upgrade handshake, client frames in as events, the automatic pong, the close
  echo, and when the pump must close the socket. The asyncio listener
  (:mod:`.server`) only moves bytes between it, the socket and the session.
* Frames out: :func:`text_frame` / :func:`binary_frame` (server frames are never masked,
  so the bytes are the same for every client: the hub builds them once per publication),
  :func:`client_frame` (masked, any bits a test wants).
* Frames in on the client side: :class:`ServerFrameReader` cuts a server's byte stream
  into :class:`Frame` records; :func:`frame_head` is the one header parser every reader
  here uses (the bench's counting client too).

Hand-written (not a library) because the fan-out path needs two things no measured Python
library gives together: frames built once and shared by every connection, and an idle
connection costing about 2 KiB (websockets, aiohttp and picows need 12-28 KiB; see
``docs/benchmarks.md``). This module knows no sockets and no asyncio.

Client frames must be masked (RFC 6455 5.1); a violation closes with 1002, an invalid UTF-8
text message with 1007, a message over the size limit with 1009.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final

# Raised here, defined with every other error; re-exported for the callers of this module.
from tether.errors import HandshakeError as HandshakeError
from tether.errors import WebSocketError as WebSocketError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_BYTES = 8192

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    path: str
    query: str
    """The request target after ``?`` (undecoded; empty without one)."""
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ", "."""

    @property
    def key(self) -> str:
        return self.headers["sec-websocket-key"]


def _lists(value: str, token: str) -> bool:
    """The comma-separated header ``value`` lists ``token`` (lower case), in any case."""
    value = value.lower()
    if value == token:  # what nearly every client sends: no list to split
        return True
    return token in (t.strip() for t in value.split(","))


def parse_upgrade(head: bytes) -> UpgradeRequest:
    """Validate an HTTP/1.1 upgrade request (``head`` without the blank line).

    Raises :class:`HandshakeError` with the HTTP status to answer.
    """
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HandshakeError(400, "malformed request line") from None
    if version != "HTTP/1.1":
        raise HandshakeError(400, "HTTP/1.1 required")
    if method != "GET":
        raise HandshakeError(405, "GET required")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(400, "malformed header line")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if not _lists(headers.get("upgrade", ""), "websocket") or not _lists(
        headers.get("connection", ""), "upgrade"
    ):
        raise HandshakeError(426, "WebSocket upgrade required")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(426, "Sec-WebSocket-Version 13 required")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key") from None
    path, _, query = target.partition("?")
    return UpgradeRequest(path=path, query=query, headers=headers)


def accept_response(key: str, subprotocol: str | None = None) -> bytes:
    """The 101 answer; ``subprotocol``: the ``Sec-WebSocket-Protocol`` chosen, if any."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    chosen = b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n" if subprotocol else b""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + chosen + b"\r\n"
    )


def upgrade_request(
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    method: str = "GET",
    version: str = "HTTP/1.1",
    headers: dict[str, str | None] | None = None,
) -> bytes:
    """A client's upgrade request (a fresh random key). ``headers`` add to or replace the
    standard ones; a None value removes that header."""
    standard: dict[str, str | None] = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    standard.update(headers or {})
    lines = [f"{method} {path} {version}"]
    lines += [f"{name}: {value}" for name, value in standard.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_status(head: bytes) -> int:
    """The status of an HTTP response head. Raises ValueError for anything else."""
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {head[:80]!r}")
    return int(parts[1])


def reject_response(status: int, reason: str, retry_after: int | None = None) -> bytes:
    body = reason.encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n{retry}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


# -- frames ---------------------------------------------------------------------------


def _header(b0: int, length: int, mask_bit: int = 0) -> bytes:
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 65536:
        return struct.pack("!BBH", b0, mask_bit | 126, length)
    return struct.pack("!BBQ", b0, mask_bit | 127, length)


_SMALL_TEXT_HEADERS = [bytes((0x80 | OP_TEXT, n)) for n in range(126)]
_SMALL_BINARY_HEADERS = [bytes((0x80 | OP_BINARY, n)) for n in range(126)]


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame: the same bytes for every client."""
    n = len(payload)
    if n < 126:
        return _SMALL_TEXT_HEADERS[n] + payload
    return _header(0x80 | OP_TEXT, n) + payload


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, final binary frame: the same bytes for every client."""
    n = len(payload)
    if n < 126:
        return _SMALL_BINARY_HEADERS[n] + payload
    return _header(0x80 | OP_BINARY, n) + payload


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked control frame (server side)."""
    return _header(0x80 | opcode, len(payload)) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload; the reason is cut to fit the 125-byte control frame."""
    return struct.pack("!H", code) + reason.encode()[:123]


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame (server side)."""
    return control_frame(OP_CLOSE, close_payload(code, reason))


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
) -> bytes:
    """One client frame (RFC 6455 5.2). ``rsv`` is the 3 reserved bits (0-7);
    ``masked=False`` leaves out the mask a client must send; ``mask`` fixes the 4-byte key
    (default: random; an all-zero key leaves the payload as it is, so such a frame can be
    built once and sent many times)."""
    b0 = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    if not masked:
        return _header(b0, len(payload)) + payload
    key = mask if mask is not None else os.urandom(4)
    return _header(b0, len(payload), 0x80) + key + apply_mask(payload, key)


def apply_mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (masks and unmasks: RFC 6455 5.3)."""
    n = len(data)
    if n == 0 or key == b"\0\0\0\0":
        return data
    repeated = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ repeated).to_bytes(n, "little")


def frame_head(buf: bytes, pos: int) -> tuple[int, int, int, int] | None:
    """The header of the frame that starts at ``buf[pos]``: ``(first byte, second byte,
    header length with the mask key, payload length)``; None while the header is not all
    in ``buf``. The payload is ``buf[pos + header : pos + header + length]`` once that
    many bytes are there (still masked if the second byte has the mask bit 0x80)."""
    end = len(buf)
    if end - pos < 2:
        return None
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    head = 2
    if length == 126:
        if end - pos < 4:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        head = 4
    elif length == 127:
        if end - pos < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        head = 10
    if b1 & 0x80:
        head += 4
    return buf[pos], b1, head, length


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it came (the client side's view of a server's frames)."""

    opcode: int
    fin: bool
    payload: bytes
    """Unmasked (a server must not mask; if one did, the payload is unmasked here)."""
    rsv: int = 0
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (None for another frame or an empty close)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int.from_bytes(self.payload[:2], "big")

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", errors="replace")


class ServerFrameReader:
    """The client side: cuts a server's byte stream into :class:`Frame` records, exactly
    as they came (no validation: a test client reports what the server sent)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf + data if self._buf else data
        frames: list[Frame] = []
        pos = 0
        while (header := frame_head(buf, pos)) is not None:
            b0, b1, head, length = header
            if len(buf) - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            if b1 & 0x80:
                payload = apply_mask(payload, buf[pos + head - 4 : pos + head])
            frames.append(Frame(b0 & 0x0F, bool(b0 & 0x80), payload, b0 >> 4 & 0x7, b1 >= 0x80))
            pos += head + length
        self._buf = buf[pos:]
        return frames


# -- the server connection ---------------------------------------------------------------


class State(enum.Enum):
    """Where a :class:`ServerConnection` is. Every step is forward::

    CONNECTING --accept--> OPEN --close sent or received, protocol error--> CLOSING
    CONNECTING --reject, bad or oversized request--> CLOSING
    any --connection_lost--> CLOSED
    """

    CONNECTING = "connecting"
    """Reading the upgrade request."""
    OPEN = "open"
    """Upgraded: messages flow both ways."""
    CLOSING = "closing"
    """A close frame (or a refusal of the upgrade) is the last thing to send: the pump
    writes :meth:`ServerConnection.data_to_send`, then closes the socket (RFC 6455 7.1.1:
    the server closes TCP first), aborting it after :data:`CLOSE_TIMEOUT`."""
    CLOSED = "closed"
    """The socket is gone."""


CLOSE_TIMEOUT: Final = 5.0
"""Seconds a closing socket may take to flush before the pump aborts it (a peer that
stopped reading would otherwise hold its buffers forever)."""


@dataclass(frozen=True, slots=True)
class Request:
    """The upgrade request arrived and is well-formed: the pump decides, with
    :meth:`ServerConnection.accept` or :meth:`ServerConnection.reject`."""

    upgrade: UpgradeRequest


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Ping:
    """Answered already (the pong is in :meth:`ServerConnection.data_to_send`)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame (1005: it had no code). Echoed already; the state is CLOSING."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The peer broke RFC 6455: a close frame with ``code`` is queued; the state is CLOSING."""

    code: int
    reason: str


Event = Request | Message | Ping | Pong | Close | Failure


class ServerConnection:
    """One server-side WebSocket connection, sans-I/O (in the manner of websockets'
    ``Protocol``): feed it what the socket read (:meth:`receive_data`), act on the events,
    write :meth:`data_to_send`, and close the socket once :attr:`state` is CLOSING.

    What it does by itself: refuses a malformed or oversized upgrade request (400, 405,
    426, 431), answers a ping with a pong, echoes the peer's close frame (with 1000 when
    the peer's had no code: 1005 must not be sent, RFC 6455 7.4.1), and answers a framing
    violation with a close frame (1002, 1007, 1009). Nothing is parsed after a close.

    It holds no buffer while idle: the partial-frame buffer and the outgoing bytes are
    empty ``bytes`` between reads. Data frames of the session do not pass through it: they
    are built once for every connection (see :func:`text_frame`) and written by the pump.
    """

    __slots__ = ("_buf", "_fragmented", "_out", "max_size", "state")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        """Bytes of one message, all fragments together (larger: 1009)."""
        self.state = State.CONNECTING
        self._buf = b""
        self._out = b""
        self._fragmented: _Fragmented | None = None
        """The message whose fragments are arriving (None between messages)."""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete request or frame held until more arrive."""
        return len(self._buf)

    def data_to_send(self) -> bytes:
        """What this connection has to write (handshake answer, pong, close), once."""
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket; the events they complete, in order."""
        if self.state is State.OPEN:
            return self._frames(data)
        if self.state is State.CONNECTING:
            return self._request(data)
        return []  # nothing is read after a close (RFC 6455 5.5.1)

    def accept(self, request: UpgradeRequest, subprotocol: str | None = None) -> list[Event]:
        """Answer the upgrade with 101 and open. Returns the events of the bytes that came
        right after the request."""
        self._expect(State.CONNECTING)
        self._out += accept_response(request.key, subprotocol)
        self.state = State.OPEN
        rest, self._buf = self._buf, b""
        return self._frames(rest) if rest else []

    def reject(self, status: int, reason: str, retry_after: int | None = None) -> None:
        """Answer the upgrade with ``status`` (and ``Retry-After``), then close."""
        self._expect(State.CONNECTING)
        self._out += reject_response(status, reason, retry_after)
        self._buf = b""
        self.state = State.CLOSING

    def send_close(self, code: int, reason: str = "") -> None:
        """Close with ``code``: a close frame is the last thing sent. No effect unless
        OPEN (a closing connection has sent its close already)."""
        if self.state is State.OPEN:
            self._close(code, reason)

    def connection_lost(self) -> None:
        self.state = State.CLOSED
        self._buf = b""
        self._fragmented = None

    # -- internals --------------------------------------------------------------------

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"connection is {self.state.value}, not {state.value}")

    def _close(self, code: int, reason: str) -> None:
        self._out += close_frame(code, reason)
        self._buf = b""
        self._fragmented = None
        self.state = State.CLOSING

    def _request(self, data: bytes) -> list[Event]:
        buf = self._buf + data
        end = buf.find(b"\r\n\r\n")
        # The limit holds however the request was split into reads.
        if (end < 0 and len(buf) > MAX_HANDSHAKE_BYTES) or end > MAX_HANDSHAKE_BYTES:
            self._buf = b""
            self.reject(431, "Request Header Fields Too Large")
            return []
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 4 :]
        try:
            upgrade = parse_upgrade(buf[:end])
        except HandshakeError as exc:
            self.reject(exc.status, exc.reason, exc.retry_after)
            return []
        return [Request(upgrade)]

    def _frames(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        try:
            self._parse(data, events)
        except WebSocketError as exc:
            self._close(exc.code, exc.reason)
            events.append(Failure(exc.code, exc.reason))
        return events

    def _parse(self, data: bytes, events: list[Event]) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        while (header := frame_head(buf, pos)) is not None:
            b0, b1, head, length = header
            if b0 & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if opcode >= 0x8:
                if length > 125 or not fin:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
            elif length + (self._fragmented.size if self._fragmented else 0) > self.max_size:
                raise WebSocketError(CLOSE_TOO_BIG, f"message larger than {self.max_size}")
            if end - pos < head + length:
                break
            start = pos + head
            payload = apply_mask(buf[start : start + length], buf[start - 4 : start])
            pos = start + length
            event = self._frame(fin, opcode, payload)
            if event is None:
                continue
            events.append(event)
            if isinstance(event, Ping):
                self._out += control_frame(OP_PONG, event.data)
            elif isinstance(event, Close):
                # Echo the close (RFC 6455 5.5.1); the peer then closes TCP or we do.
                self._close(CLOSE_NORMAL if event.code == 1005 else event.code, "")
                return
        self._buf = buf[pos:] if pos < end else b""

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _parse_close(payload)
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragmented is not None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                return _message(payload, opcode == OP_TEXT)
            self._fragmented = _Fragmented(payload, opcode == OP_TEXT)
            return None
        if opcode == OP_CONT:
            fragmented = self._fragmented
            if fragmented is None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            fragmented.parts.append(payload)
            fragmented.size += len(payload)
            if not fin:
                return None
            self._fragmented = None
            return _message(b"".join(fragmented.parts), fragmented.text)
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")


class _Fragmented:
    """A fragmented message while its fragments arrive (RFC 6455 5.4): kept apart from
    :class:`ServerConnection` so that a connection between messages holds one slot for it."""

    __slots__ = ("parts", "size", "text")

    def __init__(self, first: bytes, text: bool) -> None:
        self.parts = [first]
        self.size = len(first)
        """Bytes of ``parts`` together (the message size limit counts them all)."""
        self.text = text


def _message(data: bytes, text: bool) -> Message:
    if text:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
    return Message(data, text)


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return Close(code, reason)
