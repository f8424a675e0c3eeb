"""Sharding channels over several brokers: where a channel lives (the hash ring), that the
sharded broker keeps the Broker contract, and how ``redis_urls`` is configured.

The same over real Redis servers: ``tests/integration/test_sharded_redis_broker.py``."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from tether.brokers.base import Broker, PresenceStore
from tether.brokers.guarded import GuardedBroker
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.brokers.sharded import HashRing, ShardedBroker, ShardedPresenceStore, shard_address
from tether.config import Config, load_config
from tether.errors import BrokerUnavailable, ConfigError
from tether.server import make_broker
from tether.testing.broker_contract import BrokerContract, Failover, RecordingHandler, restarted
from tether.testing.brokers import FaultyBroker
from tether.testing.clock import FakeClock

SHARDS = ["10.0.0.1:6379/0", "10.0.0.2:6379/0", "10.0.0.3:6379/0"]
CHANNELS = [f"chat:room-{i}" for i in range(20000)]


# -- the ring: where a channel lives ---------------------------------------------------------


def test_placement_of_channels_never_changes_between_releases() -> None:
    # Every node, of every version, must agree on where a channel lives: a channel that
    # moves loses its stream. If this test fails, the change re-shards every deployment.
    ring = HashRing(SHARDS)
    assert {c: ring.owner(c) for c in ["chat:room-1", "chat:room-2", "news", "user#42", "été"]} == {
        "chat:room-1": "10.0.0.2:6379/0",
        "chat:room-2": "10.0.0.1:6379/0",
        "news": "10.0.0.3:6379/0",
        "user#42": "10.0.0.2:6379/0",
        "été": "10.0.0.1:6379/0",
    }


def test_placement_does_not_depend_on_the_order_the_shards_are_listed_in() -> None:
    forward, backward = HashRing(SHARDS), HashRing(reversed(SHARDS))
    assert all(forward.owner(c) == backward.owner(c) for c in CHANNELS)


def test_channels_spread_evenly_over_the_shards() -> None:
    ring = HashRing(SHARDS)
    counts = Counter(ring.owner(c) for c in CHANNELS)
    assert set(counts) == set(SHARDS)
    assert all(0.25 < n / len(CHANNELS) < 0.42 for n in counts.values())


def test_adding_a_shard_moves_about_a_quarter_of_the_channels_all_to_the_new_shard() -> None:
    before, after = HashRing(SHARDS), HashRing([*SHARDS, "10.0.0.4:6379/0"])
    moved = [c for c in CHANNELS if before.owner(c) != after.owner(c)]
    assert 0.15 < len(moved) / len(CHANNELS) < 0.35
    assert {after.owner(c) for c in moved} == {"10.0.0.4:6379/0"}


def test_removing_a_shard_moves_only_its_own_channels() -> None:
    before, after = HashRing(SHARDS), HashRing(SHARDS[:2])
    moved = {c for c in CHANNELS if before.owner(c) != after.owner(c)}
    assert moved == {c for c in CHANNELS if before.owner(c) == SHARDS[2]}


def test_a_ring_without_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        HashRing([])


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://10.0.0.1:6379/0", "10.0.0.1:6379/0"),
        ("redis://10.0.0.1", "10.0.0.1:6379/0"),
        ("rediss://user:secret@Redis-A.internal:6380/2", "redis-a.internal:6380/2"),
        ("redis://redis-a.internal:6380?db=3", "redis-a.internal:6380/3"),
        ("unix:///run/redis.sock?db=1", "unix:/run/redis.sock/1"),
    ],
)
def test_a_shard_is_placed_by_its_address_not_by_credentials_or_tls(url: str, address: str) -> None:
    assert shard_address(url) == address


# -- the sharded broker keeps the Broker contract -------------------------------------------


class TestShardedMemoryBroker(BrokerContract):
    """Three embedded brokers behind one ShardedBroker (the Redis shards run the same suite
    in the integration tests)."""

    async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
        return ShardedBroker(
            {name: MemoryBroker(meta_ttl=meta_ttl, clock=clock) for name in SHARDS}
        )

    async def create_presence_store(self) -> PresenceStore:
        return ShardedPresenceStore({name: MemoryPresenceStore() for name in SHARDS})

    def failover(self, handler: RecordingHandler) -> AbstractAsyncContextManager[Failover]:
        return restarted(lambda: ShardedBroker({n: MemoryBroker() for n in SHARDS}), handler)


def _faulty_shards() -> tuple[ShardedBroker, dict[str, FaultyBroker]]:
    shards = {name: FaultyBroker() for name in SHARDS}
    return ShardedBroker(dict[str, Broker](shards)), shards


async def test_sharded_broker_is_unhealthy_while_any_shard_is() -> None:
    broker, shards = _faulty_shards()
    await broker.start(RecordingHandler())
    try:
        assert broker.healthy
        shards[SHARDS[1]].healthy = False
        assert not broker.healthy
    finally:
        await broker.close()


async def test_a_failing_shard_fails_only_the_calls_of_its_own_channels() -> None:
    broker, shards = _faulty_shards()
    await broker.start(RecordingHandler())
    try:
        down = SHARDS[0]
        shards[down].fail("history")
        on_down = next(c for c in CHANNELS if broker.shard_of(c) == down)
        elsewhere = next(c for c in CHANNELS if broker.shard_of(c) != down)
        with pytest.raises(BrokerUnavailable):
            await broker.history(on_down)
        assert (await broker.history(elsewhere)).position.offset == 0
    finally:
        await broker.close()


async def test_channels_lists_the_subscribed_channels_of_every_shard() -> None:
    broker, _ = _faulty_shards()
    await broker.start(RecordingHandler())
    try:
        await asyncio.gather(*(broker.subscribe(c) for c in CHANNELS[:30]))
        assert await broker.channels() == set(CHANNELS[:30])
        assert len({broker.shard_of(c) for c in CHANNELS[:30]}) == len(SHARDS)
    finally:
        await broker.close()


async def test_channels_fails_when_a_shard_cannot_answer_rather_than_list_part() -> None:
    broker, shards = _faulty_shards()
    await broker.start(RecordingHandler())
    try:
        shards[SHARDS[2]].fail("channels")
        with pytest.raises(BrokerUnavailable):
            await broker.channels()
    finally:
        await broker.close()


def test_presence_stores_that_disagree_on_ttl_are_refused() -> None:
    stores: dict[str, PresenceStore] = {"a": MemoryPresenceStore(), "b": MemoryPresenceStore()}
    stores["b"].ttl = 30
    with pytest.raises(ValueError, match="disagree on ttl"):
        ShardedPresenceStore(stores)


# -- configuration -----------------------------------------------------------------------------


def _redis_config(tmp_path: Path, urls: str) -> Config:
    path = tmp_path / "tether.toml"
    path.write_text(f'broker = "redis"\nredis_urls = {urls}\n')
    return load_config(path, env={}).config


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        (
            '["redis://a:6379/0", "redis://:pw@A:6379"]',
            "`redis_urls[1]` names the shard a:6379/0 again",
        ),
        ('["redis://a:6379/0", "http://b"]', "`redis_urls[1]` is not a redis://, rediss://"),
        ('["redis://a:port/0"]', "`redis_urls[0]` has a port that is not a number"),
        ('["redis:///0"]', "`redis_urls[0]` has no host"),
        ('["redis://a/x"]', "`redis_urls[0]` has a database 'x' that is not a number"),
    ],
)
def test_invalid_redis_urls_are_named_with_what_is_wrong(
    urls: str, expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        _redis_config(tmp_path, urls)
    assert expected in str(info.value)


def test_a_password_in_redis_urls_never_shows_in_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _redis_config(tmp_path, '["redis://a", "redis://user:hunter2@a:6379/0"]')
    assert "hunter2" not in str(info.value)


def test_redis_urls_need_the_redis_broker() -> None:
    with pytest.raises(ConfigError, match='`redis_urls` needs broker = "redis"'):
        load_config(env={"TETHER_REDIS_URLS": "redis://a,redis://b"})


def test_redis_urls_from_the_environment_are_a_comma_list() -> None:
    env = {"TETHER_BROKER": "redis", "TETHER_REDIS_URLS": "redis://a:6379/0, redis://b:6379/0"}
    assert load_config(env=env).config.redis_urls == ["redis://a:6379/0", "redis://b:6379/0"]


async def test_redis_urls_make_a_sharded_broker_with_a_circuit_breaker_per_shard(
    tmp_path: Path,
) -> None:
    config = _redis_config(tmp_path, '["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"]')
    broker, presence = make_broker(config)
    try:
        assert isinstance(broker, ShardedBroker)
        assert isinstance(presence, ShardedPresenceStore)
        assert set(broker.shards) == set(presence.stores) == {"127.0.0.1:1/0", "127.0.0.1:2/0"}
        guards = [s for s in broker.shards.values() if isinstance(s, GuardedBroker)]
        assert len({id(g.breaker) for g in guards}) == 2
    finally:
        await broker.close()
        await presence.close()
