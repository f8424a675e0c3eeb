"""Webhooks through a real node: events POSTed in batches to a real HTTP receiver, at least
once, unique ids, a bounded buffer across a 30 s outage (memory broker, and Redis or a
Redis Cluster with a node restarted during the outage)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from sdk_kit import HttpApi, SdkClients, next_event, subscribe

from tether.config import Config, WebhookConfig
from tether.server import Server
from tether.testing.backend import ScriptedBackend, free_port
from tether.testing.servers import make_config, running_server
from tether_bench.redisserver import RedisClusterNodes, RedisServer

pytestmark = pytest.mark.integration

OUTAGE = 30.0
"""Seconds the receiver is down in the outage tests (the issue's figure)."""


def webhook_config(port: int, **options: Any) -> WebhookConfig:
    values: dict[str, Any] = {
        "url": f"http://127.0.0.1:{port}/hook",
        "timeout": 1.0,
        "breaker_reset": 1.0,
        "namespaces": ["chat"],
        **options,
    }
    return WebhookConfig(**values)


class Receiver:
    """What the webhook receiver got, by event id and by publication number."""

    def __init__(self, backend: ScriptedBackend) -> None:
        self.backend = backend
        backend.answer("/hook", {})

    def events(self) -> list[dict[str, Any]]:
        return [event for body in self.backend.bodies("/hook") for event in body["events"]]

    def numbers(self) -> dict[int, set[str]]:
        """Publication number -> the ids it arrived with."""
        out: defaultdict[int, set[str]] = defaultdict(set)
        for event in self.events():
            if event["type"] == "publication":
                out[event["data"]["n"]].add(event["id"])
        return out

    async def until_numbers(self, expected: set[int], within: float) -> None:
        deadline = time.monotonic() + within
        while not expected <= set(self.numbers()):
            assert time.monotonic() < deadline, sorted(expected - set(self.numbers()))[:10]
            with contextlib.suppress(TimeoutError):  # backoff may wait longer than that
                await self.backend.wait_count("/hook", self.backend.count("/hook") + 1)


@contextlib.asynccontextmanager
async def publisher(server: Server, channel: str, interval: float) -> AsyncIterator[list[int]]:
    """Publishes ``{"n": i}`` every ``interval`` seconds until the block ends; yields the
    numbers published so far (every publish was accepted: 200)."""
    sent: list[int] = []
    stop = asyncio.Event()

    async def run(http: HttpApi) -> None:
        n = 0
        while not stop.is_set():
            await http.call("publish", {"channel": channel, "data": {"n": n}})
            sent.append(n)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async with aiohttp.ClientSession() as session:
        task = asyncio.ensure_future(run(HttpApi(session, server)))
        try:
            yield sent
        finally:
            stop.set()
            await task


async def test_connect_subscribe_publication_unsubscribe_disconnect_events_arrive(
    sdk: SdkClients,
) -> None:
    async with ScriptedBackend() as backend:
        receiver = Receiver(backend)
        config = make_config(webhook=webhook_config(backend.port))
        async with running_server(config) as server:
            client, events = await sdk.connect(server.port, "alice")
            sub, sub_events, _ = await subscribe(client, "chat:room")
            async with aiohttp.ClientSession() as session:
                http = HttpApi(session, server)
                await http.call("publish", {"channel": "chat:room", "data": {"n": 1}})
                await next_event(sub_events.publications)
                await sub.unsubscribe()
                await next_event(sub_events.unsubscribed)
                # the SDK sends its unsubscribe in the background: until the node has it
                async with asyncio.timeout(10):
                    while (await http.call("presence", {"channel": "chat:room"}))["presence"]:  # noqa: ASYNC110  (polls the node over HTTP)
                        await asyncio.sleep(0.05)
            await client.disconnect()
            await next_event(events.disconnected)
            deadline = time.monotonic() + 10
            while len({e["type"] for e in receiver.events()}) < 5:
                assert time.monotonic() < deadline, receiver.events()
                await backend.wait_count("/hook", backend.count("/hook") + 1)
    by_type = {e["type"]: e for e in receiver.events()}
    assert by_type["connect"]["user"] == "alice"
    assert by_type["subscribe"]["channel"] == "chat:room"
    assert by_type["publication"]["data"] == {"n": 1}
    assert by_type["publication"]["offset"] == 1
    assert by_type["unsubscribe"]["channel"] == "chat:room"
    assert by_type["disconnect"]["client"] == by_type["connect"]["client"]
    ids = [e["id"] for e in receiver.events()]
    assert len(ids) == len(set(ids))
    assert all(uuid.UUID(i) for i in ids)


async def test_a_receiver_down_30s_gets_every_event_once_it_is_back() -> None:
    port = free_port()
    config = make_config(webhook=webhook_config(port, events=["publication"]))
    backend = ScriptedBackend(port=port)
    receiver = Receiver(backend)
    async with running_server(config) as server:
        outbox = server.notifier.webhook
        assert outbox is not None
        highest = 0
        try:
            async with publisher(server, "chat:feed", 0.02) as sent:
                began = time.monotonic()
                while time.monotonic() - began < OUTAGE:
                    await asyncio.sleep(0.5)
                    highest = max(highest, outbox.store.buffered())
                await backend.start()  # back, while the stream goes on
                await asyncio.sleep(1.0)
            await receiver.until_numbers(set(sent), 30)
        finally:
            await backend.stop()
    got = receiver.numbers()
    assert len(sent) > OUTAGE / 0.02 / 2  # a steady stream (load may slow it)
    assert set(got) == set(sent)  # every event arrived
    assert all(len(ids) == 1 for ids in got.values())  # duplicates, if any, share an id
    assert outbox.dropped == 0
    assert 0 < highest <= config.webhook.max_buffered  # held, and bounded


async def test_a_full_buffer_drops_new_events_and_says_so() -> None:
    port = free_port()
    config = make_config(webhook=webhook_config(port, events=["publication"], max_buffered=50))
    async with running_server(config) as server, aiohttp.ClientSession() as session:
        http = HttpApi(session, server)
        for n in range(120):
            await http.call("publish", {"channel": "chat:feed", "data": {"n": n}})
        outbox = server.notifier.webhook
        assert outbox is not None
        assert outbox.store.buffered() <= 50
        assert outbox.dropped >= 70
        async with session.get(f"http://127.0.0.1:{server.http_port}/ready") as response:
            ready = await response.json()
        assert response.status == 200  # clients are unaffected: the node stays ready
        assert ready["outboxes"]["webhook"]["full"] is True
        assert ready["outboxes"]["webhook"]["dropped"] >= 70
        async with session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response:
            metrics = await response.text()
        assert 'tether_outbox_dropped_total{outbox="webhook"}' in metrics
        async with ScriptedBackend(port=port) as backend:
            receiver = Receiver(backend)
            await receiver.until_numbers(set(range(50)), 20)  # the oldest were kept


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes() as nodes:
        yield nodes


@pytest.mark.parametrize("store", ["redis", "redis-cluster"])
async def test_on_redis_a_node_restarted_during_the_outage_loses_nothing(
    store: str, request: pytest.FixtureRequest
) -> None:
    # One Redis, or a Redis Cluster (the stream on the shard of its key's slot).
    if store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        where: dict[str, Any] = {"redis_url": redis_server.url}
    else:
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        where = {"redis_url": nodes.url, "redis_cluster": True}
    port = free_port()
    prefix = f"t-{uuid.uuid4().hex[:8]}"

    def config() -> Config:
        return make_config(
            broker="redis",
            redis_prefix=prefix,
            **where,
            node_name="node-a",
            webhook=webhook_config(port, events=["publication"]),
        )

    published: list[int] = []
    async with running_server(config()) as first:
        async with publisher(first, "chat:feed", 0.02) as sent:
            await asyncio.sleep(OUTAGE / 2)
        published += sent
    async with running_server(config()) as second:
        async with publisher(second, "chat:feed", 0.02) as sent:
            await asyncio.sleep(OUTAGE / 2)
        # the second incarnation's numbers restart at 0: tell them apart
        published += [n + 1_000_000 for n in sent]
        async with ScriptedBackend(port=port) as backend:
            receiver = Receiver(backend)
            deadline = time.monotonic() + 60
            while len(receiver.events()) < len(published):
                assert time.monotonic() < deadline, (len(receiver.events()), len(published))
                with contextlib.suppress(TimeoutError):
                    await backend.wait_count("/hook", backend.count("/hook") + 1)
            events = receiver.events()
    ids_by_key: defaultdict[tuple[str, int], set[str]] = defaultdict(set)
    for event in events:
        ids_by_key[(event["epoch"], event["offset"])].add(event["id"])
    assert len(ids_by_key) == len(published)  # every publication, from both incarnations
    assert all(len(ids) == 1 for ids in ids_by_key.values())
