"""Per-connection outbound queue: bounded, in lanes, flushed as one write per loop tick.

Every namespace belongs to a lane (:mod:`tether.core.lanes` says what each means). On a
connection, each write sends, in this order:

1. *urgent* frames: replies, pings, pushes to this client, and the ``critical`` lane;
2. the ``standard`` lane;
3. the ``ephemeral`` lane (typing, cursors): at most one frame per coalescing key, the
   newest, so under pressure only the latest cursor position goes out.

So a chat message (critical) is never queued behind a typing indicator, and within one
channel order is kept (a channel has one lane). While the socket is full, urgent and
standard data are held separately, and the urgent data is written first when it drains.

Ephemeral windows. The hub collects a channel's ephemeral frames for up to
``ephemeral_window`` seconds, coalescing them by key, and attaches the result to every
subscriber as one shared :class:`EphemeralBatch` (:meth:`OutboundQueue.attach_ephemeral`):
a typing storm costs each connection one append and at most one write per window instead
of one per event, so it cannot take the loop from chat. Only a connection whose socket is
full folds batches into its own per-key table, where later frames keep replacing earlier
ones until it drains.

Tick batches (the fan-out hot path). During one loop tick the hub collects the frames of
a channel in one shared :class:`TickBatch` (per wire format) and attaches it once to each
subscriber's queue (:meth:`OutboundQueue.attach`); later publications of the same channel
in the same tick only append to it. At the flush the batch's frames are joined once and
the same ``bytes`` go to every subscriber's ``write``: per subscriber a tick costs one
append and one write, however many publications it carried, and no copy of its own.

Each publication stays its own WebSocket message. Joining a tick's pushes into one message
(the codec's ``join``) would let a client parse fewer frames, but the JS SDK (centrifuge
5.x) starts dispatching the next message before it has finished the replies of a
multi-reply one, so a batched message followed closely by another is delivered out of
order (measured in tests/integration/test_js_sdk.py before this was decided).

Bounds. While the socket is paused (its buffer is full: the client is not keeping up),
what is queued is held back, and at every flush :class:`OverflowPolicy` decides what a
queue over its bound does: drop ephemeral frames, shed the standard lane, or cut the
connection as slow (it is the one place that says so). While the socket is writable, each
tick's data goes straight to it; the socket pauses once its own buffer passes asyncio's
high-water mark. The connection the queue belongs to is its :class:`QueueOwner`: it says
whether its standard lane can be recovered, resubscribes it after a shed, and closes
itself when slow, always on a later tick, never inside fan-out.

Nothing here ever awaits.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from tether.core.transport import ClientTransport, Flusher


class TickBatch:
    """One channel's frames of one loop tick in one wire format, shared by all its
    subscribers. :attr:`data` joins them once (again only if more were appended since)."""

    __slots__ = ("_built", "_data", "frames")

    def __init__(self, frame: bytes) -> None:
        self.frames = [frame]
        self._data = b""
        self._built = 0

    @property
    def data(self) -> bytes:
        """The batch's frames as one ``bytes``: what every subscriber's ``write`` gets."""
        frames = self.frames
        if self._built != len(frames):
            self._data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._built = len(frames)
        return self._data


Item = bytes | TickBatch
"""A queued frame, or a tick batch of one channel shared with other clients."""


@dataclass(slots=True, frozen=True)
class EphemeralBatch:
    """One ephemeral window of one channel: the newest frame per coalescing key, in
    publication order, shared by every subscriber of the channel."""

    keys: list[Hashable]
    frames: list[bytes]
    size: int
    """Total bytes of ``frames``."""


@dataclass(slots=True)
class QueueStats:
    """Node-wide counters (per publication or event, never per delivery on the hot path)."""

    ephemeral_dropped: int = 0
    ephemeral_coalesced: int = 0
    slow_disconnects: int = 0
    standard_shed_bytes: int = 0
    standard_resubscribes: int = 0


class Subscriber(Protocol):
    """The side of an outbound queue that fan-out uses (the hub): append, never wait.
    :class:`OutboundQueue` is the implementation."""

    def attach(self, batch: TickBatch) -> None: ...

    def attach_urgent(self, batch: TickBatch) -> None: ...

    def attach_ephemeral(self, batch: EphemeralBatch) -> None: ...

    def enqueue(self, frame: bytes) -> None: ...

    def enqueue_urgent(self, frame: bytes) -> None: ...

    def enqueue_ephemeral(self, frame: bytes, key: Hashable) -> None: ...


class QueueOwner(Protocol):
    """The connection a queue belongs to, as the overflow rule sees it."""

    def can_recover_standard(self) -> bool:
        """Could this connection's standard lane be dropped and then recovered by
        resubscribing, and is there something to keep by doing so? (The lane rule:
        :func:`tether.core.lanes.may_shed_standard`.)"""
        ...

    def resubscribe_standard(self) -> None:
        """Called on the tick after a shed: resubscribe the standard-lane channels from
        their positions, then :meth:`OutboundQueue.end_shedding`; or close the connection
        if one of them can no longer be recovered."""
        ...

    def close_slow(self) -> None:
        """Called on the tick after the queue gave up: close the connection with 3008."""
        ...


class Overflow(enum.Enum):
    """What a queue over its bound does once its ephemeral frames are dropped."""

    SHED_STANDARD = "shed standard"
    """Drop the queued standard-lane data; its channels resubscribe and recover it."""
    SLOW = "slow"
    """Accept nothing more; the connection is closed with 3008 and recovers on reconnect."""


@dataclass(slots=True, frozen=True)
class OverflowPolicy:
    """The overflow rule: what a connection's queue does when the client cannot keep up.

    It applies while the socket is paused, at every flush, to what is held back for the
    connection plus this tick's frames:

    1. the ephemeral lane holds at most ``max_ephemeral_bytes`` (oldest dropped first), and
       ephemeral frames are dropped, oldest first, while the total is over ``max_bytes``
       (counted; an ephemeral frame never makes a connection slow);
    2. if it is still over ``max_bytes``, the *standard lane is shed* when the critical
       data fits alone, the connection has not shed within ``shed_interval`` seconds (one
       that overflows again cannot keep up), and its owner can recover the standard lane
       (:meth:`QueueOwner.can_recover_standard`): so a flood in a feed cannot cut a chat;
    3. otherwise the connection is *slow*.
    """

    max_bytes: int
    max_ephemeral_bytes: int
    shed_interval: float = 60.0
    clock: Callable[[], float] = time.monotonic

    def over_bound(self, held: int) -> bool:
        return held > self.max_bytes

    def decide(self, *, urgent: int, last_shed: float | None, owner: QueueOwner) -> Overflow:
        """Step 2 or 3 for a queue still over its bound with ``urgent`` bytes of critical
        data (replies, pings, critical lane) held, which last shed at ``last_shed``."""
        if urgent > self.max_bytes:
            return Overflow.SLOW  # shedding the standard lane would not be enough
        if last_shed is not None and self.clock() - last_shed < self.shed_interval:
            return Overflow.SLOW  # it shed a moment ago and overflows again: it is slow
        return Overflow.SHED_STANDARD if owner.can_recover_standard() else Overflow.SLOW


@dataclass(slots=True)
class QueueLimits:
    """What every connection's queue on one node shares."""

    policy: OverflowPolicy
    flusher: Flusher
    call_soon: Callable[[Callable[[], None]], object]
    stats: QueueStats = field(default_factory=QueueStats)


def _append(chunks: list[bytes] | None, chunk: bytes) -> list[bytes]:
    if chunks is None:
        return [chunk]
    chunks.append(chunk)
    return chunks


def _flatten(items: list[Item], into: list[bytes]) -> None:
    for item in items:
        into.append(item if isinstance(item, bytes) else item.data)


class OutboundQueue:
    """Base of :class:`~tether.core.client.Client`: the queue half of a connection. What
    it does over its bound is :class:`OverflowPolicy`'s decision (``limits.policy``), and
    what that asks of the connection goes to ``owner``."""

    __slots__ = (
        "_dirty",
        "_eph",
        "_eph_batches",
        "_eph_bytes",
        "_held_bytes",
        "_held_standard",
        "_held_standard_bytes",
        "_held_urgent",
        "_limits",
        "_out",
        "_owner",
        "_paused",
        "_shed_at",
        "_shedding",
        "_stopped",
        "_urgent",
        "transport",
    )

    def __init__(self, limits: QueueLimits, transport: ClientTransport, owner: QueueOwner) -> None:
        self._limits = limits
        self.transport = transport
        self._owner = owner
        self._out: list[Item] = []
        self._urgent: list[Item] | None = None
        self._eph: dict[Hashable, bytes] | None = None
        self._eph_batches: list[EphemeralBatch] | None = None
        self._eph_bytes = 0
        # Held back while the socket is paused, per lane group: written urgent first.
        self._held_urgent: list[bytes] | None = None
        self._held_standard: list[bytes] | None = None
        self._held_bytes = 0
        """Both held lists together."""
        self._held_standard_bytes = 0
        self._shedding = False
        self._shed_at: float | None = None
        self._dirty = False
        self._paused = False
        self._stopped = False

    def _mark(self) -> None:
        if not self._dirty:
            self._dirty = True
            self._limits.flusher.mark(self)

    # -- enqueue (never awaits) -------------------------------------------------------

    def attach(self, batch: TickBatch) -> None:
        """Share a standard-lane tick batch: the hub keeps appending this tick's frames
        of the channel to ``batch``. The fan-out hot path: one call per subscriber per tick.
        Dropped while the standard lane is being shed (its channels are resubscribing)."""
        if not (self._stopped or self._shedding):
            self._out.append(batch)
            if not self._dirty:
                self._dirty = True
                self._limits.flusher.mark(self)

    def attach_urgent(self, batch: TickBatch) -> None:
        """Share a critical-lane tick batch (goes before every other lane)."""
        if not self._stopped:
            if self._urgent is None:
                self._urgent = [batch]
            else:
                self._urgent.append(batch)
            self._mark()

    def enqueue(self, frame: bytes) -> None:
        """Queue one frame of the standard lane."""
        if not self._stopped:
            self._out.append(frame)
            self._mark()

    def enqueue_urgent(self, frame: bytes) -> None:
        """Queue a frame that goes before every lane: replies, pings, critical lane."""
        if not self._stopped:
            if self._urgent is None:
                self._urgent = [frame]
            else:
                self._urgent.append(frame)
            self._mark()

    def attach_ephemeral(self, batch: EphemeralBatch) -> None:
        """Share an ephemeral window's batch (the hub's fan-out of the ephemeral lane).
        While the socket is full, or over the lane's bound, its frames are folded into this
        connection's per-key table instead (coalesced, oldest dropped)."""
        if self._stopped:
            return
        if self._paused or self._eph_bytes + batch.size > self._limits.policy.max_ephemeral_bytes:
            self._fold_ephemeral()
            for key, frame in zip(batch.keys, batch.frames, strict=True):
                self.enqueue_ephemeral(frame, key)
            return
        if self._eph_batches is None:
            self._eph_batches = [batch]
        else:
            self._eph_batches.append(batch)
        self._eph_bytes += batch.size
        self._mark()

    def enqueue_ephemeral(self, frame: bytes, key: Hashable) -> None:
        """Queue an ephemeral frame; a queued frame with the same ``key`` is replaced
        (coalesced). Dropped (counted), never a reason to disconnect."""
        if self._stopped:
            return
        if self._eph_batches is not None:
            self._fold_ephemeral()
        limits = self._limits
        max_ephemeral_bytes = limits.policy.max_ephemeral_bytes
        eph = self._eph
        if eph is None:
            eph = self._eph = {}
        old = eph.pop(key, None)
        if old is not None:
            self._eph_bytes -= len(old)
            limits.stats.ephemeral_coalesced += 1
        n = len(frame)
        while eph and self._eph_bytes + n > max_ephemeral_bytes:
            self._drop_oldest_ephemeral()
        if n > max_ephemeral_bytes:
            limits.stats.ephemeral_dropped += 1
            return
        eph[key] = frame
        self._eph_bytes += n
        self._mark()

    def _fold_ephemeral(self) -> None:
        """Move attached batches into the per-key table, in order (newer replace older)."""
        batches, self._eph_batches = self._eph_batches, None
        if not batches:
            return
        eph = self._eph
        if eph is None:
            eph = self._eph = {}
        coalesced = 0
        for batch in batches:
            self._eph_bytes -= batch.size
            for key, frame in zip(batch.keys, batch.frames, strict=True):
                old = eph.pop(key, None)
                if old is not None:
                    self._eph_bytes -= len(old)
                    coalesced += 1
                eph[key] = frame
                self._eph_bytes += len(frame)
        self._limits.stats.ephemeral_coalesced += coalesced

    def _drop_oldest_ephemeral(self) -> None:
        assert self._eph
        frame = self._eph.pop(next(iter(self._eph)))
        self._eph_bytes -= len(frame)
        self._limits.stats.ephemeral_dropped += 1

    # -- flush ------------------------------------------------------------------------

    def flush(self, *, force: bool = False) -> None:
        """Write everything queued in one ``write`` (called once per tick by the Flusher).

        While the socket is writable, everything queued goes out in one ``write``. While
        it is paused (its buffer is full: the client is not keeping up), what is queued
        is held instead, within the bounds of :class:`OverflowPolicy`. ``force`` writes
        anyway (a closing connection hands its last data to the socket)."""
        self._dirty = False
        if self._stopped:
            return
        out = self._out
        if (
            len(out) == 1
            and self._urgent is None
            and not self._held_bytes
            and not self._eph_bytes
            and not self._paused
        ):
            # The fan-out fast path: one tick batch (or frame) and nothing else queued.
            item = out[0]
            self._out = []
            self.transport.write(item if isinstance(item, bytes) else item.data)
            return
        parts: list[bytes] = []
        if self._urgent is not None:
            _flatten(self._urgent, parts)
            self._urgent = None
        urgent = b"".join(parts)
        parts = []
        if out:
            _flatten(out, parts)
            self._out = []
        standard = b"".join(parts)
        if self._paused and not force:
            self._hold(urgent, standard)
            return
        if self._eph_batches is not None and self._eph:
            self._fold_ephemeral()  # one frame per key
        chunks = self._held_urgent or []
        if urgent:
            chunks.append(urgent)
        if self._held_standard:
            chunks.extend(self._held_standard)
        if standard:
            chunks.append(standard)
        self._held_urgent = self._held_standard = None
        self._held_bytes = self._held_standard_bytes = 0
        if self._eph:
            chunks.extend(self._eph.values())
            self._eph = None
        if self._eph_batches is not None:
            for batch in self._eph_batches:
                chunks.extend(batch.frames)
            self._eph_batches = None
        self._eph_bytes = 0
        if chunks:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _hold(self, urgent: bytes, standard: bytes) -> None:
        """The socket is paused: keep this tick's data within the bounds, as
        :class:`OverflowPolicy` says (ephemeral first, then shed standard, else slow)."""
        limits = self._limits
        policy = limits.policy
        total = self._held_bytes + len(urgent) + len(standard)
        if self._eph_batches is not None:
            self._fold_ephemeral()  # coalesce by key while waiting
        while self._eph and policy.over_bound(total + self._eph_bytes):
            self._drop_oldest_ephemeral()
        if policy.over_bound(total):
            held_urgent = total - self._held_standard_bytes - len(standard)
            decision = policy.decide(urgent=held_urgent, last_shed=self._shed_at, owner=self._owner)
            if decision is Overflow.SLOW:
                self._stopped = True
                self._held_urgent = self._held_standard = None
                limits.stats.slow_disconnects += 1
                limits.call_soon(self._owner.close_slow)
                return
            limits.stats.standard_shed_bytes += len(standard)
            standard = b""
            self.shed_standard()
        if urgent:
            self._held_urgent = _append(self._held_urgent, urgent)
            self._held_bytes += len(urgent)
        if standard:
            self._held_standard = _append(self._held_standard, standard)
            self._held_bytes += len(standard)
            self._held_standard_bytes += len(standard)

    def shed_standard(self) -> None:
        """Drop the standard-lane data queued for this connection and refuse the lane's
        tick batches until :meth:`end_shedding`; on the next tick the owner resubscribes
        its standard channels (:meth:`QueueOwner.resubscribe_standard`), which recover
        what was dropped. The critical lane and the connection stay up. This is what the
        overflow rule does to a queue over its bound that may shed (counted in
        ``stats``); it may be called at any time."""
        if self._stopped:
            return
        limits = self._limits
        dropped: list[bytes] = []
        _flatten(self._out, dropped)
        self._out = []
        limits.stats.standard_shed_bytes += self._held_standard_bytes + sum(map(len, dropped))
        self._held_bytes -= self._held_standard_bytes
        self._held_standard = None
        self._held_standard_bytes = 0
        self._shed_at = limits.policy.clock()
        if not self._shedding:
            self._shedding = True
            limits.call_soon(self._owner.resubscribe_standard)

    def end_shedding(self) -> None:
        """The shed standard channels are resubscribing: accept standard frames again."""
        self._shedding = False

    @property
    def shedding(self) -> bool:
        """The standard lane was shed and its channels have not resubscribed yet."""
        return self._shedding

    @property
    def stats(self) -> QueueStats:
        """The node-wide counters this queue adds to (drops, coalescing, sheds, cuts)."""
        return self._limits.stats

    def pause_writing(self) -> None:
        """The socket's buffer is full: keep queueing (within the bounds) without writing."""
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._held_bytes or self._eph_bytes:
            self._mark()

    @property
    def queued_bytes(self) -> int:
        """Bytes held back while the socket is paused (plus queued ephemeral frames)."""
        return self._held_bytes + self._eph_bytes

    @property
    def paused(self) -> bool:
        return self._paused

    def stop_queue(self) -> None:
        """Accept nothing more (the connection is closing)."""
        self._stopped = True
