"""The embedded broker and presence store: one node, everything in this process.

A restart loses every stream; since each stream's epoch is drawn at random when the stream
is created, clients that come back after a restart see a new epoch and are told that they
could not recover (``recovered: false``), never silently given a gap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec

from tether.brokers.base import (
    BrokerEventHandler,
    HistoryPage,
    PublishOptions,
    PublishResult,
    StreamPosition,
    select_history,
)
from tether.protocol.messages import ClientInfo, Publication
from tether.randomness import random_hex

Clock = Callable[[], float]


class _Stream:
    __slots__ = ("epoch", "expire_at", "meta_expire_at", "offset", "publications")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.offset = 0
        self.publications: deque[Publication] | tuple[()] = ()
        """Oldest first. The shared empty tuple while there are none: most channels of an
        idle node (a user's personal channel) have a position but no history, and an empty
        deque would cost each of them 760 B."""
        self.expire_at = 0.0
        self.meta_expire_at = 0.0


class MemoryBroker:
    """In-process :class:`~tether.brokers.base.Broker`. ``clock`` is monotonic seconds."""

    def __init__(self, *, meta_ttl: float = 86400, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._meta_ttl = meta_ttl
        self._handler: BrokerEventHandler | None = None
        self._subscribed: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        # channel -> idempotency key -> (position, expires at)
        self._idempotency: dict[str, dict[str, tuple[StreamPosition, float]]] = {}

    @property
    def healthy(self) -> bool:
        return True

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    def _stream(self, channel: str, *, create: bool) -> _Stream | None:
        now = self._clock()
        stream = self._streams.get(channel)
        if stream is not None:
            if stream.meta_expire_at <= now:
                del self._streams[channel]
                stream = None
            elif stream.expire_at <= now:
                stream.publications = ()
        if stream is None and create:
            stream = self._streams[channel] = _Stream(random_hex(4))
            stream.expire_at = now
            stream.meta_expire_at = now + self._meta_ttl
        return stream

    def _dedup_lookup(self, channel: str, key: str) -> StreamPosition | None:
        keys = self._idempotency.get(channel)
        if not keys:
            return None
        hit = keys.get(key)
        if hit is None:
            return None
        if hit[1] <= self._clock():
            del keys[key]
            return None
        return hit[0]

    def _dedup_store(self, channel: str, key: str, pos: StreamPosition, ttl: float) -> None:
        keys = self._idempotency.setdefault(channel, {})
        now = self._clock()
        if len(keys) > 1024:  # sweep expired keys now and then, so the map stays bounded
            for k in [k for k, (_, exp) in keys.items() if exp <= now]:
                del keys[k]
        keys[key] = (pos, now + ttl)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        return self.publish_now(channel, publication, options)

    def publish_now(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        """The synchronous core of :meth:`publish` (the memory broker never blocks)."""
        if options.idempotency_key:
            seen = self._dedup_lookup(channel, options.idempotency_key)
            if seen is not None:
                return PublishResult(seen, duplicate=True)
        if options.history_size > 0:
            stream = self._stream(channel, create=True)
            assert stream is not None
            now = self._clock()
            stream.offset += 1
            publication.offset = stream.offset
            publications = stream.publications
            if not isinstance(publications, deque):
                publications = stream.publications = deque()
            publications.append(publication)
            while len(publications) > options.history_size:
                publications.popleft()
            stream.expire_at = now + options.history_ttl
            stream.meta_expire_at = now + max(self._meta_ttl, options.history_ttl)
            position = StreamPosition(stream.offset, stream.epoch)
        else:
            position = StreamPosition(0, "")
        if options.idempotency_key:
            self._dedup_store(channel, options.idempotency_key, position, options.idempotency_ttl)
        if self._handler is not None and channel in self._subscribed:
            if options.delta:  # the stream keeps the publication as it is
                publication = msgspec.structs.replace(publication, delta=True)
            self._handler.on_publication(channel, publication)
        return PublishResult(position, duplicate=False)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._subscribed:
            self._handler.on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._subscribed:
            self._handler.on_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        # Reading a stream creates it, so that a subscriber positioned on an empty channel
        # holds the epoch that its first publication will carry.
        stream = self._stream(channel, create=True)
        assert stream is not None
        top = StreamPosition(stream.offset, stream.epoch)
        return select_history(stream.publications, top, since=since, limit=limit, reverse=reverse)

    async def remove_history(self, channel: str) -> None:
        stream = self._stream(channel, create=False)
        if stream is not None:
            stream.publications = ()

    async def channels(self) -> set[str]:
        return set(self._subscribed)


class MemoryPresenceStore:
    """In-process :class:`~tether.brokers.base.PresenceStore` (entries never go stale:
    the owning node removes them when the client leaves)."""

    ttl: float | None = None

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, ClientInfo]] = {}

    async def add(self, channel: str, client_id: str, info: ClientInfo) -> None:
        self._channels.setdefault(channel, {})[client_id] = info

    async def remove(self, channel: str, client_id: str) -> None:
        entries = self._channels.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._channels[channel]

    async def get(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._channels.get(channel, {}))

    async def stats(self, channel: str) -> tuple[int, int]:
        entries = self._channels.get(channel, {})
        return len(entries), len({info.user for info in entries.values()})

    async def close(self) -> None:
        self._channels.clear()
