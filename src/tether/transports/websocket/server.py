"""The client-facing WebSocket listener: a pure pump around :class:`.wire.ServerConnection`.

One :class:`WebSocketConnection` per socket. It moves bytes: what the socket reads goes
into the sans-I/O connection, what that has to send goes to the socket, its messages go to
the :class:`~tether.core.transport.Session`, and the framed bytes the session queues go
straight to the socket. The protocol's rules (handshake limits, the pong, the close echo,
when to close the socket) live in :mod:`.wire`; the decisions of the upgrade (path,
origin, encoding, draining, admission) are here, asked of the node as a
:class:`~tether.core.transport.Gateway`. It holds no buffer while idle, which keeps an
idle connection near 2 KiB.
"""

from __future__ import annotations

import asyncio
from typing import cast

import structlog

from tether.core.transport import Gateway, Session
from tether.protocol.codes import DisconnectCode
from tether.transports.websocket import wire
from tether.transports.websocket.negotiation import negotiate

log = structlog.get_logger("tether.websocket")

PATH = "/connection/websocket"


class WebSocketConnection(asyncio.Protocol):
    __slots__ = (
        "_abort_timer",
        "_admitted",
        "_binary",
        "_gateway",
        "_session",
        "_transport",
        "_ws",
        "remote",
    )

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._ws = wire.ServerConnection(gateway.limits.max_message_size)
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._admitted = False
        """Admission counted this connection against its IP (released when it ends)."""
        self._abort_timer: asyncio.TimerHandle | None = None
        self._binary = False
        """The connection speaks a binary encoding (Protobuf): text frames are refused."""
        self.remote = ""

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def data_received(self, data: bytes) -> None:
        self._handle(self._ws.receive_data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.connection_lost()
        self._transport = None
        if self._abort_timer is not None:
            # Closed in time: the timer would hold this connection until CLOSE_TIMEOUT (a
            # storm of refused upgrades would pin each one's buffers that long).
            self._abort_timer.cancel()
            self._abort_timer = None
        if self._admitted:
            self._gateway.release(self._ip())
            self._admitted = False
        self._end_session()

    def pause_writing(self) -> None:
        if self._session is not None:
            self._session.pause_writing()

    def resume_writing(self) -> None:
        if self._session is not None:
            self._session.resume_writing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        """What the socket's transport knows (``"socket"``, ``"peername"``, ...), as
        :meth:`asyncio.BaseTransport.get_extra_info`; ``default`` once it is closed."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    # -- ClientTransport --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self, code: int, reason: str) -> None:
        self._session = None  # it released itself
        self._ws.send_close(code, reason)
        self._send()

    # -- the pump ---------------------------------------------------------------------

    def _handle(self, events: list[wire.Event]) -> None:
        for event in events:
            if isinstance(event, wire.Message):
                if event.text and self._binary:
                    # A Protobuf SDK sends binary frames only; text is someone else's
                    # JSON on the wrong connection. (Binary frames on a JSON connection
                    # are decoded as JSON: valid JSON is served, anything else is 3501.)
                    bad = DisconnectCode.BAD_REQUEST
                    self._ws.send_close(bad.code, "text frame on a Protobuf connection")
                    break
                if self._session is not None:
                    self._session.on_message(event.data)
            elif isinstance(event, wire.Request):
                self._upgrade(event.upgrade)
                return  # _upgrade handled what followed the request
            elif isinstance(event, wire.Failure):
                log.info(
                    "websocket protocol error",
                    remote=self.remote,
                    code=event.code,
                    reason=event.reason,
                )
            # Ping (answered), Pong, Close (echoed): nothing for the session.
        self._send()

    def _send(self) -> None:
        """Write what the connection has to send; close the socket once it is closing."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        out = self._ws.data_to_send()
        if out:
            transport.write(out)
        if self._ws.state is wire.State.CLOSING:
            transport.close()  # after what is queued
            loop = asyncio.get_running_loop()
            self._abort_timer = loop.call_later(wire.CLOSE_TIMEOUT, self._abort)
            self._end_session()

    def _end_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.on_transport_closed()

    def _ip(self) -> str:
        """The peer's address without the port (made again at release rather than kept:
        an idle connection holds ``remote`` only)."""
        return self.remote.rpartition(":")[0]

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _upgrade(self, request: wire.UpgradeRequest) -> None:
        gateway = self._gateway
        try:
            if request.path != PATH:
                raise wire.HandshakeError(404, "Not Found")
            origin = request.headers.get("origin")
            allowed = gateway.limits.allowed_origins
            if origin and "*" not in allowed and origin not in allowed:
                raise wire.HandshakeError(403, "Origin Not Allowed")
            negotiated = negotiate(request)
            if not gateway.accepting:
                raise wire.HandshakeError(503, "Shutting Down", retry_after=1)
            retry_after = gateway.admit(self._ip())
            if retry_after is not None:
                raise wire.HandshakeError(503, "Too Many Connections", retry_after)
            self._admitted = True
        except wire.HandshakeError as exc:
            self._ws.reject(exc.status, exc.reason, exc.retry_after)
            self._send()
            return
        rest = self._ws.accept(request, negotiated.subprotocol)
        self._send()  # the 101 goes before anything the session writes
        self._binary = negotiated.wire_format.codec.binary
        self._session = gateway.open_session(self, negotiated.wire_format, request.headers)
        self._handle(rest)


async def serve(
    gateway: Gateway, host: str, port: int, *, backlog: int = 2048, reuse_port: bool = False
) -> asyncio.Server:
    """Listen for clients on ``host:port`` at :data:`PATH`. ``reuse_port``: SO_REUSEPORT,
    for worker processes sharing the port."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: WebSocketConnection(gateway),
        host,
        port,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
