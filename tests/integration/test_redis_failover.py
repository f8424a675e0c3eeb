"""Redis fails over to a replica that lacks acknowledged writes: nothing is lost silently.

Redis A is the primary, B its asynchronously replicated replica; Tether reaches Redis
through a relay (as through a virtual IP). A centrifuge-python subscriber receives offsets
1-5 (replicated to B); B is promoted early (``REPLICAOF NO ONE``, as after a partition)
and the subscriber receives 6-8, which only A holds; the relay moves to B and drops every
connection. Tether tells the subscriber to resubscribe (2500), and new publications are
stored before it does. The fence (docs/explanation/recovery.md) gives the stream a new
epoch at the first touch on B, so the subscriber is told: ``recovered: false``, the new
epoch, and every publication stored after the failover.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from cluster_kit import Attempt, Publisher
from redis.asyncio import Redis
from sdk_kit import SdkClients, next_event, subscribe

from tether.brokers.base import FencedPosition, PublishOptions, StreamPosition
from tether.brokers.redis import RedisBroker, RedisPresenceStore
from tether.errors import BrokerUnavailable
from tether.protocol.messages import ClientInfo
from tether.server import Server
from tether.testing.broker_contract import RecordingHandler, payloads, publication
from tether.testing.servers import make_config, running_server
from tether_bench.cluster import CLUSTER_API_KEY
from tether_bench.failover import ReplicatedRedis
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

CHANNEL = "chat:failover"
_OPTIONS = PublishOptions(history_size=100, history_ttl=300)


@pytest.fixture
async def redis() -> AsyncIterator[ReplicatedRedis]:
    async with ReplicatedRedis() as pair:
        yield pair


@pytest.fixture
async def tether(redis: ReplicatedRedis) -> AsyncIterator[Server]:
    config = make_config(
        broker="redis",
        redis_url=redis.url,
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        api_key=CLUSTER_API_KEY,
    )
    async with running_server(config) as server:
        yield server


@pytest.fixture
async def publisher(tether: Server) -> AsyncIterator[Publisher]:
    async with aiohttp.ClientSession() as session:
        yield Publisher(session, f"http://127.0.0.1:{tether.http_port}")


async def _publish(publisher: Publisher, *seqs: int) -> list[Attempt]:
    attempts = [await publisher.publish(CHANNEL, seq) for seq in seqs]
    assert all(a.accepted for a in attempts), attempts
    return attempts


async def test_subscriber_who_saw_writes_the_promoted_replica_lacks_is_told_and_gets_what_followed(
    redis: ReplicatedRedis, tether: Server, publisher: Publisher, sdk: SdkClients
) -> None:
    client, _ = await sdk.connect(tether.port, "alice")
    _, events, first = await subscribe(client, CHANNEL)
    await _publish(publisher, 1, 2, 3, 4, 5)
    await events.next_publications(5)
    async with asyncio.timeout(10):
        await redis.wait_replicated()
    await redis.promote_replica()  # B stops hearing A: a partition, B promoted early
    lost = await _publish(publisher, 6, 7, 8)
    await events.next_publications(3)  # the subscriber saw 6-8, which only A holds
    while not events.subscribing.empty():  # the first subscribe's event
        events.subscribing.get_nowait()

    events.resubscribe_gate.clear()
    redis.move_relay()
    told = await next_event(events.subscribing)  # Tether resynced: resubscribe (2500)
    after = [await publisher.publish_until_accepted(CHANNEL, seq) for seq in (9, 10, 11)]
    events.resubscribe_gate.set()
    resubscribed = await next_event(events.subscribed)
    await events.next_publications(3)
    [live] = await _publish(publisher, 12)
    await events.next_publications(1)

    assert told.code == 2500
    assert first.stream_position is not None
    old_epoch = first.stream_position.epoch
    assert {a.answer["result"]["epoch"] for a in lost} == {old_epoch}
    new_epochs = {a.answer["result"]["epoch"] for a in [*after, live]}
    assert len(new_epochs) == 1
    assert old_epoch not in new_epochs  # fenced: a new epoch
    # Offsets 6-8 were handed out again, but in the new epoch: no position names two.
    assert [a.answer["result"]["offset"] for a in after] == [6, 7, 8]
    assert resubscribed.was_recovering
    assert not resubscribed.recovered  # the loss of 6-8 is reported ...
    assert resubscribed.stream_position is not None
    assert (resubscribed.stream_position.offset, resubscribed.stream_position.epoch) == (
        8,
        new_epochs.pop(),
    )
    # ... and every publication stored after the failover reaches the subscriber, once.
    assert [p.data["seq"] for p in events.received] == [*range(1, 9), 9, 10, 11, 12]


async def test_after_a_failover_each_position_recovers_as_far_as_the_new_primary_holds_it(
    redis: ReplicatedRedis,
) -> None:
    ch, prefix = f"chat:{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    handler = RecordingHandler()
    broker = RedisBroker(redis.url, prefix=prefix, command_timeout=1.0, connect_timeout=0.5)
    await broker.start(handler)
    try:
        [*_, held] = [await broker.publish(ch, publication(i), _OPTIONS) for i in (1, 2, 3)]
        async with asyncio.timeout(10):
            await redis.wait_replicated()
        await redis.cut_replication()
        lost = await broker.publish(ch, publication(4), _OPTIONS)  # acknowledged by A only
        await redis.fail_over()
        async with asyncio.timeout(10):
            await handler.wait_until(lambda: bool(handler.resyncs))
        after = [await broker.publish(ch, publication(i), _OPTIONS) for i in (5, 6)]
        continued = await broker.history(ch, since=held.position, limit=-1)
        with pytest.raises(FencedPosition) as fenced:
            await broker.history(ch, since=lost.position, limit=-1)
        resumed = await broker.history(ch, since=fenced.value.resume, limit=-1)
    finally:
        await broker.close()

    new_epoch = after[0].position.epoch
    assert new_epoch != held.position.epoch
    # B held 1-3: the new epoch continues from there.
    assert [r.position for r in after] == [
        StreamPosition(4, new_epoch),
        StreamPosition(5, new_epoch),
    ]
    # A position B holds is in the new stream; one past it is not, and is told where the
    # publications stored since the failover begin.
    assert payloads(continued.publications) == [5, 6]
    assert continued.position == after[-1].position
    assert fenced.value.resume == StreamPosition(3, new_epoch)
    assert payloads(resumed.publications) == [5, 6]


async def test_a_publication_from_another_node_reaching_the_new_primary_first_is_fenced_too(
    redis: ReplicatedRedis,
) -> None:
    # The dangerous case: node 2 publishes on B before node 1, which saw the lost
    # writes, has noticed anything. The fence is in the script on B, not in the nodes.
    ch, prefix = f"chat:{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    one_heard, two_heard = RecordingHandler(), RecordingHandler()
    one = RedisBroker(redis.url, prefix=prefix, command_timeout=1.0, connect_timeout=0.5)
    await one.start(one_heard)
    try:
        await one.subscribe(ch)
        await one.publish(ch, publication(1), _OPTIONS)
        async with asyncio.timeout(10):
            await redis.wait_replicated()
        await redis.cut_replication()
        lost = await one.publish(ch, publication(2), _OPTIONS)
        await redis.promote_replica()
        # Node 2 talks to B directly (it was never behind the relay): it publishes first.
        two = RedisBroker(redis.replica.url, prefix=prefix)
        await two.start(two_heard)
        try:
            first_on_b = await two.publish(ch, publication(3), _OPTIONS)
        finally:
            await two.close()
        redis.move_relay()
        async with asyncio.timeout(10):
            await one_heard.wait_until(lambda: bool(one_heard.resyncs))
        top = (await one.history(ch, limit=0)).position
    finally:
        await one.close()

    assert first_on_b.position.epoch != lost.position.epoch
    assert first_on_b.position.offset == 2  # B held offset 1
    assert top == first_on_b.position
    assert one_heard.offsets(ch) == [1, 2]  # what node 1 heard from A


async def test_a_write_refused_by_a_replica_is_unavailable_not_an_error(
    redis: ReplicatedRedis,
) -> None:
    # What a node still connected to a demoted primary meets (READONLY): a temporary
    # failure (HTTP 503), never an internal error.
    broker = RedisBroker(redis.replica.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    presence = RedisPresenceStore(redis.replica.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await broker.start(RecordingHandler())
    try:
        with pytest.raises(BrokerUnavailable, match=r"READONLY|read only"):
            await broker.publish("chat:a", publication(1), _OPTIONS)
        with pytest.raises(BrokerUnavailable):
            await presence.add("chat:a", "c1", ClientInfo(user="alice", client="c1"))
    finally:
        await broker.close()
        await presence.close()


async def test_a_write_refused_for_too_few_replicas_is_unavailable_and_stores_nothing() -> None:
    # min-replicas-to-write: the primary refuses writes while no replica is in reach.
    server = RedisServer(extra_args=["--min-replicas-to-write", "1"])
    await asyncio.to_thread(server.start)
    broker = RedisBroker(server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await broker.start(RecordingHandler())
    try:
        with pytest.raises(BrokerUnavailable, match="NOREPLICAS"):
            await broker.publish("chat:a", publication(1), _OPTIONS)
        async with Redis.from_url(server.url) as admin:
            assert await admin.dbsize() == 0
    finally:
        await broker.close()
        await asyncio.to_thread(server.kill)


async def test_a_publish_that_waits_for_a_replica_returns_once_the_replica_has_it(
    redis: ReplicatedRedis,
) -> None:
    options = _OPTIONS._replace(wait_replicas=1, wait_timeout=1.0)
    broker = RedisBroker(redis.primary.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await broker.start(RecordingHandler())
    try:
        result = await broker.publish("chat:a", publication(1), options)
        await redis.promote_replica()  # whatever the replica has now survives a failover
        async with Redis.from_url(redis.replica.url) as replica:
            assert await replica.llen(f"{broker.prefix}.history.{{chat:a}}") == 1
    finally:
        await broker.close()
    assert result.position.offset == 1


async def test_a_publish_that_no_replica_confirms_in_time_is_unavailable(
    redis: ReplicatedRedis,
) -> None:
    options = _OPTIONS._replace(wait_replicas=1, wait_timeout=0.2, idempotency_key="k1")
    broker = RedisBroker(redis.primary.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await broker.start(RecordingHandler())
    try:
        await redis.cut_replication()
        with pytest.raises(BrokerUnavailable, match="held by 0 of 1 replicas"):
            await broker.publish("chat:a", publication(1), options)
        await redis.restore_replication()
        async with asyncio.timeout(10):
            await redis.wait_replicated()
        # The retry with the same key is told what was stored, now replicated.
        again = await broker.publish("chat:a", publication(1), options)
    finally:
        await broker.close()
    assert again.duplicate
    assert again.position.offset == 1
