"""Redis restarts under load: nothing accepted is lost silently.

Three ``tether serve`` processes share one in-memory redis-server behind HAProxy; 200
clients (196 raw-protocol followers, 4 centrifuge-python clients) follow three channels
while a publisher streams through the server API. Redis is killed and started again on the
same port, empty, as after a crash. What a user may count on:

* during the outage a publish gets a temporary error (HTTP 503, ``Retry-After``), never a
  2xx; every node says it is not ready, and ready again once Redis is back;
* every node resubscribes and tells its subscribers to recover (``unsubscribe`` push 2500);
* the streams died with Redis, so every subscriber is told so (``recovered: false``, a new
  epoch), and everything accepted afterwards reaches everyone, once, in order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from cluster_kit import (
    CHANNELS,
    Attempt,
    Publisher,
    follower_fleet,
    running_cluster,
    sdk_fleet,
)

from tether_bench.cluster import Delivery, Follower, SubscribeOutcome

pytestmark = pytest.mark.integration

RAW_CLIENTS = 196
SDK_CLIENTS = 4
BEFORE, DURING, AFTER = 15, 5, 15
"""Publishing rounds (one publication per channel each) before, during, after the outage."""


async def test_redis_restart_gives_temporary_errors_then_tells_every_client_what_was_lost(
    tmp_path: Path,
) -> None:
    async with (
        asyncio.timeout(240),
        running_cluster(tmp_path) as cluster,
        aiohttp.ClientSession() as session,
        follower_fleet(cluster.lb.port, RAW_CLIENTS) as followers,
        sdk_fleet(cluster.lb.port, SDK_CLIENTS) as sdk_clients,
    ):
        publisher = Publisher(session, cluster.lb.api_url)
        direct = [Publisher(session, node.api_url) for node in cluster.nodes]
        seq = 0
        for _ in range(BEFORE):
            await asyncio.gather(*(publisher.publish(ch, seq) for ch in CHANNELS))
            seq += 1
        connections = [len(f.nodes) for f in followers]
        marks = [len(f.outcomes) for f in followers]
        for subs in sdk_clients:  # forget the first subscribes: what comes next counts
            for events in subs.values():
                while not events.subscribed.empty():
                    events.subscribed.get_nowait()

        await asyncio.to_thread(cluster.redis.kill)
        async with asyncio.timeout(30):
            for node in cluster.nodes:
                await node.wait_unready()
        outage: list[Attempt] = []
        for _ in range(DURING):
            for api in (publisher, *direct):
                outage += await asyncio.gather(*(api.publish(ch, seq) for ch in CHANNELS))
            seq += 1
        readiness_during_outage = [await node.ready() for node in cluster.nodes]

        await asyncio.to_thread(cluster.redis.start)
        try:
            async with asyncio.timeout(30):
                for node in cluster.nodes:
                    await node.wait_ready()
        except TimeoutError:
            raise AssertionError(f"a node stayed unready:\n{cluster.logs()}") from None
        async with asyncio.timeout(30):
            for follower, mark in zip(followers, marks, strict=True):
                await follower.wait_until(lambda f, m=mark: _resubscribed(f, m))
            sdk_told = {
                (i, ch): await events.subscribed.get()
                for i, subs in enumerate(sdk_clients)
                for ch, events in subs.items()
            }
        first = seq
        for _ in range(AFTER):
            await asyncio.gather(*(publisher.publish_until_accepted(ch, seq) for ch in CHANNELS))
            seq += 1
        after = {ch: [a.seq for a in publisher.accepted(ch) if a.seq >= first] for ch in CHANNELS}
        async with asyncio.timeout(30):
            for follower in followers:
                await follower.wait_until(lambda f: _has_seqs(f, after))
            for subs in sdk_clients:
                for ch, events in subs.items():
                    while after[ch][-1] not in [p.data["seq"] for p in events.received]:
                        await events.publications.get()
        await asyncio.sleep(0.2)  # a duplicate would show by now

    # During the outage: temporary errors with a retry hint, never an acceptance.
    assert outage
    assert all(a.status == 503 and a.retry_after for a in outage), _odd(outage)
    assert all(a.answer["error"]["temporary"] for a in outage), _odd(outage)
    assert readiness_during_outage == [False, False, False]
    accepted = {ch: publisher.accepted(ch) for ch in CHANNELS}
    before_epochs = {a.answer["result"]["epoch"] for ch in CHANNELS for a in accepted[ch][:BEFORE]}

    for follower, mark, connections_before in zip(followers, marks, connections, strict=True):
        # Told to recover on the connection it had (the node's resync), not by a reconnect.
        assert len(follower.nodes) == connections_before, follower.errors
        for ch in CHANNELS:
            told = _first_recovery(follower.outcomes[mark:], ch)
            assert told is not None
            assert not told.recovered
            assert told.epoch not in before_epochs
            _assert_nothing_lost_silently(follower, ch, accepted[ch])
            _assert_no_duplicates(follower.received[ch])
    for i, subs in enumerate(sdk_clients):
        for ch, events in subs.items():
            assert sdk_told[(i, ch)].was_recovering
            assert not sdk_told[(i, ch)].recovered
            got = [p.data["seq"] for p in events.received]
            assert got[-AFTER:] == after[ch]
            assert len(got) == len(set(got))


def _resubscribed(follower: Follower, mark: int) -> bool:
    return all(_first_recovery(follower.outcomes[mark:], ch) for ch in CHANNELS)


def _first_recovery(outcomes: list[SubscribeOutcome], channel: str) -> SubscribeOutcome | None:
    return next((o for o in outcomes if o.channel == channel and o.was_recovering), None)


def _has_seqs(follower: Follower, wanted: dict[str, list[int]]) -> bool:
    for ch, seqs in wanted.items():
        got = {d.data["seq"] for d in follower.received[ch]}
        if not set(seqs) <= got:
            return False
    return True


def _assert_nothing_lost_silently(
    follower: Follower, channel: str, accepted: list[Attempt]
) -> None:
    """Every accepted publication was received, or the follower was told (recovered:
    false) at a position past it or in a later epoch."""
    got = {(d.epoch, d.offset): d.data for d in follower.received[channel]}
    resets = [o for o in follower.outcomes if o.channel == channel and not o.recovered]
    resets = [o for o in resets if o.was_recovering]
    for attempt in accepted:
        epoch, offset = attempt.answer["result"]["epoch"], attempt.answer["result"]["offset"]
        if (epoch, offset) in got:
            assert got[(epoch, offset)] == {"seq": attempt.seq}
            continue
        assert any(r.epoch != epoch or r.offset >= offset for r in resets), (
            f"seq {attempt.seq} ({epoch}, {offset}) lost without a word: {follower.outcomes}"
        )


def _assert_no_duplicates(received: list[Delivery]) -> None:
    positions = [(d.epoch, d.offset) for d in received]
    assert len(positions) == len(set(positions))
    for epoch in {d.epoch for d in received}:
        offsets = [d.offset for d in received if d.epoch == epoch]
        assert offsets == sorted(offsets)


def _odd(attempts: list[Attempt]) -> list[Attempt]:
    return [a for a in attempts if a.status != 503 or not a.retry_after][:5]
