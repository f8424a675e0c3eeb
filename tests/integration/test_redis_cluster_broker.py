"""The Redis Cluster broker and presence store keep the Broker/PresenceStore contract
against a real 3-master cluster; channels spread over the masters; nodes hear each other;
and when a master restarts or a slot moves, the broker resubscribes the affected channels
on their owner and asks for their resync, never staying silently deaf."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from sdk_kit import SdkClients, subscribe

from tether.brokers.base import Broker, PresenceStore, PublishOptions, PublishResult
from tether.brokers.guarded import GuardedBroker
from tether.brokers.redis_cluster import RedisClusterBroker, RedisClusterPresenceStore
from tether.errors import BrokerUnavailable
from tether.testing.broker_contract import (
    BrokerContract,
    Failover,
    RecordingHandler,
    publication,
)
from tether.testing.clock import FakeClock
from tether.testing.servers import make_config, running_server
from tether_bench.failover import ClusterFailover
from tether_bench.redisserver import RedisClusterNodes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    """A 3-master cluster of this module; tests keep apart by key prefix and never kill
    its nodes (a test that does starts its own)."""
    with RedisClusterNodes() as nodes:
        yield nodes


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisClusterNodes]:
    """A 3-master cluster with a replica per master, for the failover tests."""
    with RedisClusterNodes(replicas=1) as nodes:
        yield nodes


@pytest.fixture
async def own_cluster() -> AsyncIterator[RedisClusterNodes]:
    """A cluster this test alone uses, so that it may restart its masters."""
    nodes = RedisClusterNodes()
    await asyncio.to_thread(nodes.start)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(nodes.kill)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class TestRedisClusterBroker(BrokerContract):
    # Redis expires keys on its own clock: the suite sleeps through real, short TTLs
    # (as in test_redis_broker.py).
    history_ttl = 1.0
    idempotency_ttl = 1.0
    meta_ttl = 2.0
    margin = 0.4

    @pytest.fixture(autouse=True)
    def _cluster(self, cluster: RedisClusterNodes, request: pytest.FixtureRequest) -> None:
        self.url = cluster.url
        self.prefix = _prefix()
        if "failover" in request.node.name:
            self.ha_cluster: RedisClusterNodes = request.getfixturevalue("replicated_cluster")

    async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
        return RedisClusterBroker(self.url, prefix=self.prefix, meta_ttl=meta_ttl)

    async def create_presence_store(self) -> PresenceStore:
        return RedisClusterPresenceStore(self.url, prefix=self.prefix, ttl=60)

    @asynccontextmanager
    async def failover(self, handler: RecordingHandler) -> AsyncIterator[Failover]:
        # A cluster of its own with a replica per master (the module's has none); the
        # fencing points share it, each failing over every master once.
        cluster = self.ha_cluster
        broker = RedisClusterBroker(cluster.url, prefix=self.prefix, meta_ttl=60)
        await broker.start(handler)
        try:
            yield ClusterFailover(broker, cluster)
        finally:
            await broker.close()

    async def elapse(self, clock: FakeClock, seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(seconds)

    async def settle(self) -> None:
        await asyncio.sleep(0.1)


# -- what only a cluster can get wrong ------------------------------------------------------


async def _started(url: str, prefix: str, handler: RecordingHandler) -> RedisClusterBroker:
    broker = RedisClusterBroker(url, prefix=prefix, command_timeout=1.0, connect_timeout=0.5)
    await broker.start(handler)
    return broker


def _one_channel_per_master(broker: RedisClusterBroker, run: str) -> dict[str, str]:
    """master ``host:port`` -> a channel whose slot it owns."""
    chosen: dict[str, str] = {}
    for i in range(200):
        ch = f"chat:{run}-{i}"
        chosen.setdefault(broker.owner(ch), ch)
    return chosen


def _options() -> PublishOptions:
    return PublishOptions(history_size=100, history_ttl=60)


async def test_channels_spread_over_every_master_each_stream_stored_on_its_slot_owner(
    cluster: RedisClusterNodes,
) -> None:
    prefix = _prefix()
    broker = await _started(cluster.url, prefix, RecordingHandler())
    try:
        per_master = _one_channel_per_master(broker, uuid.uuid4().hex[:8])
        assert set(per_master) == {f"127.0.0.1:{node.port}" for node in cluster.nodes}
        for ch in per_master.values():
            await broker.publish(ch, publication("x"), _options())
        for master, ch in per_master.items():
            host, port = master.split(":")
            # A plain (non-cluster) client: the key answers there, without MOVED.
            async with Redis(host=host, port=int(port)) as direct:
                assert await direct.hget(f"{prefix}.meta.{{{ch}}}", "s") == b"1"
    finally:
        await broker.close()


async def test_every_node_receives_every_publication_once_in_order_on_every_master(
    cluster: RedisClusterNodes,
) -> None:
    prefix, run = _prefix(), uuid.uuid4().hex[:8]
    handlers = [RecordingHandler() for _ in range(3)]
    brokers = [await _started(cluster.url, prefix, h) for h in handlers]
    try:
        channels = sorted(_one_channel_per_master(brokers[0], run).values())
        for broker in brokers:
            for ch in channels:
                await broker.subscribe(ch)
        await asyncio.gather(
            *(
                brokers[i % 3].publish(ch, publication(i), _options())
                for ch in channels
                for i in range(30)
            )
        )
        async with asyncio.timeout(5):
            for handler in handlers:
                for ch in channels:
                    await handler.wait_until(lambda h=handler, c=ch: len(h.offsets(c)) >= 30)
        await asyncio.sleep(0.1)  # a duplicate delivery would show by now
        for handler in handlers:
            assert {ch: handler.offsets(ch) for ch in channels} == {
                ch: list(range(1, 31)) for ch in channels
            }
            assert handler.resyncs == []
    finally:
        for broker in brokers:
            await broker.close()


async def test_after_a_master_restart_its_channels_resync_and_delivery_resumes(
    own_cluster: RedisClusterNodes,
) -> None:
    prefix, run = _prefix(), uuid.uuid4().hex[:8]
    handler = RecordingHandler()
    broker = await _started(own_cluster.url, prefix, handler)
    publisher = await _started(own_cluster.url, prefix, RecordingHandler())
    try:
        per_master = _one_channel_per_master(broker, run)
        for ch in per_master.values():
            await broker.subscribe(ch)
        victim = next(n for n in own_cluster.nodes if n is not own_cluster.nodes[0])
        restarted = per_master[f"127.0.0.1:{victim.port}"]
        await asyncio.to_thread(victim.kill)
        async with asyncio.timeout(10):
            await _eventually(lambda: not broker.healthy)
        with pytest.raises(BrokerUnavailable):
            await publisher.publish(restarted, publication("lost"), _options())
        await asyncio.to_thread(victim.start)
        async with asyncio.timeout(20):
            await handler.wait_until(lambda: bool(handler.resyncs))
            await _eventually(lambda: broker.healthy)
        assert handler.resyncs == [{restarted}]  # the other masters' channels stayed
        async with asyncio.timeout(20):
            for ch in per_master.values():
                await _retry_unavailable(
                    lambda c=ch: publisher.publish(c, publication(1), _options())
                )
            for ch in per_master.values():
                await handler.wait_until(lambda c=ch: bool(handler.offsets(c)))
        assert {ch: handler.offsets(ch) for ch in per_master.values()} == {
            ch: [1] for ch in per_master.values()
        }
    finally:
        await broker.close()
        await publisher.close()


async def test_a_channel_whose_slot_moves_is_resubscribed_on_the_new_master_and_resynced(
    own_cluster: RedisClusterNodes,
) -> None:
    prefix, run = _prefix(), uuid.uuid4().hex[:8]
    handler = RecordingHandler()
    broker = await _started(own_cluster.url, prefix, handler)
    publisher = await _started(own_cluster.url, prefix, RecordingHandler())
    try:
        per_master = _one_channel_per_master(broker, run)
        for ch in per_master.values():
            await broker.subscribe(ch)
        source, target = sorted(per_master)[:2]
        moved = per_master[source]
        before = await publisher.publish(moved, publication("before"), _options())
        await _move_slot(own_cluster, f"{prefix}.ch.{{{moved}}}", source, target)
        async with asyncio.timeout(10):
            await handler.wait_until(lambda: bool(handler.resyncs))
            await _eventually(lambda: broker.healthy)
        assert handler.resyncs == [{moved}]
        assert broker.owner(moved) == target
        async with asyncio.timeout(10):
            after = await _retry_unavailable(
                lambda: publisher.publish(moved, publication("after"), _options())
            )
            await handler.wait_until(lambda: handler.offsets(moved) == [1, 2])
        continued = await publisher.history(moved, since=before.position, limit=-1)
        # The stream moved with its slot and its offsets go on. Its new master cannot tell
        # a move from a failover (it has another replication ID), so it fenced the stream:
        # a new epoch, which a position from before the move continues into.
        assert after.position.offset == 2
        assert after.position.epoch != before.position.epoch
        assert [p.offset for p in continued.publications] == [2]
        assert continued.position == after.position
    finally:
        await broker.close()
        await publisher.close()


async def test_a_client_on_one_node_gets_what_another_node_publishes_on_every_master(
    sdk: SdkClients, cluster: RedisClusterNodes
) -> None:
    config = make_config(broker="redis", redis_cluster=True, redis_url=cluster.url,
                         redis_prefix=_prefix())  # fmt: skip
    async with running_server(config) as a, running_server(config) as b:
        guarded = a.node.broker
        assert isinstance(guarded, GuardedBroker)
        assert isinstance(guarded.inner, RedisClusterBroker)
        chosen = sorted(_one_channel_per_master(guarded.inner, uuid.uuid4().hex[:8]).values())
        client, _ = await sdk.connect(a.port, "alice")
        subscriptions = [await subscribe(client, ch) for ch in chosen]
        for ch in chosen:
            await b.node.publish(ch, b'{"on":"%s"}' % ch.encode())
        for ch, (_, events, _) in zip(chosen, subscriptions, strict=True):
            [delivered] = await events.next_publications(1)
            assert (delivered.data, delivered.offset) == ({"on": ch}, 1)
        await client.disconnect()
    assert len(chosen) == 3


# -- helpers --------------------------------------------------------------------------------


async def _move_slot(cluster: RedisClusterNodes, key: str, source: str, target: str) -> None:
    """Move ``key``'s slot, with its keys, from master ``source`` to ``target``
    (``host:port``), as ``redis-cli --cluster reshard`` does."""
    clients = {f"127.0.0.1:{n.port}": Redis(host="127.0.0.1", port=n.port) for n in cluster.nodes}
    try:
        src, dst = clients[source], clients[target]
        slot = await src.execute_command("CLUSTER KEYSLOT", key)
        src_id = (await src.execute_command("CLUSTER MYID")).decode()
        dst_id = (await dst.execute_command("CLUSTER MYID")).decode()
        await dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        await src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := await src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            host, port = target.split(":")
            await src.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
        # The target first, then the source, then the others, once each: a SETSLOT NODE
        # sent to the owner again makes it drop (and announce) the slot's subscriptions.
        others = [c for name, c in clients.items() if name not in (source, target)]
        for client in (dst, src, *others):
            await client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    finally:
        for client in clients.values():
            await client.aclose()


async def _eventually(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds; the caller bounds the wait."""
    # broker.healthy is a property with no event to await: poll it.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _retry_unavailable(call: Callable[[], Awaitable[PublishResult]]) -> PublishResult:
    """Retry ``call`` while the cluster is coming back; the caller bounds the wait."""
    while True:
        try:
            return await call()
        except BrokerUnavailable:
            await asyncio.sleep(0.05)
