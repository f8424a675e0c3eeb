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
import contextlib
import json
from collections import deque
from types import TracebackType
from typing import Any

from tether.errors import TetherError
from tether.transports.websocket import wire
from tether.transports.websocket.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    client_frame,
)

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Closed",
    "Frame",
    "HandshakeRejected",
    "WSClient",
    "client_frame",
    "http_exchange",
    "upgrade_request",
]

PATH = "/connection/websocket"
TIMEOUT = 5.0
"""Default seconds any single wait of this module may take before TimeoutError."""
READ_SIZE = 65536


def upgrade_request(path: str = PATH, **options: Any) -> bytes:
    """An upgrade request to Tether's endpoint; ``options`` as for
    :func:`tether.transports.websocket.wire.upgrade_request` (``headers`` add to or
    replace the standard ones; a None value removes one)."""
    return wire.upgrade_request(path, **options)


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
        return wire.response_status(head), head
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


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
        self._reader = wire.ServerFrameReader()
        self._frames: deque[Frame] = deque()
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
            status = wire.response_status(head)
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
        async with asyncio.timeout(self.timeout):
            while not self._frames:
                try:
                    data = await self.reader.read(READ_SIZE)
                except ConnectionError:
                    data = b""
                if not data:
                    raise Closed(None, "connection ended without a close frame")
                self._frames.extend(self._reader.feed(data))
        return self._frames.popleft()

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
