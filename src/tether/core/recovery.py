"""Recovery: give a resubscribing client exactly what it missed, or tell it it cannot.

Rules (protocol v2, and docs/explanation/recovery.md):

* The client sends the last position it saw, ``(offset, epoch)``.
* If the stream still holds every publication after that offset in the same epoch, and
  there are at most ``cap`` of them, the client gets them and ``recovered: true``.
* Otherwise (trimmed, expired, another epoch, or too many missed) it gets no publications,
  ``recovered: false`` and the stream's current position: the loss is reported, never silent.
* A position past what survived a broker failover (:class:`FencedPosition`) gets
  ``recovered: false`` too, with every publication stored since the fence (at most
  ``cap``), so the client misses nothing that the stream still has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from tether.brokers.base import (
    Broker,
    FencedPosition,
    HistoryPage,
    StreamPosition,
    select_history,
)
from tether.core.flight import Flight
from tether.errors import BrokerUnavailable, UnrecoverablePosition
from tether.protocol.messages import Publication


class StreamReader(Protocol):
    """Where :func:`recover` reads a stream: the node's :class:`RecoveryCache`, or the
    broker itself (``tether.testing.BrokerStream``, which the recovery scenarios compare
    the cache with). ``size``/``ttl`` are the namespace's history options."""

    async def history(
        self, channel: str, *, size: int, ttl: float, since: StreamPosition, limit: int
    ) -> HistoryPage:
        """The broker's ``history(since=..., limit=...)``. Raises UnrecoverablePosition,
        BrokerUnavailable."""

    async def position(self, channel: str, *, size: int, ttl: float) -> StreamPosition:
        """The stream's top."""


async def recover(
    cache: StreamReader,
    channel: str,
    since: StreamPosition,
    *,
    cap: int,
    size: int,
    ttl: float,
) -> tuple[list[Publication], StreamPosition, bool]:
    """Returns ``(publications, top position, recovered)``. ``size``/``ttl`` are the
    namespace's history options."""
    try:
        page = await cache.history(channel, size=size, ttl=ttl, since=since, limit=cap + 1)
    except FencedPosition as fenced:
        try:
            page = await cache.history(
                channel, size=size, ttl=ttl, since=fenced.resume, limit=cap + 1
            )
        except UnrecoverablePosition:
            return [], await cache.position(channel, size=size, ttl=ttl), False
        if len(page.publications) > cap:
            return [], page.position, False
        return page.publications, page.position, False
    except UnrecoverablePosition:
        return [], await cache.position(channel, size=size, ttl=ttl), False
    if len(page.publications) > cap:
        return [], page.position, False
    return page.publications, page.position, True


class _Tail:
    __slots__ = ("epoch", "expire_at", "fence", "publications", "top", "ttl")

    def __init__(self, page: HistoryPage, size: int, ttl: float, now: float) -> None:
        self.epoch = page.position.epoch
        self.fence = page.fence
        self.top = page.position.offset
        self.publications: deque[Publication] = deque(page.publications, maxlen=size)
        self.ttl = ttl
        self.expire_at = now + ttl


class RecoveryCache:
    """The hot tail of the streams this node is subscribed to, for recovery storms.

    When 10,000 clients of one channel reconnect at once, the first recovery reads the
    stream from the broker and every other one waits for that read (single flight); later
    ones read the tail kept here, which live delivery keeps current (``on_publication``).
    A tail is only kept while the node is subscribed to the channel (so it hears every
    publication); any gap, epoch change, resync or history removal drops it.

    ``history`` has the broker's semantics, so :func:`recover` works on either.
    """

    def __init__(self, broker: Broker, clock: Callable[[], float]) -> None:
        self._broker = broker
        self._clock = clock
        self._tails: dict[str, _Tail] = {}
        self._loading: dict[str, Flight[BaseException | None]] = {}
        self._heard: dict[str, list[Publication]] = {}
        self.broker_reads = 0
        """Stream reads that reached the broker (the rest were served here)."""

    def on_publication(self, channel: str, publication: Publication) -> None:
        heard = self._heard.get(channel)
        if heard is not None:  # a load is in flight: replay these on its result
            heard.append(publication)
        tail = self._tails.get(channel)
        if tail is None or publication.offset == 0:
            return
        if publication.offset != tail.top + 1:
            del self._tails[channel]  # a gap or a new epoch: the tail no longer holds
            return
        tail.top = publication.offset
        tail.publications.append(publication)
        tail.expire_at = self._clock() + tail.ttl

    def drop(self, channel: str) -> None:
        """Forget the tail (no local subscriber left, broker resync, history removed)."""
        self._tails.pop(channel, None)

    async def _load(self, channel: str, size: int, ttl: float) -> None:
        """Load the tail, or wait for the load in flight (single flight). Raises
        BrokerUnavailable when the read failed: every waiter of that read gets the
        failure instead of reading the broker again, one by one, during an outage."""
        while (loading := self._loading.get(channel)) is not None:
            failure = await loading.wait()
            if failure is None:
                return
            if isinstance(failure, BrokerUnavailable):
                raise BrokerUnavailable(str(failure)) from failure
            # The recovery that was reading went away (cancelled): one of us reads again.
            if channel in self._tails:
                return  # another waiter already did
        flight: Flight[BaseException | None] = Flight()
        self._loading[channel] = flight
        self._heard[channel] = []
        failure = None
        try:
            self.broker_reads += 1
            page = await self._broker.history(channel, limit=-1)
            tail = _Tail(page, size, ttl, self._clock())
            for publication in self._heard[channel]:
                if publication.offset > tail.top:
                    if publication.offset != tail.top + 1:
                        return  # a gap: serve nothing from the cache
                    tail.top = publication.offset
                    tail.publications.append(publication)
            self._tails[channel] = tail
        except BaseException as exc:
            failure = exc
            raise
        finally:
            del self._loading[channel]
            del self._heard[channel]
            flight.finish(failure)

    async def position(self, channel: str, *, size: int, ttl: float) -> StreamPosition:
        """The stream's top (from the tail when there is one)."""
        tail = self._tails.get(channel)
        if tail is None:
            await self._load(channel, size, ttl)
            tail = self._tails.get(channel)
        if tail is not None:
            return StreamPosition(tail.top, tail.epoch)
        self.broker_reads += 1
        return (await self._broker.history(channel, limit=0)).position

    async def history(
        self, channel: str, *, size: int, ttl: float, since: StreamPosition, limit: int
    ) -> HistoryPage:
        """The publications after ``since`` (at most ``limit``) and the stream's top.
        Raises UnrecoverablePosition, BrokerUnavailable."""
        tail = self._tails.get(channel)
        if tail is None:
            await self._load(channel, size, ttl)
            tail = self._tails.get(channel)
            if tail is None:  # the load saw a gap: read straight from the broker
                self.broker_reads += 1
                return await self._broker.history(channel, since=since, limit=limit)
        if self._clock() >= tail.expire_at:
            tail.publications.clear()  # the broker expired them too (history_ttl)
        top = StreamPosition(tail.top, tail.epoch)
        return select_history(
            tail.publications, top, since=since, limit=limit, reverse=False, fence=tail.fence
        )
