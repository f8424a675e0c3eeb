"""A three-node Tether cluster over Redis behind HAProxy, with a fleet of reconnecting
clients and a publisher on the server API, for the failure tests.

The cluster is real processes (:mod:`tether_bench.cluster`); the test owns them all and
stops them in ``finally``. Every wait is bounded by the caller's ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sdk_kit import SdkClients, SubEvents, subscribe

from tether.auth import mint_connection_token
from tether_bench.cluster import (
    CLUSTER_API_KEY,
    CLUSTER_SECRET,
    Follower,
    HAProxy,
    NodeProcess,
)
from tether_bench.redisserver import RedisServer

CHANNELS = ["chat:room-0", "chat:room-1", "chat:room-2"]
"""Every client subscribes to all of them."""


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[NodeProcess]
    lb: HAProxy

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)


def require_haproxy() -> None:
    """Fail (not skip) when HAProxy is missing: these tests are the proof that Tether works
    behind a real load balancer, and CI installs it (.ci/run)."""
    if shutil.which("haproxy") is None and shutil.which("haproxy", path="/usr/sbin") is None:
        pytest.fail(
            "haproxy is not installed: the cluster tests need a real load balancer "
            "(apt-get install -y haproxy; .ci/run installs it)",
            pytrace=False,
        )


@asynccontextmanager
async def running_cluster(workdir: Path, size: int = 3) -> AsyncIterator[Cluster]:
    """A fresh redis-server of its own, ``size`` nodes on it, HAProxy in front; all up and
    ready on entry, all stopped on exit."""
    require_haproxy()
    redis = RedisServer()
    await asyncio.to_thread(redis.start)
    nodes = [NodeProcess(f"node-{i}", workdir, redis.url) for i in range(size)]
    lb = HAProxy(workdir, nodes)
    try:
        for node in nodes:
            node.start()
        async with asyncio.timeout(60):
            for node in nodes:
                await node.wait_ready()
            lb.start()
            await lb.wait_up()
        yield Cluster(redis, nodes, lb)
    finally:
        lb.stop()
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))
        await asyncio.to_thread(redis.kill)


def token(user: str) -> str:
    return mint_connection_token(CLUSTER_SECRET, user)


@asynccontextmanager
async def follower_fleet(port: int, count: int) -> AsyncIterator[list[Follower]]:
    """``count`` raw-protocol followers of :data:`CHANNELS` on ``port``, each run by a task
    this context owns; returns once every one of them is connected and subscribed."""
    followers = [Follower(port, token(f"user-{i}"), list(CHANNELS)) for i in range(count)]
    tasks = [asyncio.create_task(f.run(), name=f"follower-{i}") for i, f in enumerate(followers)]
    try:
        async with asyncio.timeout(60):
            for follower in followers:
                await follower.wait_until(lambda f: f.connected)
        yield followers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@asynccontextmanager
async def sdk_fleet(port: int, count: int) -> AsyncIterator[list[dict[str, SubEvents]]]:
    """``count`` centrifuge-python clients subscribed to every channel of :data:`CHANNELS`
    through ``port``; yields each client's subscription events per channel."""
    clients = SdkClients()
    try:
        fleet = []
        for i in range(count):
            client, _ = await clients.connect(port, token=token(f"sdk-{i}"))
            subs = {}
            for channel in CHANNELS:
                _, events, _ = await subscribe(client, channel)
                subs[channel] = events
            fleet.append(subs)
        yield fleet
    finally:
        await clients.close()


@dataclass
class Attempt:
    channel: str
    seq: int
    status: int
    retry_after: str | None
    answer: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300 and "result" in self.answer


@dataclass
class Publisher:
    """Publishes ``{"seq": n}`` through the server API on ``url`` (the balancer or one
    node) and records every attempt."""

    session: aiohttp.ClientSession
    url: str
    attempts: list[Attempt] = field(default_factory=list)

    async def publish(self, channel: str, seq: int, *, idempotency_key: str = "") -> Attempt:
        body: dict[str, Any] = {"channel": channel, "data": {"seq": seq}}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        try:
            async with self.session.post(
                f"{self.url}/api/publish", json=body, headers={"X-API-Key": CLUSTER_API_KEY}
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {}
                attempt = Attempt(
                    channel, seq, response.status, response.headers.get("Retry-After"), answer
                )
        except aiohttp.ClientError as exc:
            attempt = Attempt(channel, seq, 0, None, {"exception": repr(exc)})
        self.attempts.append(attempt)
        return attempt

    async def publish_until_accepted(self, channel: str, seq: int) -> Attempt:
        """Retry with one idempotency key until accepted (safe: stored once)."""
        while True:
            attempt = await self.publish(channel, seq, idempotency_key=f"{channel}/{seq}")
            if attempt.accepted:
                return attempt
            await asyncio.sleep(0.05)

    def accepted(self, channel: str) -> list[Attempt]:
        return [a for a in self.attempts if a.channel == channel and a.accepted]


async def history(session: aiohttp.ClientSession, url: str, channel: str) -> dict[str, Any]:
    async with session.post(
        f"{url}/api/history",
        json={"channel": channel, "limit": -1},
        headers={"X-API-Key": CLUSTER_API_KEY},
    ) as response:
        answer: dict[str, Any] = await response.json()
    assert "result" in answer, answer
    result: dict[str, Any] = answer["result"]
    return result


def seqs(items: Iterable[Any]) -> list[int]:
    return [item["seq"] for item in items]
