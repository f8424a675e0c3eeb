"""A raw WebSocket client for tests: it can send anything, and reports exactly what came back.

Real SDKs refuse to send a malformed frame; this client sends whatever a test asks for
(unmasked frames, reserved bits, invalid UTF-8, any bytes at all) and reads the server's
frames as they are, close code included. It speaks just enough of the Centrifugo protocol
to drive a session: :meth:`WSClient.call` sends a command and returns its reply, keeping
pushes for :meth:`WSClient.next_push`::

    ws = await WSClient.open(server.port)
    await ws.call("connect", {"token": token})
    await ws.call("subscribe", {"channel": "chat:room"})
    push = await ws.next_push()
    ...
    await ws.send_text(b"not json")
    assert await ws.wait_closed() == 3501

Everything here is asyncio streams; there is no background task, so nothing outlives the
client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tether.errors import TetherError

PATH = "/connection/websocket"
TIMEOUT = 5.0
"""Default seconds any single wait of this module may take before TimeoutError."""

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
) -> bytes:
    """Bytes of one client frame (RFC 6455 5.2). ``rsv`` is the 3 reserved bits (0-7);
    ``masked=False`` leaves out the mask a client must send; ``mask`` fixes the key."""
    b0 = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = mask if mask is not None else os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def upgrade_request(
    path: str = PATH,
    *,
    host: str = "127.0.0.1",
    method: str = "GET",
    version: str = "HTTP/1.1",
    headers: dict[str, str | None] | None = None,
) -> bytes:
    """An upgrade request. ``headers`` add to or replace the standard ones; a None value
    removes that header."""
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


@dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    fin: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (None for another frame or an empty close)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int.from_bytes(self.payload[:2], "big")

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", errors="replace")


class HandshakeRejected(TetherError):
    """The server answered the upgrade with ``status`` instead of 101."""

    def __init__(self, status: int, head: bytes) -> None:
        self.status = status
        self.head = head
        super().__init__(f"upgrade rejected with HTTP {status}")


class Closed(TetherError):
    """The server closed the connection: ``code`` is None without a close frame."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"closed with {code}: {reason}")


async def http_exchange(port: int, request: bytes, *, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send raw ``request`` bytes, return the HTTP status and head of the answer.
    Raises TimeoutError after :data:`TIMEOUT` seconds without an answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        return _status(head), head
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _status(head: bytes) -> int:
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {head[:80]!r}")
    return int(parts[1])


class WSClient:
    """One raw WebSocket connection. Use :meth:`open`, and close it with :meth:`close`
    (or ``async with``). Every wait raises TimeoutError after :attr:`timeout` seconds, so
    a server that stays silent fails the test instead of hanging it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.timeout = TIMEOUT
        self.reader = reader
        self.writer = writer
        self.pushes: deque[dict[str, Any]] = deque()
        """Pushes received while waiting for replies, oldest first."""
        self.close_frame: Frame | None = None
        """The server's close frame, once it came."""
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        host: str = "127.0.0.1",
        path: str = PATH,
        headers: dict[str, str | None] | None = None,
    ) -> WSClient:
        """Connect and upgrade. Raises :class:`HandshakeRejected` for a non-101 answer."""
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(upgrade_request(path, host=host, headers=headers))
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status = _status(head)
            if status != 101:
                raise HandshakeRejected(status, head)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def __aenter__(self) -> WSClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the TCP connection (no close handshake: tests rarely need one)."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    # -- sending ----------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is (may fail if the server already closed)."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(self, opcode: int, payload: bytes, **options: Any) -> None:
        """One frame; ``options`` as for :func:`client_frame`."""
        await self.send_raw(client_frame(opcode, payload, **options))

    async def send_text(self, data: str | bytes) -> None:
        """One masked text frame (bytes are sent as given, valid UTF-8 or not)."""
        await self.send_frame(OP_TEXT, data.encode() if isinstance(data, str) else data)

    async def send_commands(self, *commands: dict[str, Any]) -> None:
        """Commands as one frame, separated by newlines (the protocol's batch form)."""
        await self.send_text(b"\n".join(json.dumps(c).encode() for c in commands))

    # -- receiving --------------------------------------------------------------------

    async def recv_frame(self) -> Frame:
        """The next frame. Raises :class:`Closed` (code None) if the TCP stream ended."""
        try:
            async with asyncio.timeout(self.timeout):
                head = await self.reader.readexactly(2)
                b0, b1 = head
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await self.reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await self.reader.readexactly(8), "big")
                key = await self.reader.readexactly(4) if b1 & 0x80 else b""
                payload = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise Closed(None, "connection ended without a close frame") from None
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return Frame(opcode=b0 & 0x0F, fin=bool(b0 & 0x80), payload=payload)

    async def recv_messages(self) -> list[dict[str, Any]]:
        """The JSON messages of the next data frame (a frame may batch several, one per
        line). Answers a server ping ``{}`` with a pong and keeps reading. Raises
        :class:`Closed` on a close frame."""
        while True:
            frame = await self.recv_frame()
            if frame.opcode == OP_CLOSE:
                self.close_frame = frame
                raise Closed(frame.close_code, frame.close_reason)
            if frame.opcode not in (OP_TEXT, OP_BINARY):
                continue
            messages = [json.loads(line) for line in frame.payload.split(b"\n") if line]
            if messages == [{}]:
                await self.send_text(b"{}")
                continue
            return [m for m in messages if m]

    async def _read_into_buffers(self) -> None:
        for message in await self.recv_messages():
            if message.get("id"):
                self._replies[message["id"]] = message
            else:
                self.pushes.append(message)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return its whole reply (``{"id", method | "error"}``).
        Raises :class:`Closed` if the server closes instead."""
        cid = await self.send_command(method, params)
        return await self.reply(cid)

    async def send_command(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send one command without waiting; returns its id (see :meth:`reply`)."""
        self._next_id += 1
        await self.send_commands({"id": self._next_id, method: params or {}})
        return self._next_id

    async def reply(self, cid: int) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            while cid not in self._replies:
                await self._read_into_buffers()
        return self._replies.pop(cid)

    async def next_push(self) -> dict[str, Any]:
        """The next push (``message["push"]``), oldest first."""
        async with asyncio.timeout(self.timeout):
            while not self.pushes:
                await self._read_into_buffers()
        return dict(self.pushes.popleft()["push"])

    async def wait_closed(self) -> int | None:
        """Read until the server closes; return the close code (None: no close frame).
        Raises TimeoutError if the server keeps the connection open."""
        async with asyncio.timeout(self.timeout):
            while True:
                try:
                    frame = await self.recv_frame()
                except Closed as exc:
                    return exc.code
                if frame.opcode == OP_CLOSE:
                    self.close_frame = frame
                    return frame.close_code
