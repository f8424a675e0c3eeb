"""The edge between a client session and the socket carrying it, declared both ways.

A transport (the WebSocket listener; the in-memory pair of
:mod:`tether.testing.transports`; HTTP-streaming and SSE later) depends on this module
only, never on the node or the client:

* :class:`Gateway`: what the transport asks of the node at the handshake (accepting?
  admission of the peer, the limits, a new session);
* :class:`Session`: what the transport calls on the session it carries (a message came, the
  socket paused or resumed, the socket is gone);
* :class:`ClientTransport`: what the session calls on the transport (write framed bytes,
  close with a code).

A transport moves already-framed bytes. At the handshake it chooses the connection's
:class:`WireFormat` (a codec and the transport's framing of it); the node encodes and
frames each message once per wire format and hands the same bytes to every connection of
that format.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tether.protocol.codec import Codec
from tether.protocol.messages import Publication, Push, Reply

Framer = Callable[[bytes], bytes]
"""Turns one encoded protocol message into the bytes a transport writes for it."""


class WireFormat:
    """One codec as one transport frames it: what a connection speaks on the wire.

    The hub groups a channel's subscribers by wire format and builds each publication's
    frame once per format present (identity is the key: make one instance per transport
    and codec, at import). ``frame`` must give the same bytes for every connection.
    """

    __slots__ = ("codec", "frame", "ping")

    def __init__(self, codec: Codec, frame: Framer) -> None:
        self.codec = codec
        self.frame = frame
        self.ping = frame(codec.ping)
        """The framed heartbeat, built once."""

    def __repr__(self) -> str:
        return f"<WireFormat {self.codec.name}>"

    def reply(self, reply: Reply) -> bytes:
        return self.frame(self.codec.encode_reply(reply))

    def push(self, push: Push) -> bytes:
        return self.frame(self.codec.encode_push(push))

    def publication(self, channel: str, publication: Publication) -> bytes:
        return self.frame(self.codec.encode_publication_push(channel, publication))


class ClientTransport(Protocol):
    """The socket side of a connection, as the session sees it."""

    remote: str
    """Peer address, for logs and per-IP limits."""

    def write(self, data: bytes) -> None:
        """Queue framed bytes for the socket; never blocks."""

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then a close with ``code``/``reason``, then close. The
        session has already released itself: the transport must not call it again."""


class Session(Protocol):
    """The protocol session a transport carries, as the transport sees it. Calls come in
    socket order; none of them blocks."""

    def on_message(self, data: bytes) -> None:
        """One complete message from the peer (one WebSocket message; any message
        answers a ping)."""

    def on_transport_closed(self) -> None:
        """The socket is gone (the peer closed, the network failed, or the transport
        closed it). Called at most once; nothing follows it."""

    def pause_writing(self) -> None:
        """The socket's send buffer is full: hold writes (within the queue's bounds)."""

    def resume_writing(self) -> None:
        """The socket drained: write what was held."""


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """What a transport enforces on the wire, from the node's config."""

    max_message_size: int
    """Bytes of one incoming message (a WebSocket message, all fragments together)."""
    allowed_origins: frozenset[str]
    """``Origin`` values a browser may connect from; ``"*"``: any. A request without an
    ``Origin`` (not a browser) is always allowed."""


class Gateway(Protocol):
    """The node as a transport sees it at the handshake. The order of a handshake:
    :attr:`accepting` (503 if not), :meth:`admit` (503 with ``Retry-After`` if refused),
    :meth:`open_session`; :meth:`release` once the admitted socket is gone."""

    @property
    def accepting(self) -> bool:
        """False once the node drains or shuts down: refuse new connections."""

    @property
    def limits(self) -> TransportLimits: ...

    def admit(self, ip: str) -> int | None:
        """Admission control for a new connection from ``ip``. None: admitted, and the
        transport must :meth:`release` it when the socket is gone; otherwise the seconds
        for the refusal's ``Retry-After``."""

    def release(self, ip: str) -> None:
        """An admitted connection from ``ip`` ended."""

    def open_session(
        self,
        transport: ClientTransport,
        wire_format: WireFormat,
        headers: Mapping[str, str] | None = None,
    ) -> Session:
        """The handshake succeeded: a new session speaking ``wire_format`` over
        ``transport`` (awaiting the protocol's ``connect``). ``headers``: the upgrade
        request's, names in lower case (the backend hooks forward some of them)."""


class Flusher:
    """Coalesces writes: every connection that got data since the last flush is flushed
    once, with one ``write`` of everything queued for it, by a single scheduled callback.

    Adaptive delay: while flushing is cheap the flush runs on the next loop iteration
    (``call_soon``). When a flush is expensive (thousands of sockets), the next one is
    scheduled after a delay equal to the last flush's duration, capped at ``max_delay``
    seconds: publications that arrive meanwhile (one by one from a broker, or from
    separate API requests) join the same tick batches, so a burst costs one write per
    socket instead of one per publication, at a latency cost bounded by ``max_delay`` and
    by the flush time itself. ``max_delay = 0`` turns it off.
    """

    __slots__ = (
        "_call_later",
        "_call_soon",
        "_clock",
        "_delay",
        "_dirty",
        "_scheduled",
        "_tick_end",
        "max_delay",
    )

    def __init__(
        self,
        call_soon: Callable[[Callable[[], None]], object],
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
        *,
        max_delay: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._dirty: list[Flushable] = []
        self._scheduled = False
        self._call_soon = call_soon
        self._call_later = call_later
        self._clock = clock
        self._delay = 0.0
        self.max_delay = max_delay if call_later is not None else 0.0
        self._tick_end: list[Callable[[], None]] = []

    def on_tick_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the start of every flush (the hub closes its tick batches)."""
        self._tick_end.append(callback)

    def mark(self, conn: Flushable) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            if self._delay > 0.0 and self._call_later is not None:
                self._call_later(self._delay, self._flush)
            else:
                self._call_soon(self._flush)

    def _flush(self) -> None:
        started = self._clock()
        self._scheduled = False
        for callback in self._tick_end:
            callback()
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
        if self.max_delay:
            cost = self._clock() - started
            # Below a millisecond the loop is not the bottleneck: keep latency minimal.
            self._delay = min(cost, self.max_delay) if cost > 0.001 else 0.0


class Cadence:
    """Runs ``callback`` on demand, at most once per ``interval`` seconds.

    The first :meth:`request` after a quiet interval runs it on the next loop iteration
    (leading edge: no added latency while traffic is light); requests made while it is
    scheduled, or within ``interval`` of the last run, are served by one run at the end of
    the interval (trailing edge). ``interval = 0``: every request runs it on the next
    iteration. The hub's ephemeral windows use it.
    """

    __slots__ = (
        "_call_later",
        "_call_soon",
        "_callback",
        "_clock",
        "_last",
        "_scheduled",
        "interval",
    )

    def __init__(
        self,
        callback: Callable[[], None],
        call_soon: Callable[[Callable[[], None]], object],
        call_later: Callable[[float, Callable[[], None]], object],
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._callback = callback
        self._call_soon = call_soon
        self._call_later = call_later
        self._clock = clock
        self.interval = interval
        self._last = float("-inf")
        self._scheduled = False

    def request(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        wait = self._last + self.interval - self._clock()
        if wait > 0:
            self._call_later(wait, self._run)
        else:
            self._call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._last = self._clock()
        self._callback()


class Flushable(Protocol):
    def flush(self) -> None: ...
