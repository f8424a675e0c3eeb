"""Per-connection outbound queue: bounded, in lanes, flushed as one write per loop tick.

Every namespace belongs to a lane (``critical``, ``standard``, ``ephemeral``). On a
connection, each write sends, in this order:

1. *urgent* frames: replies, pings, pushes to this client, and the ``critical`` lane;
2. the ``standard`` lane;
3. the ``ephemeral`` lane (typing, cursors): at most one frame per coalescing key, the
   newest, so under pressure only the latest cursor position goes out.

So a chat message (critical) is never queued behind a typing indicator, and within one
channel order is kept (a channel has one lane).

Bounds: all lanes together hold at most ``max_bytes``; the ephemeral lane at most
``max_ephemeral_bytes``. When a frame does not fit, ephemeral frames are dropped first
(oldest first, counted); a critical or standard frame that still does not fit makes the
connection *slow*: it is closed with 3008 on the next tick (never inside fan-out) and
catches up through recovery. Nothing here ever awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from tether.core.transport import ClientTransport, Flusher


@dataclass(slots=True)
class QueueStats:
    """Node-wide counters (per publication or event, never per delivery on the hot path)."""

    ephemeral_dropped: int = 0
    ephemeral_coalesced: int = 0
    slow_disconnects: int = 0


@dataclass(slots=True)
class QueueLimits:
    """What every connection's queue on one node shares."""

    max_bytes: int
    max_ephemeral_bytes: int
    flusher: Flusher
    call_soon: Callable[[Callable[[], None]], object]
    stats: QueueStats = field(default_factory=QueueStats)


class OutboundQueue:
    """Base of :class:`~tether.core.client.Client`: the queue half of a connection.

    Subclasses provide ``transport`` (with ``write``) and :meth:`_on_slow`.
    """

    __slots__ = (
        "_bytes",
        "_dirty",
        "_eph",
        "_eph_bytes",
        "_limits",
        "_out",
        "_paused",
        "_stopped",
        "_urgent",
    )

    transport: ClientTransport

    def __init__(self, limits: QueueLimits) -> None:
        self._limits = limits
        self._out: list[bytes] = []
        self._urgent: list[bytes] | None = None
        self._eph: dict[Hashable, bytes] | None = None
        self._bytes = 0
        self._eph_bytes = 0
        self._dirty = False
        self._paused = False
        self._stopped = False

    # -- enqueue (never awaits) -------------------------------------------------------

    def enqueue(self, frame: bytes) -> None:
        """Queue a frame of the standard lane. The fan-out hot path: keep it lean."""
        if self._stopped:
            return
        size = self._bytes + len(frame)
        if size > self._limits.max_bytes and not self._make_room(len(frame)):
            return
        self._out.append(frame)
        self._bytes += len(frame)
        if not self._dirty and not self._paused:
            self._dirty = True
            self._limits.flusher.mark(self)

    def enqueue_urgent(self, frame: bytes) -> None:
        """Queue a frame that goes before every lane: replies, pings, critical lane."""
        if self._stopped:
            return
        if self._bytes + len(frame) > self._limits.max_bytes and not self._make_room(len(frame)):
            return
        if self._urgent is None:
            self._urgent = [frame]
        else:
            self._urgent.append(frame)
        self._bytes += len(frame)
        if not self._dirty and not self._paused:
            self._dirty = True
            self._limits.flusher.mark(self)

    def enqueue_ephemeral(self, frame: bytes, key: Hashable) -> None:
        """Queue an ephemeral frame; a queued frame with the same ``key`` is replaced
        (coalesced). Dropped (counted), never a reason to disconnect."""
        if self._stopped:
            return
        limits = self._limits
        eph = self._eph
        if eph is None:
            eph = self._eph = {}
        old = eph.pop(key, None)
        if old is not None:
            self._eph_bytes -= len(old)
            self._bytes -= len(old)
            limits.stats.ephemeral_coalesced += 1
        n = len(frame)
        while eph and (
            self._eph_bytes + n > limits.max_ephemeral_bytes or self._bytes + n > limits.max_bytes
        ):
            self._drop_oldest_ephemeral()
        if n > limits.max_ephemeral_bytes or self._bytes + n > limits.max_bytes:
            limits.stats.ephemeral_dropped += 1
            return
        eph[key] = frame
        self._eph_bytes += n
        self._bytes += n
        if not self._dirty and not self._paused:
            self._dirty = True
            limits.flusher.mark(self)

    def _drop_oldest_ephemeral(self) -> None:
        assert self._eph
        oldest = next(iter(self._eph))
        frame = self._eph.pop(oldest)
        self._eph_bytes -= len(frame)
        self._bytes -= len(frame)
        self._limits.stats.ephemeral_dropped += 1

    def _make_room(self, needed: int) -> bool:
        """Drop ephemeral frames until ``needed`` bytes fit; else mark the client slow."""
        while self._eph and self._bytes + needed > self._limits.max_bytes:
            self._drop_oldest_ephemeral()
        if self._bytes + needed <= self._limits.max_bytes:
            return True
        self._stopped = True
        self._limits.stats.slow_disconnects += 1
        self._limits.call_soon(self._on_slow)
        return False

    def _on_slow(self) -> None:
        raise NotImplementedError

    # -- flush ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything queued in one ``write`` (called once per tick by the Flusher)."""
        self._dirty = False
        if self._paused or not self._bytes:
            return
        out = self._out
        if self._urgent is not None or self._eph:
            parts = self._urgent or []
            parts.extend(out)
            if self._eph:
                parts.extend(self._eph.values())
                self._eph = None
                self._eph_bytes = 0
            out = parts
            self._urgent = None
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._out = []
        self._bytes = 0

    def pause_writing(self) -> None:
        """The socket's buffer is full: keep queueing (within the bounds) without writing."""
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._bytes and not self._dirty:
            self._dirty = True
            self._limits.flusher.mark(self)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def paused(self) -> bool:
        return self._paused

    def stop_queue(self) -> None:
        """Accept nothing more (the connection is closing)."""
        self._stopped = True
