"""Many nodes over Redis behind a load balancer without sticky sessions: when a node dies,
its clients reconnect through the balancer to the others and lose nothing.

Three ``tether serve`` processes share one redis-server; HAProxy balances clients and the
server API round-robin over them. 200 clients (196 lean raw-protocol followers, 4 real
centrifuge-python clients) subscribe to three channels; a publisher streams publications
through the API; one node is killed with SIGKILL in the middle of the stream.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from cluster_kit import (
    CHANNELS,
    Publisher,
    follower_fleet,
    history,
    running_cluster,
    sdk_fleet,
    seqs,
)

pytestmark = pytest.mark.integration

RAW_CLIENTS = 196
SDK_CLIENTS = 4
ROUNDS = 60
"""Publications per channel."""
KILL_AT = 20
"""The round after which node-0 is killed."""


async def test_clients_of_a_killed_node_recover_every_publication_once_in_order_on_other_nodes(
    tmp_path: Path,
) -> None:
    async with (
        asyncio.timeout(240),
        running_cluster(tmp_path) as cluster,
        aiohttp.ClientSession() as session,
        follower_fleet(cluster.lb.port, RAW_CLIENTS) as followers,
        sdk_fleet(cluster.lb.port, SDK_CLIENTS) as sdk_clients,
    ):
        served_by = Counter(f.nodes[-1] for f in followers)
        victim = cluster.node("node-0")
        victims = [f for f in followers if f.nodes[-1] == victim.name]
        publisher = Publisher(session, f"http://127.0.0.1:{cluster.lb.api_port}")

        for seq in range(ROUNDS):
            if seq == KILL_AT:
                await asyncio.to_thread(victim.kill)
            await asyncio.gather(*(publisher.publish_until_accepted(ch, seq) for ch in CHANNELS))
            await asyncio.sleep(0.02)  # a steady stream, not one burst

        async with asyncio.timeout(60):
            for follower in followers:
                await follower.wait_until(
                    lambda f: all(len(f.received[ch]) >= ROUNDS for ch in CHANNELS)
                )
            for subs in sdk_clients:
                for events in subs.values():
                    while len(events.received) < ROUNDS:
                        await events.publications.get()
        await asyncio.sleep(0.2)  # a duplicate would show by now
        streams = {ch: await history(session, cluster.lb.api_url, ch) for ch in CHANNELS}

    # No stickiness: clients were spread over every node, and the victim's went elsewhere.
    assert set(served_by) == {"node-0", "node-1", "node-2"}, served_by
    assert victims
    assert all(len(f.nodes) >= 2 and f.nodes[-1] != victim.name for f in victims)
    for ch in CHANNELS:
        stream = streams[ch]["publications"]
        # Retried publishes (same idempotency key, any node) were stored exactly once.
        assert seqs(p["data"] for p in stream) == list(range(ROUNDS))
        assert [p["offset"] for p in stream] == list(range(1, ROUNDS + 1))
        expected = [(p["offset"], p["data"]) for p in stream]
        for follower in followers:
            got = [(d.offset, d.data) for d in follower.received[ch]]
            assert got == expected, (follower.nodes, follower.errors[-3:])
            assert {d.epoch for d in follower.received[ch]} == {streams[ch]["epoch"]}
        for subs in sdk_clients:
            got = [(p.offset, p.data) for p in subs[ch].received]
            assert got == expected
    # Every resubscription after the crash recovered (nothing was beyond the window).
    recoveries = [o for f in followers for o in f.outcomes if o.was_recovering]
    assert len(recoveries) == len(victims) * len(CHANNELS)
    assert all(o.recovered for o in recoveries)
