"""Channel -> local subscribers, and the fan-out hot path.

A publication is encoded once, framed once, and the same ``bytes`` object reaches every
live subscriber's outbound queue, in the channel's lane, through a tick batch shared by all
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
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from tether.core.lanes import Lane
from tether.core.outbound import EphemeralBatch, QueueStats
from tether.protocol import codec
from tether.protocol.messages import Publication, Push

if TYPE_CHECKING:
    from tether.core.client import Client

Framer = Callable[[bytes], bytes]


class Hub:
    __slots__ = (
        "_batches",
        "_frame",
        "_live",
        "_pending",
        "_request_ephemeral_flush",
        "_windows",
        "deliveries",
        "publications",
        "stats",
    )

    def __init__(self, frame: Framer, stats: QueueStats | None = None) -> None:
        self._frame = frame
        self.stats = stats if stats is not None else QueueStats()
        """Shared with every client's queue (coalesced / dropped ephemeral frames)."""
        self._live: dict[str, dict[Client, None]] = {}
        self._pending: dict[str, dict[Client, list[tuple[int, bytes, Hashable]]]] = {}
        # channel -> this tick's batch of frames, shared by all its live subscribers
        self._batches: dict[str, list[bytes]] = {}
        # channel -> coalescing key -> newest ephemeral frame of the open window
        self._windows: dict[str, dict[Hashable, bytes]] = {}
        self._request_ephemeral_flush: Callable[[], object] = self.flush_ephemeral
        self.publications = 0
        self.deliveries = 0

    def use_ephemeral_cadence(self, request_flush: Callable[[], object]) -> None:
        """``request_flush()`` must lead to one :meth:`flush_ephemeral` call soon (the
        node's cadence). Until it is set, every ephemeral frame is flushed at once."""
        self._request_ephemeral_flush = request_flush

    # -- membership ------------------------------------------------------------------

    def has_local(self, channel: str) -> bool:
        return channel in self._live or channel in self._pending

    def add_pending(self, channel: str, client: Client) -> bool:
        """Start buffering ``channel`` for ``client``. True if it is the channel's first
        local subscriber (the node must then subscribe the broker)."""
        first = not self.has_local(channel)
        self._pending.setdefault(channel, {})[client] = []
        return first

    def go_live(self, channel: str, client: Client, *, after_offset: int, lane: Lane) -> None:
        """Move ``client`` from pending to live, first enqueuing what was buffered with an
        offset above ``after_offset`` (publications of channels without history, offset 0,
        are all replayed)."""
        pending = self._pending.get(channel)
        buffered = pending.pop(client, []) if pending is not None else []
        if pending is not None and not pending:
            del self._pending[channel]
        window = self._windows.get(channel)
        # Frames still in the open ephemeral window reach the client with the window.
        in_window = {id(f) for f in window.values()} if window else set()
        for offset, frame, key in buffered:
            if (offset == 0 or offset > after_offset) and id(frame) not in in_window:
                _enqueue(client, frame, lane, key)
        # The channel's current batch was attached before this client was live: later
        # frames of this tick go to a new batch that it shares too.
        self._batches.pop(channel, None)
        self._live.setdefault(channel, {})[client] = None

    def remove(self, channel: str, client: Client) -> bool:
        """Forget ``client`` on ``channel``. True if no local subscriber is left."""
        for table in (self._live, self._pending):
            members = table.get(channel)
            if members is not None and client in members:
                del members[client]
                if not members:
                    del table[channel]
        return not self.has_local(channel)

    def channels(self) -> dict[str, int]:
        """Channel -> number of local subscribers (live and pending)."""
        out = {ch: len(m) for ch, m in self._live.items()}
        for ch, m in self._pending.items():
            out[ch] = out.get(ch, 0) + len(m)
        return out

    def subscribers(self, channel: str) -> list[Client]:
        return [*self._live.get(channel, ()), *self._pending.get(channel, ())]

    # -- fan-out ---------------------------------------------------------------------

    def end_tick(self) -> None:
        """Close this tick's batches (the Flusher calls it before flushing): the next
        publication of a channel starts a new batch."""
        self._batches.clear()

    def broadcast_publication(
        self, channel: str, publication: Publication, lane: Lane, key: Hashable = None
    ) -> None:
        """Deliver a publication to every local subscriber, in ``lane``. ``key`` coalesces
        ephemeral frames (None: this frame coalesces with nothing)."""
        payload = codec.encode_publication_push(channel, publication)
        self._broadcast(channel, payload, publication.offset, lane, key)
        self.publications += 1

    def broadcast_push(self, channel: str, push: Push, lane: Lane) -> None:
        """A push that is not a publication (join, leave): offset 0, never deduplicated."""
        self._broadcast(channel, codec.encode_push(push), 0, lane, None)

    def _broadcast(
        self, channel: str, payload: bytes, offset: int, lane: Lane, key: Hashable
    ) -> None:
        live = self._live.get(channel)
        pending = self._pending.get(channel)
        if live is None and pending is None:
            return
        frame = self._frame(payload)
        if live:
            if lane.coalesced:
                self._add_to_window(channel, frame, key, len(live))
            else:
                self.deliveries += len(live)
                batch = self._batches.get(channel)
                if batch is not None:
                    batch.append(frame)  # every subscriber already holds this batch
                else:
                    batch = self._batches[channel] = [frame]
                    if lane.urgent:
                        for client in live:
                            client.attach_urgent(batch)
                    else:
                        for client in live:
                            client.attach(batch)
        if pending:
            entry = (offset, frame, key)
            for buffer in pending.values():
                buffer.append(entry)

    def _add_to_window(self, channel: str, frame: bytes, key: Hashable, subscribers: int) -> None:
        opened = not self._windows
        window = self._windows.get(channel)
        if window is None:
            window = self._windows[channel] = {}
        if key is None:
            key = object()  # unique: coalesces with nothing
        elif window.pop(key, None) is not None:
            self.stats.ephemeral_coalesced += subscribers  # one frame fewer for each
        window[key] = frame
        if opened:
            self._request_ephemeral_flush()

    def flush_ephemeral(self) -> None:
        """Close every open ephemeral window: its frames (newest per key) go to the
        channel's live subscribers as one shared batch."""
        windows, self._windows = self._windows, {}
        for channel, window in windows.items():
            live = self._live.get(channel)
            if not live:
                continue
            frames = list(window.values())
            batch = EphemeralBatch(list(window), frames, sum(map(len, frames)))
            self.deliveries += len(frames) * len(live)
            for client in live:
                client.attach_ephemeral(batch)


def _enqueue(client: Client, frame: bytes, lane: Lane, key: Hashable) -> None:
    if lane.urgent:
        client.enqueue_urgent(frame)
    elif lane.coalesced:
        client.enqueue_ephemeral(frame, key if key is not None else object())
    else:
        client.enqueue(frame)
