"""Channels sharded over several real redis-servers keep the Broker/PresenceStore contract;
each channel lives on the one shard the hash ring names, whichever node asks; a shard's
outage touches only its own channels; adding a shard moves few channels, and a moved
channel's subscribers are told of the loss, never silently given a gap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from sdk_kit import SdkClients, subscribe

from tether.brokers.base import Broker, PresenceStore, PublishOptions, StreamPosition
from tether.brokers.redis import RedisBroker, RedisPresenceStore
from tether.brokers.sharded import HashRing, ShardedBroker, ShardedPresenceStore, shard_address
from tether.errors import UnrecoverablePosition
from tether.testing.broker_contract import (
    BrokerContract,
    Failover,
    RecordingHandler,
    publication,
)
from tether.testing.clock import FakeClock
from tether.testing.servers import make_config, running_server
from tether_bench.failover import RelayedFailover, ReplicatedRedis
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shard_servers() -> Iterator[list[RedisServer]]:
    """Three redis-servers of this module (the sharded brokers use the first two unless a
    test says otherwise); tests keep apart by key prefix and never kill them."""
    servers = [RedisServer() for _ in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _sharded(
    urls: Sequence[str],
    prefix: str,
    *,
    meta_ttl: float = 60,
    command_timeout: float = 2.0,
    connect_timeout: float = 1.0,
) -> ShardedBroker:
    return ShardedBroker(
        {
            shard_address(url): RedisBroker(
                url,
                prefix=prefix,
                meta_ttl=meta_ttl,
                command_timeout=command_timeout,
                connect_timeout=connect_timeout,
            )
            for url in urls
        }
    )


class TestShardedRedisBroker(BrokerContract):
    # Redis expires keys on its own clock: the suite sleeps through real, short TTLs
    # (as in test_redis_broker.py).
    history_ttl = 1.0
    idempotency_ttl = 1.0
    meta_ttl = 2.0
    margin = 0.4

    @pytest.fixture(autouse=True)
    def _shards(self, shard_servers: list[RedisServer]) -> None:
        self.urls = [server.url for server in shard_servers[:2]]
        self.prefix = _prefix()

    async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
        return _sharded(self.urls, self.prefix, meta_ttl=meta_ttl)

    async def create_presence_store(self) -> PresenceStore:
        return ShardedPresenceStore(
            {
                shard_address(url): RedisPresenceStore(url, prefix=self.prefix, ttl=60)
                for url in self.urls
            }
        )

    @asynccontextmanager
    async def failover(self, handler: RecordingHandler) -> AsyncIterator[Failover]:
        async with ReplicatedRedis() as one, ReplicatedRedis() as two:
            broker = _sharded([one.url, two.url], self.prefix, meta_ttl=60,
                              command_timeout=1.0, connect_timeout=0.5)  # fmt: skip
            await broker.start(handler)
            try:
                yield RelayedFailover(broker, [one, two], handler)
            finally:
                await broker.close()

    async def elapse(self, clock: FakeClock, seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(seconds)

    async def settle(self) -> None:
        await asyncio.sleep(0.1)


# -- where channels live ----------------------------------------------------------------------


@pytest.fixture
def channels() -> Callable[[int], list[str]]:
    run = uuid.uuid4().hex[:12]
    return lambda count: [f"sharded-{run}-{i}" for i in range(count)]


@pytest.fixture
async def clients(shard_servers: list[RedisServer]) -> AsyncIterator[dict[str, Redis]]:
    """Plain Redis clients of the shards, by shard address, to look at the keys."""
    by_address = {shard_address(s.url): Redis.from_url(s.url) for s in shard_servers}
    try:
        yield by_address
    finally:
        for client in by_address.values():
            await client.aclose()


async def _started(broker: ShardedBroker, handler: RecordingHandler | None = None) -> None:
    await broker.start(handler or RecordingHandler())


async def test_channels_spread_over_both_shards_each_stored_only_on_the_shard_the_ring_names(
    shard_servers: list[RedisServer],
    clients: dict[str, Redis],
    channels: Callable[[int], list[str]],
) -> None:
    prefix, names = _prefix(), channels(40)
    broker = _sharded([s.url for s in shard_servers[:2]], prefix)
    await _started(broker)
    try:
        for ch in names:
            await broker.publish(ch, publication(ch), _options())
        owners = {ch: broker.shard_of(ch) for ch in names}
        for address in broker.shards:
            stored = {
                ch for ch in names if await clients[address].exists(f"{prefix}.meta.{{{ch}}}")
            }
            assert stored == {ch for ch, owner in owners.items() if owner == address}
            assert len(stored) >= 8  # both shards take a fair share of 40 channels
    finally:
        await broker.close()


async def test_every_node_finds_a_channel_on_the_same_shard_whatever_order_it_lists_them(
    shard_servers: list[RedisServer], channels: Callable[[int], list[str]]
) -> None:
    prefix, names = _prefix(), channels(20)
    urls = [s.url for s in shard_servers[:2]]
    a, b = _sharded(urls, prefix), _sharded(list(reversed(urls)), prefix)
    await _started(a)
    await _started(b)
    try:
        published = {ch: await a.publish(ch, publication(ch), _options()) for ch in names}
        for ch in names:
            assert b.shard_of(ch) == a.shard_of(ch)
            page = await b.history(ch, limit=-1)
            assert page.position == published[ch].position
    finally:
        await a.close()
        await b.close()


async def test_a_node_receives_what_another_node_publishes_on_channels_of_every_shard(
    shard_servers: list[RedisServer], channels: Callable[[int], list[str]]
) -> None:
    prefix, names = _prefix(), channels(10)
    urls = [s.url for s in shard_servers[:2]]
    handler = RecordingHandler()
    subscriber, publisher = _sharded(urls, prefix), _sharded(urls, prefix)
    await _started(subscriber, handler)
    await _started(publisher)
    try:
        assert len({subscriber.shard_of(ch) for ch in names}) == 2
        for ch in names:
            await subscriber.subscribe(ch)
        for i in range(3):
            for ch in names:
                await publisher.publish(ch, publication(i), _options())
        async with asyncio.timeout(5):
            await handler.wait_until(lambda: all(len(handler.offsets(c)) >= 3 for c in names))
        assert {ch: handler.offsets(ch) for ch in names} == {ch: [1, 2, 3] for ch in names}
        assert await publisher.channels() >= set(names)
    finally:
        await subscriber.close()
        await publisher.close()


async def test_adding_a_shard_keeps_most_streams_and_a_moved_stream_reports_its_loss(
    shard_servers: list[RedisServer], channels: Callable[[int], list[str]]
) -> None:
    prefix, names = _prefix(), channels(60)
    urls = [s.url for s in shard_servers]
    two, three = _sharded(urls[:2], prefix), _sharded(urls, prefix)
    await _started(two)
    await _started(three)
    try:
        positions = {
            ch: (await two.publish(ch, publication(ch), _options())).position for ch in names
        }
        moved = {ch for ch in names if three.shard_of(ch) != two.shard_of(ch)}
        assert 0 < len(moved) <= len(names) // 2
        assert {three.shard_of(ch) for ch in moved} == {shard_address(urls[2])}
        for ch in names:
            if ch in moved:
                # The new shard has no stream for it: the old position is in another
                # epoch, so a recovering subscriber gets recovered: false, not a gap.
                with pytest.raises(UnrecoverablePosition):
                    await three.history(ch, since=positions[ch], limit=-1)
            else:
                start = StreamPosition(0, positions[ch].epoch)
                page = await three.history(ch, since=start, limit=-1)
                assert [p.offset for p in page.publications] == [1]
    finally:
        await two.close()
        await three.close()


async def test_a_client_on_one_node_gets_what_another_node_publishes_on_every_shard(
    sdk: SdkClients, shard_servers: list[RedisServer]
) -> None:
    urls = [s.url for s in shard_servers[:2]]
    config = make_config(broker="redis", redis_urls=urls, redis_prefix=_prefix())
    ring, run = HashRing(shard_address(url) for url in urls), uuid.uuid4().hex[:8]
    one_per_shard: dict[str, str] = {}
    for ch in (f"chat:{run}-{i}" for i in range(50)):
        one_per_shard.setdefault(ring.owner(ch), ch)
    chosen = sorted(one_per_shard.values())
    async with running_server(config) as a, running_server(config) as b:
        assert isinstance(a.node.broker, ShardedBroker)
        client, _ = await sdk.connect(a.port, "alice")
        subscriptions = [await subscribe(client, ch) for ch in chosen]
        for ch in chosen:
            await b.node.publish(ch, b'{"on":"%s"}' % ch.encode())
        for ch, (_, events, _) in zip(chosen, subscriptions, strict=True):
            [delivered] = await events.next_publications(1)
            assert (delivered.data, delivered.offset) == ({"on": ch}, 1)
        await client.disconnect()
    assert len(chosen) == 2


# -- one shard's outage --------------------------------------------------------------------------


@pytest.fixture
async def own_shards() -> AsyncIterator[list[RedisServer]]:
    """Two redis-servers this test alone uses, so that it may kill them."""
    servers = [RedisServer(), RedisServer()]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        yield servers
    finally:
        for server in servers:
            await asyncio.to_thread(server.kill)


async def test_while_one_shard_is_down_the_broker_is_unhealthy_and_the_other_shard_delivers(
    own_shards: list[RedisServer], channels: Callable[[int], list[str]]
) -> None:
    prefix = _prefix()
    handler = RecordingHandler()
    broker = _sharded([s.url for s in own_shards], prefix, command_timeout=1.0, connect_timeout=0.5)
    await _started(broker, handler)
    down = own_shards[0]
    on_down, on_up = _one_channel_on_each(broker, channels(50), shard_address(down.url))
    try:
        await broker.subscribe(on_down)
        await broker.subscribe(on_up)
        await asyncio.to_thread(down.kill)
        async with asyncio.timeout(10):
            await _eventually(lambda: not broker.healthy)
        await broker.publish(on_up, publication("still here"), _options())
        async with asyncio.timeout(5):
            await handler.wait_until(lambda: handler.offsets(on_up) == [1])
        await asyncio.to_thread(down.start)
        async with asyncio.timeout(10):
            await handler.wait_until(lambda: bool(handler.resyncs))
            await _eventually(lambda: broker.healthy)
        # Only the channels of the shard that came back must catch up.
        assert handler.resyncs == [{on_down}]
    finally:
        await broker.close()


def _one_channel_on_each(broker: ShardedBroker, names: list[str], down: str) -> tuple[str, str]:
    on_down = next(ch for ch in names if broker.shard_of(ch) == down)
    on_up = next(ch for ch in names if broker.shard_of(ch) != down)
    return on_down, on_up


def _options() -> PublishOptions:
    return PublishOptions(history_size=100, history_ttl=60)


async def _eventually(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds; the caller bounds the wait."""
    # broker.healthy is a property with no event to await: poll it.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
