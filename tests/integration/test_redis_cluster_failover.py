"""A Redis Cluster master fails over to a replica that lags, under a steady publish
stream: nothing is lost silently (the same rule as with one Redis and Sentinel).

A cluster of three masters, each with a replica. Three centrifuge-python clients follow a
channel while a publisher streams into it; the replica of the channel's master is cut off
from it (so that the master acknowledges publications the replica never gets), then made
master with ``CLUSTER FAILOVER FORCE`` (its master is not asked). Until the old master
hears of it, it still takes writes, which the cluster then drops: more acknowledged
publications lost. The new master fences the stream (docs/explanation/recovery.md), so
each client is told of what it saw that is gone (``recovered: false``, the new epoch) and
receives every publication accepted after the failover, once, in order.
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
from sdk_kit import SdkClients, SubEvents, subscribe

from tether.brokers.guarded import GuardedBroker
from tether.brokers.redis_cluster import RedisClusterBroker
from tether.testing.servers import make_config, running_server
from tether_bench.cluster import CLUSTER_API_KEY
from tether_bench.failover import cut_replication, promote_in_cluster, wait_replicated
from tether_bench.redisserver import RedisClusterNodes

pytestmark = pytest.mark.integration

CHANNEL = "chat:cluster-failover"
CLIENTS = 3


@pytest.fixture
async def cluster() -> AsyncIterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(replicas=1)
    await asyncio.to_thread(nodes.start)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(nodes.kill)


async def test_cluster_failover_to_a_lagging_replica_under_load_loses_nothing_silently(
    cluster: RedisClusterNodes, sdk: SdkClients
) -> None:
    config = make_config(
        broker="redis",
        redis_cluster=True,
        redis_url=cluster.url,
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        api_key=CLUSTER_API_KEY,
    )
    host = cluster.host
    async with (
        asyncio.timeout(120),
        running_server(config) as server,
        aiohttp.ClientSession() as session,
    ):
        guarded = server.node.broker
        assert isinstance(guarded, GuardedBroker)
        assert isinstance(guarded.inner, RedisClusterBroker)
        owner = guarded.inner.owner(CHANNEL)
        [(master, replica)] = [
            (m, r) for m, r in await asyncio.to_thread(cluster.roles) if f"{host}:{m.port}" == owner
        ]
        assert replica is not None
        followers: list[tuple[SubEvents, SubscribedContext]] = []
        for i in range(CLIENTS):
            client, _ = await sdk.connect(server.port, f"user{i}")
            _, events, first = await subscribe(client, CHANNEL)
            followers.append((events, first))
        stream = Stream(Publisher(session, f"http://127.0.0.1:{server.http_port}"), server, CHANNEL)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(stream.run())
            await stream.until_accepted(20)
            await wait_replicated((host, master.port), (host, replica.port))
            await cut_replication(host, replica.port)  # the replica lags from here on
            await stream.until_accepted(20)
            await promote_in_cluster(host, replica.port, how="FORCE")
            old_epoch = stream.accepted()[0].answer["result"]["epoch"]
            await stream.until_accepted_outside(old_epoch)  # the new master took one
            await stream.until_accepted(40)
            stream.stop()
        accepted = stream.accepted()
        last = accepted[-1].seq
        for events, _ in followers:
            async with asyncio.timeout(20):
                while last not in [p.data["seq"] for p in events.received]:
                    await events.publications.get()
        await asyncio.sleep(0.2)  # a duplicate would show by now

    after = [a for a in accepted if a.answer["result"]["epoch"] != old_epoch]
    new_seqs = [a.seq for a in after]
    refused = [a for a in stream.publisher.attempts if not a.accepted]
    assert all(a.status == 503 and a.retry_after for a in refused), refused[:3]
    for events, first in followers:
        got = [p.data["seq"] for p in events.received]
        assert len(got) == len(set(got)), "a publication was delivered twice"
        assert got == sorted(got), "publications out of order"
        assert [s for s in got if s >= new_seqs[0]] == new_seqs
        assert_every_loss_signalled(events, accepted, first)
