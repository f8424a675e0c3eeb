"""The WebSocket listener is a pump between a socket, the sans-I/O connection and a session,
and it knows the node only as a :class:`~tether.core.transport.Gateway`.

Driven here with a fake gateway, a fake asyncio transport and a recording session: no node,
no sockets. What it shows is what any transport must do at the edge: ask the gateway at the
upgrade (accepting, admission), open one session, hand it whole messages, release the
admission when the socket goes, and tell the session exactly once that it is gone.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Mapping
from typing import Any

from tether.core.transport import ClientTransport, TransportLimits, WireFormat
from tether.protocol.protobuf import PROTOBUF
from tether.testing.wsclient import OP_CLOSE, OP_PING, OP_TEXT, client_frame, upgrade_request
from tether.transports.websocket import wire
from tether.transports.websocket.server import WebSocketConnection

KEY = base64.b64encode(b"0123456789abcdef").decode()


class FakeSocket:
    """An asyncio transport that keeps what is written."""

    def __init__(self) -> None:
        self.data = b""
        self.closing = False
        self.aborted = False

    def get_extra_info(self, name: str) -> Any:
        return ("10.0.0.7", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def take(self) -> bytes:
        data, self.data = self.data, b""
        return data


class RecordingSession:
    def __init__(self, transport: ClientTransport, wire_format: WireFormat) -> None:
        self.transport = transport
        self.wire_format = wire_format
        self.messages: list[bytes] = []
        self.closed = 0
        self.paused = False

    def on_message(self, data: bytes) -> None:
        self.messages.append(data)

    def on_transport_closed(self) -> None:
        self.closed += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


class FakeGateway:
    def __init__(self, *, accepting: bool = True, retry_after: int | None = None) -> None:
        self.accepting = accepting
        self.retry_after = retry_after
        self.limits = TransportLimits(max_message_size=1024, allowed_origins=frozenset({"*"}))
        self.admitted: list[str] = []
        self.released: list[str] = []
        self.sessions: list[RecordingSession] = []
        self.headers: list[dict[str, str]] = []
        """The upgrade headers each session was opened with (for the backend hooks)."""

    def admit(self, ip: str) -> int | None:
        if self.retry_after is None:
            self.admitted.append(ip)
        return self.retry_after

    def release(self, ip: str) -> None:
        self.released.append(ip)

    def open_session(
        self,
        transport: ClientTransport,
        wire_format: WireFormat,
        headers: Mapping[str, str] | None = None,
    ) -> RecordingSession:
        session = RecordingSession(transport, wire_format)
        self.headers.append(dict(headers or {}))
        self.sessions.append(session)
        return session


def connect(gateway: FakeGateway, **headers: str) -> tuple[WebSocketConnection, FakeSocket]:
    conn = WebSocketConnection(gateway)
    sock = FakeSocket()
    conn.connection_made(sock)  # type: ignore[arg-type]
    conn.data_received(
        upgrade_request(headers={"Sec-WebSocket-Key": KEY, **headers})  # type: ignore[arg-type]
    )
    return conn, sock


async def test_an_accepted_upgrade_opens_one_session_that_gets_whole_messages() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway)
    assert sock.take() == wire.accept_response(KEY)
    [session] = gateway.sessions
    assert session.wire_format.codec.name == "json"
    frame = client_frame(OP_TEXT, b'{"id":1,"connect":{}}')
    conn.data_received(frame[:5])
    conn.data_received(frame[5:])
    assert session.messages == [b'{"id":1,"connect":{}}']
    assert gateway.admitted == ["10.0.0.7"]


async def test_the_session_gets_the_upgrade_headers_for_the_backend_hooks() -> None:
    gateway = FakeGateway()
    connect(gateway, cookie="session=abc")
    [headers] = gateway.headers
    assert headers["cookie"] == "session=abc"


async def test_the_session_writes_through_the_connection_and_is_paused_with_the_socket() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway)
    sock.take()
    [session] = gateway.sessions
    session.transport.write(b"framed bytes")
    assert sock.take() == b"framed bytes"
    conn.pause_writing()
    assert session.paused
    conn.resume_writing()
    assert not session.paused


async def test_a_ping_is_answered_by_the_pump_without_the_session() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway)
    sock.take()
    conn.data_received(client_frame(OP_PING, b"hb"))
    assert sock.take() == wire.control_frame(wire.OP_PONG, b"hb")
    assert gateway.sessions[0].messages == []


async def test_a_peer_close_is_echoed_the_socket_closed_and_the_session_told_once() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway)
    sock.take()
    conn.data_received(client_frame(OP_CLOSE, b""))
    assert sock.take() == wire.close_frame(1000)
    assert sock.closing
    conn.connection_lost(None)
    assert gateway.sessions[0].closed == 1
    assert gateway.released == ["10.0.0.7"]


async def test_the_session_closing_sends_its_code_and_is_not_called_back() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway)
    sock.take()
    [session] = gateway.sessions
    session.transport.close(3008, "slow")
    assert sock.take() == wire.close_frame(3008, "slow")
    assert sock.closing
    conn.connection_lost(None)
    assert session.closed == 0


async def test_a_protocol_error_closes_with_its_code_and_tells_the_session() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway)
    sock.take()
    conn.data_received(client_frame(OP_TEXT, b"unmasked", masked=False))
    assert struct.unpack("!H", sock.take()[2:4]) == (wire.CLOSE_PROTOCOL_ERROR,)
    assert gateway.sessions[0].closed == 1


async def test_a_draining_gateway_refuses_the_upgrade_with_503() -> None:
    gateway = FakeGateway(accepting=False)
    _, sock = connect(gateway)
    assert sock.take() == wire.reject_response(503, "Shutting Down", 1)
    assert sock.closing
    assert gateway.sessions == []
    assert gateway.admitted == []


async def test_admission_refused_is_503_with_its_retry_after_and_nothing_to_release() -> None:
    gateway = FakeGateway(retry_after=7)
    conn, sock = connect(gateway)
    assert sock.take() == wire.reject_response(503, "Too Many Connections", 7)
    conn.connection_lost(None)
    assert gateway.released == []
    assert gateway.sessions == []


async def test_a_socket_that_never_drains_its_close_is_aborted() -> None:
    gateway = FakeGateway()
    _conn, sock = connect(gateway)
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_later = loop.call_later

    def call_later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        timers.append(delay)
        return real_call_later(0, callback, *args)

    loop.call_later = call_later  # type: ignore[method-assign]
    try:
        gateway.sessions[0].transport.close(3001, "shutdown")
    finally:
        loop.call_later = real_call_later  # type: ignore[method-assign]
    assert timers == [wire.CLOSE_TIMEOUT]
    assert not sock.aborted
    await asyncio.sleep(0.01)  # the timer (due at once here) fires
    assert sock.aborted


async def test_a_text_frame_on_a_protobuf_connection_is_3501() -> None:
    gateway = FakeGateway()
    conn, sock = connect(gateway, **{"Sec-WebSocket-Protocol": "centrifuge-protobuf"})
    assert b"Sec-WebSocket-Protocol: centrifuge-protobuf" in sock.take()
    [session] = gateway.sessions
    assert session.wire_format.codec is PROTOBUF
    conn.data_received(client_frame(OP_TEXT, b"{}"))
    assert struct.unpack("!H", sock.take()[2:4]) == (3501,)
    assert session.closed == 1
    assert session.messages == []
