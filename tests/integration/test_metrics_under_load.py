"""/metrics scraped while a node is under load (a Redis broker, clients on three lanes, a
publisher) shows every operator figure with plausible values."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from typing import Any

import aiohttp
import msgspec
import pytest
from ops_kit import poll_until
from prometheus_client.parser import text_string_to_metric_families

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.servers import OPEN, TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether.testing.wsclient import WSClient
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

CLIENTS = 30
SECONDS = 3.0
CHANNELS = {"critical": "chat:room", "standard": "feed:news", "ephemeral": "typing:room"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """(sample name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def matching(
    samples: Samples, name: str, **labels: str
) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        key[1]: v
        for key, v in samples.items()
        if key[0] == name and set(labels.items()) <= set(key[1])
    }


def lanes_config(redis: RedisServer) -> Any:
    chat = msgspec.structs.replace(OPEN, lane="critical", join_leave=False, presence=False)
    feed = msgspec.structs.replace(OPEN, lane="standard", join_leave=False, presence=False)
    typing = msgspec.structs.replace(
        OPEN,
        lane="ephemeral",
        history_size=0,
        history_ttl=0,
        recover=False,
        join_leave=False,
        presence=False,
    )
    return make_config(
        namespaces={"chat": chat, "feed": feed, "typing": typing},
        broker="redis",
        redis_url=redis.url,
        redis_prefix=f"load{os.getpid()}",
    )


async def scrape(http: aiohttp.ClientSession, node: Server) -> Samples:
    async with http.get(f"http://127.0.0.1:{node.http_port}/metrics") as resp:
        assert resp.status == 200
        return parse(await resp.text())


async def test_metrics_scraped_under_load_show_every_figure_plausibly(
    redis_server: RedisServer,
) -> None:
    async with running_server(lanes_config(redis_server)) as node, aiohttp.ClientSession() as http:
        clients = [await WSClient.open(node.port) for _ in range(CLIENTS)]
        try:
            for i, ws in enumerate(clients):
                await ws.call("connect", {"token": mint_connection_token(TEST_SECRET, f"u{i}")})
                for channel in CHANNELS.values():
                    await ws.call("subscribe", {"channel": channel})
            published: dict[str, int] = defaultdict(int)
            during: list[Samples] = []

            async def publish() -> None:
                loop = asyncio.get_running_loop()
                end = loop.time() + SECONDS
                n = 0
                while loop.time() < end:
                    lane = ("critical", "standard", "ephemeral")[n % 3]
                    async with http.post(
                        f"http://127.0.0.1:{node.http_port}/api/publish",
                        json={"channel": CHANNELS[lane], "data": {"n": n}},
                        headers={"X-API-Key": TEST_API_KEY},
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                    published[lane] += 1
                    n += 1
                    await asyncio.sleep(0.005)

            async def watch() -> None:
                for _ in range(int(SECONDS / 0.5)):
                    await asyncio.sleep(0.5)
                    during.append(await scrape(http, node))

            await asyncio.gather(publish(), watch())
            await asyncio.sleep(0.3)  # the last ticks and ephemeral windows close
            loaded = await scrape(http, node)

            # Recoveries: one from a position the stream holds, one from another epoch.
            top = (await clients[0].call("history", {"channel": CHANNELS["critical"]}))["history"]
            recent = {"offset": top["offset"] - 3, "epoch": top["epoch"]}  # within history_size
            async with await WSClient.open(node.port) as back:
                await back.call("connect", {"token": mint_connection_token(TEST_SECRET, "b")})
                for channel, position in (
                    (CHANNELS["critical"], recent),
                    (CHANNELS["standard"], {"offset": 1, "epoch": "another-epoch"}),
                ):
                    reply = await back.call(
                        "subscribe", {"channel": channel, "recover": True, **position}
                    )
                    assert reply["subscribe"].get("recovered", False) is (channel == "chat:room")
            # Disconnects: u0 by the server API with code 4002; clients[1] closes itself,
            # as the "b" client above did.
            async with http.post(
                f"http://127.0.0.1:{node.http_port}/api/disconnect",
                json={"user": "u0", "disconnect": {"code": 4002, "reason": "test"}},
                headers={"X-API-Key": TEST_API_KEY},
            ) as resp:
                assert resp.status == 200
            await clients[1].close()

            async def ended() -> bool:
                ends = matching(await scrape(http, node), "tether_disconnects_total")
                return sum(ends.values()) >= 3

            await poll_until(ended, within=10)
            final = await scrape(http, node)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)

    total = sum(published.values())
    assert total > 100
    # Gauges while the load ran.
    for samples in during:
        assert value(samples, "tether_connections") == CLIENTS
        assert value(samples, "tether_subscriptions") == CLIENTS * len(CHANNELS)
        assert 0 <= value(samples, "tether_saturation") <= 1
        parts = matching(samples, "tether_saturation_part")
        assert len(parts) == 5
        assert all(0 <= v <= 1 for v in parts.values())
        assert value(samples, "tether_saturation") == max(parts.values())
        assert value(samples, "tether_ready") == 1
        assert value(samples, "tether_broker_healthy") == 1
    assert max(value(s, "tether_saturation_part", part="cpu") for s in during) > 0
    # Counters after the load: per lane, counted per publication, never per delivery.
    for lane, count in published.items():
        assert value(loaded, "tether_publications_total", lane=lane) == count
        # Every subscriber got each (no coalescing key was given, nothing was shed).
        assert value(loaded, "tether_deliveries_total", lane=lane) == count * CLIENTS
    assert value(loaded, "tether_slow_disconnects_total") == 0
    # Recoveries and disconnects, by outcome and by code.
    assert matching(final, "tether_recoveries_total") == {
        (("outcome", "recovered"),): 1,
        (("outcome", "not_recovered"),): 1,
        (("outcome", "failed"),): 0,
    }
    assert matching(final, "tether_disconnects_total") == {
        (("code", "4002"),): 1,  # u0, by the server API
        (("code", "client"),): 2,  # clients[1] and "b" closed their own
    }
    # Broker calls: every publish reached Redis, timed.
    publish_ok = value(
        final, "tether_broker_call_seconds_count", breaker="broker", op="publish", outcome="ok"
    )
    assert publish_ok == total
    publish_sum = value(
        final, "tether_broker_call_seconds_sum", breaker="broker", op="publish", outcome="ok"
    )
    assert 0 < publish_sum / publish_ok < 1.0  # seconds per call: a loopback Redis
    buckets = matching(final, "tether_broker_call_seconds_bucket", op="publish", outcome="ok")
    assert max(buckets.values()) == publish_ok  # le="+Inf" holds them all
