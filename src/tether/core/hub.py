"""Channel -> local subscribers, and the fan-out hot path.

A publication is encoded once and framed once per wire format (codec and framing) present
on its channel, and the same ``bytes`` object reaches every live subscriber of that format's
outbound queue, in the channel's lane, through a tick batch shared by all
of them (see :mod:`tether.core.outbound`): no await, no per-subscriber encoding, and per
subscriber one list append per tick however many publications the tick carried. Subscribers
that are still being set up (their subscribe reply not yet sent) are *pending*: they
collect ``(offset, frame)`` pairs instead, which :meth:`Hub.go_live` replays after the
reply, skipping every offset the reply already carried. That is how the recovery invariant
(no publication lost or duplicated between the history read and live delivery) is kept;
see docs/explanation/recovery.md.

The ephemeral lane (typing, cursors) goes through *windows* instead of tick batches: a
channel's ephemeral frames are collected, newest per coalescing key, until the node's
ephemeral cadence calls :meth:`Hub.flush_ephemeral` (at most once per ``ephemeral_window``;
the first frame after a quiet window goes out on the next loop iteration). A storm of
them then costs each subscriber one append and one write per window, not per event.

A channel's live subscribers are grouped by wire format into *audiences*; each audience
holds its own tick batch and ephemeral window. With one format (the common case) a
publication costs one more loop step than a flat member table, never anything per delivery.

Subscribers that negotiated delta compression (``delta: "fossil"``) form audiences of their
own, one per wire format. In a namespace with ``delta_publish``, a publication that follows
the channel's previous one without a gap goes to them as a fossil delta against it, built
once per publication and framed once per wire format; a member that has not had a
publication since it went live (after subscribe, resubscribe or recovery) gets the full
one instead, as does everyone after a gap. Those frames differ per member, so a delta
audience enqueues per member instead of sharing a tick batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

from tether.core.lanes import Lane
from tether.core.outbound import EphemeralBatch, QueueStats, Subscriber, TickBatch
from tether.core.transport import WireFormat
from tether.protocol.fossil import create_delta
from tether.protocol.messages import Publication, Push


class Member(Subscriber, Protocol):
    """A local subscriber as the hub sees it: the subscriber side of an outbound queue
    (:class:`~tether.core.outbound.Subscriber`), speaking one wire format."""

    @property
    def wire_format(self) -> WireFormat: ...


M = TypeVar("M", bound=Member)


class _Audience(dict[M, None]):
    """The live subscribers of one channel that speak one wire format (the keys, in the
    order they went live), and what they share right now: this tick's batch of frames and
    the open ephemeral window.

    A channel's audiences (one per wire format and delta; nearly always just one) are
    chained through ``next``, and the audience is itself the member table: a channel costs
    one dict and a few slots, as before there were encodings (an idle connection often
    has channels of its own, so this is per-connection memory)."""

    __slots__ = ("batch", "delta", "fresh", "next", "window", "wire_format")

    def __init__(self, wire_format: WireFormat, delta: bool = False) -> None:
        super().__init__()
        self.wire_format = wire_format
        self.delta = delta
        """Its members negotiated delta compression."""
        self.fresh: set[M] | None = set() if delta else None
        """Delta members that have had no publication since they went live: the next one
        they get is full (the SDK has no base to apply a delta to). None: not delta."""
        self.next: _Audience[M] | None = None
        """The channel's next audience (another wire format, or delta)."""
        self.batch: TickBatch | None = None
        """This tick's frames, one batch shared by every member (None: no open batch)."""
        self.window: dict[Hashable, bytes] | None = None
        """Coalescing key -> newest ephemeral frame of the open window (None: closed)."""


_AudienceKey = tuple[WireFormat, bool]
"""(wire format, delta negotiated)."""


class _PublicationFrames:
    """The frames of one publication for delta audiences, each built at most once: the
    fossil delta against the channel's previous publication (once for every wire format),
    and per wire format the delta frame and the full frame."""

    __slots__ = ("_channel", "_delta", "_deltas", "_fulls", "_previous", "_publication")

    def __init__(
        self, channel: str, publication: Publication, previous: Publication | None
    ) -> None:
        self._channel = channel
        self._publication = publication
        self._previous = previous
        self._delta: bytes | bool | None = False  # False: not computed yet
        self._fulls: dict[WireFormat, bytes] = {}
        self._deltas: dict[WireFormat, bytes | None] = {}

    def _patch(self) -> bytes | None:
        """The delta, or None when there is no base (first publication, a gap) or it
        would not be smaller than the data."""
        if self._delta is False:
            previous, publication = self._previous, self._publication
            patch = None
            contiguous = previous is not None and (
                publication.offset == 0 or publication.offset == previous.offset + 1
            )
            if previous is not None and contiguous:
                data = bytes(publication.data)
                patch = create_delta(bytes(previous.data), data)
                if len(patch) >= len(data):
                    patch = None
            self._delta = patch
        assert self._delta is not True
        return self._delta

    def full(self, wire_format: WireFormat) -> bytes:
        frame = self._fulls.get(wire_format)
        if frame is None:
            publication = wire_format.codec.delta_publication(self._publication, None)
            frame = self._fulls[wire_format] = wire_format.publication(self._channel, publication)
        return frame

    def delta(self, wire_format: WireFormat) -> bytes | None:
        if wire_format not in self._deltas:
            patch = self._patch()
            frame = None
            if patch is not None:
                publication = wire_format.codec.delta_publication(self._publication, patch)
                frame = wire_format.publication(self._channel, publication)
            self._deltas[wire_format] = frame
        return self._deltas[wire_format]


class Hub(Generic[M]):
    """Channel -> local subscribers (members of type ``M``), and the fan-out (see the
    module docstring). It calls nothing of a member but its queue's subscriber side and
    its wire format."""

    __slots__ = (
        "_batched",
        "_delta_live",
        "_live",
        "_pending",
        "_pending_delta",
        "_previous",
        "_request_ephemeral_flush",
        "_windowed",
        "lane_deliveries",
        "lane_publications",
        "stats",
    )

    def __init__(self, stats: QueueStats | None = None) -> None:
        self.stats = stats if stats is not None else QueueStats()
        """Shared with every client's queue (coalesced / dropped ephemeral frames)."""
        # channel -> its first audience (the others chained from it)
        self._live: dict[str, _Audience[M]] = {}
        self._pending: dict[str, dict[M, list[tuple[int, bytes, Hashable]]]] = {}
        self._pending_delta: dict[str, set[M]] = {}
        """Pending subscribers that negotiated delta (they buffer full delta-form frames)."""
        self._delta_live: dict[str, int] = {}
        """Channel -> its number of delta audiences (absent: none): a publication asks this
        dict once instead of walking the channel's audiences."""
        self._previous: dict[str, Publication] = {}
        """Channel -> its latest publication, kept while it has delta subscribers (live or
        pending): the base of the next delta."""
        self._batched: list[_Audience[M]] = []
        """Audiences with an open tick batch (closed by :meth:`end_tick`)."""
        self._windowed: list[_Audience[M]] = []
        """Audiences with an open ephemeral window (closed by :meth:`flush_ephemeral`)."""
        self._request_ephemeral_flush: Callable[[], object] = self.flush_ephemeral
        self.lane_publications = dict.fromkeys(Lane, 0)
        """Publications fanned out, per lane: one per publication, whatever the audience."""
        self.lane_deliveries = dict.fromkeys(Lane, 0)
        """Frames handed to live subscribers, per lane: added once per audience (or per
        ephemeral window), never counted one by one."""

    @property
    def publications(self) -> int:
        return sum(self.lane_publications.values())

    @property
    def deliveries(self) -> int:
        return sum(self.lane_deliveries.values())

    def use_ephemeral_cadence(self, request_flush: Callable[[], object]) -> None:
        """``request_flush()`` must lead to one :meth:`flush_ephemeral` call soon (the
        node's cadence). Until it is set, every ephemeral frame is flushed at once."""
        self._request_ephemeral_flush = request_flush

    # -- membership ------------------------------------------------------------------

    def has_local(self, channel: str) -> bool:
        return channel in self._live or channel in self._pending

    def add_pending(self, channel: str, client: M, *, delta: bool = False) -> bool:
        """Start buffering ``channel`` for ``client`` (in its ``wire_format``; ``delta``:
        it negotiated delta compression). True if it is the channel's first local
        subscriber (the node must then subscribe the broker)."""
        first = not self.has_local(channel)
        self._pending.setdefault(channel, {})[client] = []
        if delta:
            self._pending_delta.setdefault(channel, set()).add(client)
        return first

    def go_live(
        self, channel: str, client: M, *, after_offset: int, lane: Lane, delta: bool = False
    ) -> None:
        """Move ``client`` from pending to live, first enqueuing what was buffered with an
        offset above ``after_offset`` (publications of channels without history, offset 0,
        are all replayed)."""
        pending = self._pending.get(channel)
        buffered = pending.pop(client, []) if pending is not None else []
        if pending is not None and not pending:
            del self._pending[channel]
        self._forget_pending_delta(channel, client)
        wire_format = client.wire_format
        head = self._live.get(channel)
        audience = head
        while audience is not None and (
            audience.wire_format is not wire_format or audience.delta is not delta
        ):
            audience = audience.next
        if audience is None:
            audience = _Audience(wire_format, delta)
            audience.next = head
            self._live[channel] = audience
            if delta:
                self._delta_live[channel] = self._delta_live.get(channel, 0) + 1
        if audience.fresh is not None:
            audience.fresh.add(client)
        window = audience.window
        # Frames still in the open ephemeral window reach the client with the window.
        in_window = {id(f) for f in window.values()} if window else set()
        for offset, frame, key in buffered:
            if (offset == 0 or offset > after_offset) and id(frame) not in in_window:
                _enqueue(client, frame, lane, key)
        # The audience's current batch was attached before this client was live: later
        # frames of this tick go to a new batch that it shares too.
        audience.batch = None
        audience[client] = None

    def remove(self, channel: str, client: M) -> bool:
        """Forget ``client`` on ``channel``. True if no local subscriber is left."""
        previous: _Audience[M] | None = None
        audience = self._live.get(channel)
        while audience is not None:
            after = audience.next
            if client in audience:
                del audience[client]
                if audience.fresh is not None:
                    audience.fresh.discard(client)
                if not audience:  # unlink it
                    if audience.delta:
                        self._forget_delta_audience(channel)
                    if previous is not None:
                        previous.next = after
                    elif after is not None:
                        self._live[channel] = after
                    else:
                        del self._live[channel]
                    audience = after
                    continue
            previous = audience
            audience = after
        pending = self._pending.get(channel)
        if pending is not None and client in pending:
            del pending[client]
            if not pending:
                del self._pending[channel]
        self._forget_pending_delta(channel, client)
        if channel not in self._delta_live and channel not in self._pending_delta:
            self._previous.pop(channel, None)  # no delta subscriber left: no base to keep
        return not self.has_local(channel)

    def _forget_delta_audience(self, channel: str) -> None:
        left = self._delta_live[channel] - 1
        if left:
            self._delta_live[channel] = left
        else:
            del self._delta_live[channel]

    def _forget_pending_delta(self, channel: str, client: M) -> None:
        waiting = self._pending_delta.get(channel)
        if waiting is not None:
            waiting.discard(client)
            if not waiting:
                del self._pending_delta[channel]

    def channels(self) -> dict[str, int]:
        """Channel -> number of local subscribers (live and pending)."""
        out = {ch: sum(map(len, _chain(head))) for ch, head in self._live.items()}
        for ch, m in self._pending.items():
            out[ch] = out.get(ch, 0) + len(m)
        return out

    def subscribers(self, channel: str) -> list[M]:
        live = [c for audience in _chain(self._live.get(channel)) for c in audience]
        return [*live, *self._pending.get(channel, ())]

    # -- fan-out ---------------------------------------------------------------------

    def end_tick(self) -> None:
        """Close this tick's batches (the Flusher calls it before flushing): the next
        publication of a channel starts a new batch."""
        for audience in self._batched:
            audience.batch = None
        self._batched.clear()

    def broadcast_publication(
        self,
        channel: str,
        publication: Publication,
        lane: Lane,
        key: Hashable = None,
        *,
        delta: bool = False,
    ) -> None:
        """Deliver a publication to every local subscriber, in ``lane``. ``key`` coalesces
        ephemeral frames (None: this frame coalesces with nothing). ``delta``: it may go
        as a delta to the subscribers that negotiated one (the namespace's
        ``delta_publish``)."""
        self._broadcast(channel, publication, publication.offset, lane, key, delta)
        self.lane_publications[lane] += 1

    def broadcast_push(self, channel: str, push: Push, lane: Lane) -> None:
        """A push that is not a publication (join, leave): offset 0, never deduplicated."""
        self._broadcast(channel, push, 0, lane, None, False)

    def _broadcast(
        self,
        channel: str,
        message: Publication | Push,
        offset: int,
        lane: Lane,
        key: Hashable,
        delta: bool,
    ) -> None:
        """Frame ``message`` once per wire format present on ``channel``; deliver it to the
        live subscribers (tick batch or ephemeral window) and buffer it for the pending
        ones."""
        head = self._live.get(channel)
        pending = self._pending.get(channel)
        if head is None and pending is None:
            return
        # Pending subscribers reuse the live subscribers' frames (the same object: that
        # is how go_live recognises a frame still in an open window).
        built: dict[_AudienceKey, bytes] | None = {} if pending else None
        frames: _PublicationFrames | None = None
        if isinstance(message, Publication) and (
            channel in self._delta_live or channel in self._pending_delta
        ):
            previous = self._previous.get(channel) if delta else None
            frames = _PublicationFrames(channel, message, previous)
            self._previous[channel] = message
        if head is not None:
            for audience in _chain(head):
                wire_format = audience.wire_format
                if frames is not None and audience.delta:
                    self._deliver_delta(audience, frames, lane, key, built)
                    continue
                frame = _frame(wire_format, channel, message)
                if built is not None:
                    built[wire_format, audience.delta] = frame
                members = audience
                if audience.delta and not lane.coalesced:
                    # Its publications are enqueued per member: so are its other pushes,
                    # or a shared batch would carry them past publications of this tick.
                    self.lane_deliveries[lane] += len(members)
                    for client in members:
                        _enqueue(client, frame, lane, key)
                    continue
                if lane.coalesced:
                    self._add_to_window(audience, frame, key, len(members))
                    continue
                self.lane_deliveries[lane] += len(members)
                batch = audience.batch
                if batch is not None:
                    batch.frames.append(frame)  # every member already holds this batch
                    continue
                batch = audience.batch = TickBatch(frame)
                self._batched.append(audience)
                if lane.urgent:
                    for client in members:
                        client.attach_urgent(batch)
                else:
                    for client in members:
                        client.attach(batch)
        if pending and built is not None:
            waiting_delta = self._pending_delta.get(channel, ())
            for client, buffer in pending.items():
                wire_format = client.wire_format
                with_delta = frames is not None and client in waiting_delta
                frame = built.get((wire_format, with_delta)) or b""
                if not frame:
                    if with_delta and frames is not None:
                        frame = frames.full(wire_format)
                    else:
                        frame = _frame(wire_format, channel, message)
                    built[wire_format, with_delta] = frame
                buffer.append((offset, frame, key))

    def _deliver_delta(
        self,
        audience: _Audience[M],
        frames: _PublicationFrames,
        lane: Lane,
        key: Hashable,
        built: dict[_AudienceKey, bytes] | None,
    ) -> None:
        """A publication to a delta audience: the delta frame to members that have had
        the previous publication, the full one to fresh members (or to all, without a
        delta). The config keeps delta out of coalesced lanes."""
        wire_format = audience.wire_format
        full = frames.full(wire_format)
        if built is not None:
            built[wire_format, True] = full
        patch = frames.delta(wire_format)
        fresh = audience.fresh
        assert fresh is not None  # a delta audience
        self.lane_deliveries[lane] += len(audience)
        for client in audience:
            frame = full if patch is None or client in fresh else patch
            _enqueue(client, frame, lane, key)
        fresh.clear()

    def _add_to_window(
        self, audience: _Audience[M], frame: bytes, key: Hashable, subscribers: int
    ) -> None:
        opened = not self._windowed
        window = audience.window
        if window is None:
            window = audience.window = {}
            self._windowed.append(audience)
        if key is None:
            key = object()  # unique: coalesces with nothing
        elif window.pop(key, None) is not None:
            self.stats.ephemeral_coalesced += subscribers  # one frame fewer for each
        window[key] = frame
        if opened:
            self._request_ephemeral_flush()

    def flush_ephemeral(self) -> None:
        """Close every open ephemeral window: its frames (newest per key) go to the
        audience's live subscribers as one shared batch."""
        windowed, self._windowed = self._windowed, []
        for audience in windowed:
            window, audience.window = audience.window, None
            if not window or not audience:
                continue
            frames = list(window.values())
            batch = EphemeralBatch(list(window), frames, sum(map(len, frames)))
            self.lane_deliveries[Lane.EPHEMERAL] += len(frames) * len(audience)
            for client in audience:
                client.attach_ephemeral(batch)


def _chain(head: _Audience[M] | None) -> Iterator[_Audience[M]]:
    """A channel's audiences, from its first."""
    audience = head
    while audience is not None:
        yield audience
        audience = audience.next


def _frame(wire_format: WireFormat, channel: str, message: Publication | Push) -> bytes:
    codec = wire_format.codec
    if isinstance(message, Publication):
        return wire_format.frame(codec.encode_publication_push(channel, message))
    return wire_format.frame(codec.encode_push(message))


def _enqueue(client: Subscriber, frame: bytes, lane: Lane, key: Hashable) -> None:
    if lane.urgent:
        client.enqueue_urgent(frame)
    elif lane.coalesced:
        client.enqueue_ephemeral(frame, key if key is not None else object())
    else:
        client.enqueue(frame)
