"""A node without sockets: an in-memory client transport and a protocol peer to drive it.

Unit tests of the node's rules (admission, lanes, recovery) need real sessions but no
network. :func:`local_node` starts a :class:`~tether.core.node.Node`, and
:class:`LocalSession` is one connection to it, speaking the client protocol in
:data:`JSON_LINES` (JSON messages framed as lines)::

    async with local_node(config, broker=FaultyBroker()) as node:
        alice = LocalSession(node)
        await alice.call("connect", {})
        reply = await alice.call("subscribe", {"channel": "chat:room"})
        await node.publish("chat:room", b'{"n": 1}')
        push = await alice.next_push()

:meth:`MemoryTransport.pause` acts like a socket whose send buffer is full (the node keeps
queueing within its bounds); every wait is bounded and raises TimeoutError.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from tether.brokers.base import Broker, PresenceStore
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.config import Config
from tether.core.client import Client
from tether.core.node import Node
from tether.core.transport import WireFormat
from tether.protocol.codec import JSON

__all__ = ["JSON_LINES", "LocalSession", "MemoryTransport", "line_frame", "local_node"]

TIMEOUT = 5.0
"""Seconds any single wait of this module may take before TimeoutError."""


def line_frame(payload: bytes) -> bytes:
    """The framer of in-memory transports: one JSON message per line."""
    return payload + b"\n"


JSON_LINES = WireFormat(JSON, line_frame)
"""The JSON codec framed by :func:`line_frame`: what in-memory sessions speak."""


@asynccontextmanager
async def local_node(
    config: Config,
    *,
    broker: Broker | None = None,
    presence: PresenceStore | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Node]:
    """A started node (memory broker unless given); closed (clients with 3001) on exit."""
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    node = Node(
        config,
        broker if broker is not None else MemoryBroker(),
        presence if presence is not None else MemoryPresenceStore(),
        **kwargs,
    )
    await node.start()
    try:
        yield node
    finally:
        await node.close()


class MemoryTransport:
    """A :class:`~tether.core.transport.ClientTransport` that keeps what the node writes."""

    def __init__(self, remote: str = "127.0.0.1:40000") -> None:
        self.remote = remote
        self.writes: list[bytes] = []
        """Every ``write``, in order (one per flush)."""
        self.closed: tuple[int, str] | None = None
        """``(code, reason)`` once the node closed the transport."""
        self.client: Client | None = None
        self.changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        if self.closed is None:
            self.writes.append(data)
            self.changed.set()

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.changed.set()

    def pause(self) -> None:
        """The socket's buffer is full (as asyncio's ``pause_writing``)."""
        assert self.client is not None
        self.client.pause_writing()

    def resume(self) -> None:
        assert self.client is not None
        self.client.resume_writing()


class LocalSession:
    """One client connection to ``node`` over a :class:`MemoryTransport`, in JSON lines."""

    def __init__(self, node: Node, remote: str = "127.0.0.1:40000") -> None:
        self.node = node
        self.transport = MemoryTransport(remote)
        self.client = node.open_session(self.transport, JSON_LINES)
        self.transport.client = self.client
        self.pushes: deque[dict[str, Any]] = deque()
        """Pushes not yet taken by :meth:`next_push`, oldest first."""
        self.pings = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._read = 0
        self._next_id = 0

    # -- sending ------------------------------------------------------------------------

    def send(self, *commands: dict[str, Any]) -> None:
        """Commands as one frame (the node runs them in order, in the client's task)."""
        self.client.on_message(b"\n".join(json.dumps(c).encode() for c in commands))

    def send_command(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send one command without waiting; returns its id (see :meth:`reply`)."""
        self._next_id += 1
        self.send({"id": self._next_id, method: params or {}})
        return self._next_id

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return its whole reply (``{"id", method | "error"}``)."""
        return await self.reply(self.send_command(method, params))

    # -- receiving ----------------------------------------------------------------------

    def _take(self) -> None:
        writes = self.transport.writes
        while self._read < len(writes):
            data = writes[self._read]
            self._read += 1
            for line in data.split(b"\n"):
                if not line:
                    continue
                message = json.loads(line)
                if not message:
                    self.pings += 1
                elif message.get("id"):
                    self._replies[message["id"]] = message
                else:
                    self.pushes.append(message["push"])

    async def _until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while True:
                self._take()
                if done():
                    return
                if self.transport.closed is not None:
                    raise ConnectionError(f"closed with {self.transport.closed}")
                self.transport.changed.clear()
                await self.transport.changed.wait()

    async def reply(self, cid: int) -> dict[str, Any]:
        await self._until(lambda: cid in self._replies)
        return self._replies.pop(cid)

    async def next_push(self) -> dict[str, Any]:
        await self._until(lambda: bool(self.pushes))
        return self.pushes.popleft()

    async def wait_closed(self) -> int:
        """The close code, once the node closed this connection."""
        async with asyncio.timeout(TIMEOUT):
            while self.transport.closed is None:
                self.transport.changed.clear()
                await self.transport.changed.wait()
        self._take()
        return self.transport.closed[0]
