"""Redis Sentinel fails the primary over under a steady publish stream: nothing is lost
silently.

Redis A (primary) and B (its replica) are watched by three Sentinel processes; Tether
finds the master through them (``redis_sentinels``, ``redis_sentinel_master``), for its
commands and its subscriber connection. Three centrifuge-python clients follow a channel
while a publisher streams into it through the server API. B is cut off from A (so that
A acknowledges publications B never gets) and A is killed; the Sentinels promote B.
What a user may count on (issue 13):

* while there is no master, a publish gets a temporary error (HTTP 503, ``Retry-After``),
  never a 2xx, and ``/ready`` is false;
* Tether follows the new master by itself (no virtual IP) and tells its subscribers to
  resubscribe (2500);
* each client is told of what it saw that is gone (``recovered: false``, the new epoch),
  and receives every publication accepted after the failover, once, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from centrifuge import SubscribedContext
from cluster_kit import Publisher
from failover_kit import Stream, assert_every_loss_signalled
from redis.asyncio import Redis
from sdk_kit import SdkClients, SubEvents, subscribe

from tether.brokers.base import PublishOptions
from tether.brokers.redis import RedisBroker, Sentinels
from tether.errors import BrokerUnavailable
from tether.testing.broker_contract import RecordingHandler, publication
from tether.testing.servers import make_config, running_server
from tether_bench.cluster import CLUSTER_API_KEY, http_status
from tether_bench.failover import RedisSentinels, ReplicatedRedis

pytestmark = pytest.mark.integration

CHANNEL = "chat:sentinel"
CLIENTS = 3
_OPTIONS = PublishOptions(history_size=100, history_ttl=300)


@pytest.fixture
async def sentinels() -> AsyncIterator[tuple[ReplicatedRedis, RedisSentinels]]:
    async with ReplicatedRedis() as redis:
        watching = RedisSentinels(redis.primary.port, master="tether")
        await asyncio.to_thread(watching.start)
        try:
            yield redis, watching
        finally:
            await asyncio.to_thread(watching.kill)


async def test_sentinel_failover_under_a_publish_stream_loses_nothing_silently(
    sentinels: tuple[ReplicatedRedis, RedisSentinels], sdk: SdkClients
) -> None:
    redis, watching = sentinels
    config = make_config(
        broker="redis",
        redis_url="redis://found-through-sentinel/0",
        redis_sentinels=watching.addresses,
        redis_sentinel_master=watching.master,
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        api_key=CLUSTER_API_KEY,
    )
    async with (
        asyncio.timeout(120),
        running_server(config) as server,
        aiohttp.ClientSession() as session,
    ):
        followers: list[tuple[SubEvents, SubscribedContext]] = []
        for i in range(CLIENTS):
            client, _ = await sdk.connect(server.port, f"user{i}")
            _, events, first = await subscribe(client, CHANNEL)
            followers.append((events, first))
        stream = Stream(Publisher(session, f"http://127.0.0.1:{server.http_port}"), server, CHANNEL)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(stream.run())
            await stream.until_accepted(20)
            await redis.wait_replicated()
            await redis.cut_replication()  # from here on, what A accepts B never gets
            await stream.until_accepted(20)
            before_kill = len(stream.accepted())
            await asyncio.to_thread(redis.primary.kill)
            await stream.until_accepted(1)  # the Sentinels promoted B, Tether found it
            promoted = watching.master_address()
            failed_over_at = len(stream.publisher.attempts)
            await stream.until_accepted(40)
            stream.stop()
        async with asyncio.timeout(20):  # ready again after the failover, or the test fails
            while await http_status(server.http_port, "/ready") != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        accepted = stream.accepted()
        last = accepted[-1].seq
        for events, _ in followers:
            async with asyncio.timeout(20):
                while last not in [p.data["seq"] for p in events.received]:
                    await events.publications.get()
        await asyncio.sleep(0.2)  # a duplicate would show by now

    assert promoted == ("127.0.0.1", redis.replica.port)
    old_epoch = accepted[0].answer["result"]["epoch"]
    after = [a for a in accepted if a.answer["result"]["epoch"] != old_epoch]
    assert after, "nothing was accepted in a new epoch"
    assert all(a.seq > accepted[before_kill - 1].seq for a in after)
    # While there was no master: temporary errors with a retry hint, never an acceptance
    # that was then lost; /ready said so.
    refused = [a for a in stream.publisher.attempts if not a.accepted]
    assert refused, "no publish was attempted while there was no master"
    assert all(a.status == 503 and a.retry_after for a in refused), refused[:3]
    assert False in stream.readiness
    assert len(stream.publisher.attempts) > failed_over_at
    new_seqs = [a.seq for a in after]
    for events, first in followers:
        got = [p.data["seq"] for p in events.received]
        assert len(got) == len(set(got)), "a publication was delivered twice"
        assert got == sorted(got), "publications out of order"
        # Every publication accepted after the failover reached the client.
        assert [s for s in got if s >= new_seqs[0]] == new_seqs
        # What the client saw that the new master lacks was signalled: its resubscribe
        # said recovered: false with the new epoch.
        assert_every_loss_signalled(events, accepted, first)


async def test_a_planned_sentinel_failover_moves_commands_and_the_subscriber_to_the_new_master(
    sentinels: tuple[ReplicatedRedis, RedisSentinels],
) -> None:
    # SENTINEL FAILOVER: the old primary stays up and is turned into a replica. Sentinel
    # closes its clients, so the subscriber connection cannot linger on it (where it would
    # still hear publications, replicated, but out of step with the history barrier).
    redis, watching = sentinels
    handler = RecordingHandler()
    broker = RedisBroker(
        "redis://found-through-sentinel/0",
        prefix=f"t{uuid.uuid4().hex[:8]}",
        sentinels=Sentinels([(watching.host, port) for port in watching.ports], watching.master),
        command_timeout=1.0,
        connect_timeout=0.5,
    )
    await broker.start(handler)
    try:
        await broker.subscribe("chat:planned")
        before = await broker.publish("chat:planned", publication(1), _OPTIONS)
        async with asyncio.timeout(10):
            await redis.wait_replicated()
        await asyncio.to_thread(watching.wait_replica_known)
        async with Redis(host=watching.host, port=watching.ports[0]) as sentinel:
            await sentinel.execute_command("SENTINEL", "FAILOVER", watching.master)
        async with asyncio.timeout(30):
            await handler.wait_until(lambda: bool(handler.resyncs))
            while True:  # the subscriber is back on the master: publishes go through
                try:
                    after = await broker.publish("chat:planned", publication(2), _OPTIONS)
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.1)
            await handler.wait_until(lambda: len(handler.publications.get("chat:planned", [])) == 2)
        top = await broker.history("chat:planned", since=before.position, limit=-1)
    finally:
        await broker.close()

    assert watching.master_address() == ("127.0.0.1", redis.replica.port)
    # Nothing was lost (the replica had everything), yet the new master fenced the stream:
    # the position from before continues into the new epoch.
    assert after.position.epoch != before.position.epoch
    assert after.position.offset == 2
    assert [p.offset for p in top.publications] == [2]
    assert handler.offsets("chat:planned") == [1, 2]
