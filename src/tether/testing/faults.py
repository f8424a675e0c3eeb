"""Fault injection on real sockets: a TCP proxy that can cut connections on demand.

Put a client behind a :class:`TcpProxy` instead of pointing it at the server, then make
the network fail the way mobile networks do::

    async with TcpProxy(server.port) as proxy:
        client = Client(f"ws://127.0.0.1:{proxy.port}/connection/websocket")
        ...
        proxy.refuse_new = True   # the network stays down: reconnect attempts fail
        proxy.drop()              # every current connection dies without a close frame
        ...                       # publish while the client is away
        proxy.refuse_new = False  # the network is back: the client reconnects

The proxy forwards bytes unchanged in both directions; it knows nothing of WebSocket or
of the protocol. Every task it starts belongs to it and ends with :meth:`TcpProxy.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType

_CHUNK = 65536
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a timeout of 0: closing the socket sends RST instead of FIN."""


class _Link:
    """One proxied connection: the accepted (downstream) side and the upstream side."""

    __slots__ = ("downstream", "upstream")

    def __init__(self, downstream: asyncio.StreamWriter) -> None:
        self.downstream = downstream
        self.upstream: asyncio.StreamWriter | None = None

    def reset(self) -> None:
        """Abort both sides with a TCP reset: no close frame, no FIN, data in flight lost."""
        for writer in (self.downstream, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            writer.transport.abort()


class TcpProxy:
    """An asyncio TCP proxy on ``host`` (an ephemeral port) forwarding to a target.

    ``target_host``/``target_port`` may be changed while the proxy runs (:meth:`retarget`):
    connections made afterwards go to the new target, which is how a test moves clients
    to a restarted server without them knowing.

    Faults:

    * :meth:`drop` aborts every current connection with a TCP reset (both sides).
    * :attr:`refuse_new`: while true, new connections are accepted and reset at once,
      as when the network path is down.
    * A target that does not answer makes the proxy reset the accepted connection.
    """

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = 0
        """The bound port (known after :meth:`start`)."""
        self.target_host = target_host
        self.target_port = target_port
        self.refuse_new = False
        self.accepted = 0
        """Connections accepted so far, refused ones included."""
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Connections being forwarded right now."""
        return len(self._links)

    def retarget(self, port: int, host: str | None = None) -> None:
        """Send new connections to ``host:port`` (current ones stay where they are)."""
        self.target_port = port
        if host is not None:
            self.target_host = host

    def drop(self) -> int:
        """Abort every current connection (TCP reset on both sides). Returns how many."""
        links, self._links = self._links, set()
        for link in links:
            link.reset()
        return len(links)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, reset every connection, end every task of the proxy."""
        if self._server is not None:
            self._server.close()
        self.drop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- forwarding ---------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so that the task forwarding the connection is the proxy's own
        # (asyncio would otherwise run a coroutine callback as a task nobody owns).
        task = asyncio.get_running_loop().create_task(self._forward(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        if self.refuse_new:
            link.reset()
            return
        self._links.add(link)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                link.reset()
                return
            link.upstream = up_writer
            if link not in self._links:  # dropped while connecting upstream
                link.reset()
                return
            async with asyncio.TaskGroup() as pipes:
                pipes.create_task(_pipe(reader, up_writer))
                pipes.create_task(_pipe(up_reader, writer))
        finally:
            self._links.discard(link)
            writer.close()
            if link.upstream is not None:
                link.upstream.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF (passed on as a half-close) or an error."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except OSError:
        # A reset on either side: the link is dead, the other pipe ends with it.
        writer.transport.abort()
