"""RFC 6455 server side, sans-I/O: the upgrade handshake and frames, bytes in, events out.

Hand-written (not a library) because the fan-out path needs two things no measured Python
library gives together: frames built once and shared by every connection, and an idle
connection costing about 2 KiB (websockets, aiohttp and picows need 12-28 KiB; see
``docs/benchmarks.md``). This module knows no sockets and no asyncio.

Server frames are never masked, so :func:`text_frame` bytes are the same for every client.
Client frames must be masked (RFC 6455 5.1); a violation closes with 1002, an invalid UTF-8
text message with 1007, a message over the size limit with 1009.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

# Raised here, defined with every other error; re-exported for the callers of this module.
from tether.errors import HandshakeError as HandshakeError
from tether.errors import WebSocketError as WebSocketError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_BYTES = 8192

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
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
    upgrade = {t.strip().lower() for t in headers.get("upgrade", "").split(",")}
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if "websocket" not in upgrade or "upgrade" not in connection:
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


def reject_response(status: int, reason: str, retry_after: int | None = None) -> bytes:
    body = reason.encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n{retry}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _header(opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


_SMALL_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]


_SMALL_BINARY_HEADERS = [bytes((0x82, n)) for n in range(126)]


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame: the same bytes for every client."""
    n = len(payload)
    if n < 126:
        return _SMALL_TEXT_HEADERS[n] + payload
    return _header(OP_TEXT, n) + payload


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, final binary frame: the same bytes for every client."""
    n = len(payload)
    if n < 126:
        return _SMALL_BINARY_HEADERS[n] + payload
    return _header(OP_BINARY, n) + payload


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return _header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    # A close reason must fit the 125-byte control frame with the 2-byte code.
    raw = reason.encode()[:123]
    return control_frame(OP_CLOSE, struct.pack("!H", code) + raw)


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Event = Message | Ping | Pong | Close


class FrameParser:
    """Turns the client's byte stream into events. Holds no buffer while idle."""

    __slots__ = ("_buf", "_closed", "_fragment_text", "_fragments", "_fragments_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = b""
        self._closed = False
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragment_text = False

    def feed(self, data: bytes) -> list[Event]:
        """Parse what ``data`` completes. Raises :class:`WebSocketError`. After a close
        frame nothing more is parsed (RFC 6455 5.5.1: no data follows a close)."""
        if self._closed:
            return []
        buf = self._buf + data if self._buf else data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if opcode >= 0x8:
                if length > 125 or not fin:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
            elif length + self._fragments_size > self.max_size:
                raise WebSocketError(CLOSE_TOO_BIG, f"message larger than {self.max_size}")
            if end - pos < head + 4 + length:
                break
            mask = buf[pos + head : pos + head + 4]
            start = pos + head + 4
            payload = _unmask(buf[start : start + length], mask)
            pos = start + length
            event = self._frame(fin, opcode, payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Close):
                    self._buf = b""
                    self._closed = True
                    return events
        self._buf = buf[pos:] if pos < end else b""
        return events

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _parse_close(payload)
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                return _message(payload, opcode == OP_TEXT)
            self._fragments = [payload]
            self._fragments_size = len(payload)
            self._fragment_text = opcode == OP_TEXT
            return None
        if opcode == OP_CONT:
            if self._fragments is None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if not fin:
                return None
            data = b"".join(self._fragments)
            self._fragments = None
            self._fragments_size = 0
            return _message(data, self._fragment_text)
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")


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
