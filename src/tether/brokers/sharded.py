"""Channels spread over several independent brokers (Redis servers) by consistent hashing.

Every per-channel call goes to the one shard that owns the channel; a channel's stream,
idempotency keys, pub/sub fan-out and presence all live on that shard, so each shard keeps
the whole :class:`~tether.brokers.base.Broker` contract for its channels and the sharded
broker keeps it for all of them (the contract suite runs against two Redis shards).

Which shard owns a channel: a hash ring (:class:`HashRing`) of :data:`VIRTUAL_NODES`
points per shard, placed by the shard's *address* (:func:`shard_address`: host, port and
database, never credentials or TLS options), and the channel hashed with BLAKE2b onto it.
So:

* every node computes the same owner, whatever order its ``redis_urls`` list the shards in,
  and whatever process hash seed it runs with (Python's ``hash()`` is salted per process);
* adding a shard to N moves about 1/(N+1) of the channels, all of them to the new shard;
  removing one moves only that shard's channels.

Why our own ring rather than a library (``uhashring``, ``hashring``): the placement must
never change under us, because a channel that moves to another shard loses its stream (its
subscribers are told ``recovered: false``) and its idempotency keys. A ring we own is
~30 lines whose placement a golden test pins (``tests/unit/test_sharded_broker.py``,
``test_placement_of_channels_never_changes_between_releases``); a
dependency's upgrade could re-place every channel silently.

Health: :attr:`ShardedBroker.healthy` is true only while *every* shard is. The node's
readiness and the ``broker_healthy`` gauge keep their meaning ("this node can deliver
every channel"), and an outage of one shard is visible. The cost, documented in
``docs/howto/scale-out.md``: while one shard is down, every node reports not ready (all
nodes share the shards), although the channels of the other shards keep working for
connected clients.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TypeVar

from tether.brokers.addresses import shard_address
from tether.brokers.base import (
    Broker,
    BrokerEventHandler,
    HistoryPage,
    PresenceStore,
    PublishItem,
    PublishOptions,
    PublishResult,
    StreamPosition,
    publish_all,
)
from tether.protocol.messages import ClientInfo, Publication

__all__ = ["VIRTUAL_NODES", "HashRing", "ShardedBroker", "ShardedPresenceStore", "shard_address"]

VIRTUAL_NODES = 160
"""Points per shard on the ring (as ketama). Part of the placement: changing it moves
channels, so it is a constant, not an option."""

_T = TypeVar("_T")


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing of keys (channel names) onto shard names.

    The placement depends only on the set of names (not their order), the key, and
    :data:`VIRTUAL_NODES`."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        if not self.names:
            raise ValueError("a hash ring needs at least one shard")
        # Ties (two points with one hash) are broken by name, so every node agrees.
        points = sorted(
            (_point(f"{name}#{i}"), name) for name in self.names for i in range(VIRTUAL_NODES)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [name for _, name in points]

    def owner(self, key: str) -> str:
        """The shard of ``key``: the first point clockwise from the key's hash."""
        index = bisect.bisect_right(self._hashes, _point(key))
        return self._owners[index % len(self._owners)]


async def _all(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await every call concurrently and wait for all of them, even when one fails; then
    raise the first failure (a plain exception, as a single broker would raise it)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]  # no exceptions left in the list


class ShardedBroker:
    """:class:`~tether.brokers.base.Broker` over ``shards`` (shard name -> broker), each
    channel on the shard :class:`HashRing` picks. Same contract as one broker.

    Every node of a deployment must be given the same set of shard names, else nodes
    disagree on where a channel lives and subscribers silently miss publications."""

    def __init__(self, shards: Mapping[str, Broker]) -> None:
        self.shards = dict(shards)
        self.ring = HashRing(self.shards)

    def shard_of(self, channel: str) -> str:
        """Name of the shard that owns ``channel``."""
        return self.ring.owner(channel)

    def _broker(self, channel: str) -> Broker:
        return self.shards[self.ring.owner(channel)]

    @property
    def healthy(self) -> bool:
        """True while every shard is healthy (see the module docstring for why)."""
        return all(shard.healthy for shard in self.shards.values())

    async def start(self, handler: BrokerEventHandler) -> None:
        """Start every shard with ``handler``: a shard that reconnects resyncs its own
        channels through ``handler.on_resync``. If a start fails, the shards are closed."""
        try:
            await _all(shard.start(handler) for shard in self.shards.values())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await _all(shard.close() for shard in self.shards.values())

    async def subscribe(self, channel: str) -> None:
        await self._broker(channel).subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._broker(channel).unsubscribe(channel)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        return await self._broker(channel).publish(channel, publication, options)

    async def publish_many(self, items: Sequence[PublishItem]) -> list[PublishResult]:
        """In one batch when every channel is on one shard, else one by one (in order)."""
        shards = {id(self._broker(item.channel)): self._broker(item.channel) for item in items}
        if len(shards) == 1:
            [shard] = shards.values()
            return await publish_all(shard, items)
        return [await self.publish(*item) for item in items]

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._broker(channel).publish_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._broker(channel).publish_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        return await self._broker(channel).history(
            channel, since=since, limit=limit, reverse=reverse
        )

    async def remove_history(self, channel: str) -> None:
        await self._broker(channel).remove_history(channel)

    async def channels(self) -> set[str]:
        """The union over the shards. Raises ``BrokerUnavailable`` if any shard cannot
        answer (a partial list would be a silent lie)."""
        found: set[str] = set()
        for names in await _all(shard.channels() for shard in self.shards.values()):
            found |= names
        return found


class ShardedPresenceStore:
    """:class:`~tether.brokers.base.PresenceStore` over ``stores`` (shard name -> store),
    each channel's presence on the shard that owns the channel in :class:`ShardedBroker`
    (same names, same ring), so one shard's outage touches the same channels."""

    def __init__(self, stores: Mapping[str, PresenceStore]) -> None:
        self.stores = dict(stores)
        self.ring = HashRing(self.stores)
        ttls = {store.ttl for store in self.stores.values()}
        if len(ttls) != 1:
            raise ValueError(f"the shards' presence stores disagree on ttl: {ttls}")
        self.ttl: float | None = ttls.pop()

    def _store(self, channel: str) -> PresenceStore:
        return self.stores[self.ring.owner(channel)]

    async def add(self, channel: str, client_id: str, info: ClientInfo) -> None:
        await self._store(channel).add(channel, client_id, info)

    async def remove(self, channel: str, client_id: str) -> None:
        await self._store(channel).remove(channel, client_id)

    async def get(self, channel: str) -> dict[str, ClientInfo]:
        return await self._store(channel).get(channel)

    async def stats(self, channel: str) -> tuple[int, int]:
        return await self._store(channel).stats(channel)

    async def close(self) -> None:
        await _all(store.close() for store in self.stores.values())
