"""The client-facing WebSocket listener: a thin asyncio pump around :mod:`.wire`.

One :class:`WebSocketConnection` per socket. It does the upgrade, turns incoming bytes into
messages for its :class:`~tether.core.transport.Session`, and writes the framed bytes the
session queues. It knows the node only as a :class:`~tether.core.transport.Gateway`. It
holds no buffer while idle, which keeps an idle connection near 2 KiB.
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
CLOSE_TIMEOUT = 5.0
"""Seconds a closing socket may take to flush before it is aborted (a peer that stopped
reading would otherwise hold its buffers forever)."""


class WebSocketConnection(asyncio.Protocol):
    __slots__ = (
        "_admitted_ip",
        "_binary",
        "_client",
        "_gateway",
        "_handshake",
        "_parser",
        "_transport",
        "remote",
    )

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._transport: asyncio.Transport | None = None
        self._handshake: bytes | None = b""
        self._parser: wire.FrameParser | None = None
        self._client: Session | None = None
        self._admitted_ip: str | None = None
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
        if self._handshake is not None:
            self._on_handshake_bytes(data)
            return
        parser = self._parser
        if parser is None:  # closing
            return
        try:
            events = parser.feed(data)
        except wire.WebSocketError as exc:
            log.info(
                "websocket protocol error", remote=self.remote, code=exc.code, reason=exc.reason
            )
            self._fail(exc.code, exc.reason)
            return
        for event in events:
            if isinstance(event, wire.Message):
                client = self._client
                if client is None:
                    continue
                if event.text and self._binary:
                    # A Protobuf SDK sends binary frames only; text is someone else's
                    # JSON on the wrong connection. (Binary frames on a JSON connection
                    # are decoded as JSON: valid JSON is served, anything else is 3501.)
                    bad = DisconnectCode.BAD_REQUEST
                    self._fail(bad.code, "text frame on a Protobuf connection")
                    return
                client.on_message(event.data)
            elif isinstance(event, wire.Ping):
                self.write(wire.control_frame(wire.OP_PONG, event.data))
            elif isinstance(event, wire.Close):
                # Echo the close (RFC 6455 5.5.1), then let the peer close TCP.
                code = wire.CLOSE_NORMAL if event.code == 1005 else event.code
                self._fail(code, "")
                return
            # Pong frames need no answer.

    def connection_lost(self, exc: Exception | None) -> None:
        self._parser = None
        self._transport = None
        if self._admitted_ip is not None:
            self._gateway.release(self._admitted_ip)
            self._admitted_ip = None
        client, self._client = self._client, None
        if client is not None:
            client.on_transport_closed()

    def pause_writing(self) -> None:
        if self._client is not None:
            self._client.pause_writing()

    def resume_writing(self) -> None:
        if self._client is not None:
            self._client.resume_writing()

    # -- ClientTransport --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self, code: int, reason: str) -> None:
        self._client = None
        self._fail(code, reason)

    # -- internals --------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        """Send a close frame and close the socket (queued data goes first)."""
        self._parser = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(wire.close_frame(code, reason))
        transport.close()
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)
        client, self._client = self._client, None
        if client is not None:
            client.on_transport_closed()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _on_handshake_bytes(self, data: bytes) -> None:
        assert self._handshake is not None
        assert self._transport is not None
        buf = self._handshake + data
        end = buf.find(b"\r\n\r\n")
        # The limit holds however the request was split into reads.
        if (end < 0 and len(buf) > wire.MAX_HANDSHAKE_BYTES) or end > wire.MAX_HANDSHAKE_BYTES:
            self._reject(431, "Request Header Fields Too Large")
            return
        if end < 0:
            self._handshake = buf
            return
        self._handshake = None
        try:
            request = wire.parse_upgrade(buf[:end])
            if request.path != PATH:
                raise wire.HandshakeError(404, "Not Found")
            origin = request.headers.get("origin")
            allowed = self._gateway.limits.allowed_origins
            if origin and "*" not in allowed and origin not in allowed:
                raise wire.HandshakeError(403, "Origin Not Allowed")
            negotiated = negotiate(request)
            if not self._gateway.accepting:
                raise wire.HandshakeError(503, "Shutting Down", retry_after=1)
            ip = self.remote.rpartition(":")[0]
            retry_after = self._gateway.admit(ip)
            if retry_after is not None:
                raise wire.HandshakeError(503, "Too Many Connections", retry_after)
            self._admitted_ip = ip
        except wire.HandshakeError as exc:
            self._reject(exc.status, exc.reason, exc.retry_after)
            return
        self._transport.write(wire.accept_response(request.key, negotiated.subprotocol))
        self._parser = wire.FrameParser(self._gateway.limits.max_message_size)
        self._binary = negotiated.wire_format.codec.binary
        self._client = self._gateway.open_session(self, negotiated.wire_format)
        rest = buf[end + 4 :]
        if rest:
            self.data_received(rest)

    def _reject(self, status: int, reason: str, retry_after: int | None = None) -> None:
        assert self._transport is not None
        self._handshake = None
        self._transport.write(wire.reject_response(status, reason, retry_after))
        self._transport.close()


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
