"""Offline push through real nodes: a publication to a channel that names users goes to the
push receiver for every named user with no live subscription anywhere in the cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sdk_kit import HttpApi, SdkClients, subscribe

from tether.config import Config, NamespaceConfig, OutboxConfig
from tether.server import Server
from tether.testing.backend import ScriptedBackend
from tether.testing.servers import make_config, running_server
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

PERSONAL = NamespaceConfig(presence=True, allow_subscribe=True, push=True)


def push_config(url: str, **overrides: Any) -> Config:
    return make_config(
        push=OutboxConfig(url=f"{url}/push", timeout=1.0, breaker_reset=1.0),
        namespaces={"default": PERSONAL, "dm": PERSONAL},
        **overrides,
    )


class Pushes:
    def __init__(self, backend: ScriptedBackend) -> None:
        self.backend = backend
        backend.answer("/push", {})

    def events(self) -> list[dict[str, Any]]:
        return [e for body in self.backend.bodies("/push") for e in body["events"]]

    async def until_marker(self, marker: str) -> list[dict[str, Any]]:
        """Every push up to the one for user ``marker`` (published last: the outbox keeps
        order, so whatever was not pushed before it was not pushed at all)."""
        while not any(e["user"] == marker for e in self.events()):
            await self.backend.wait_count("/push", self.backend.count("/push") + 1)
        events = self.events()
        return events[: next(i for i, e in enumerate(events) if e["user"] == marker)]


@pytest.fixture
async def receiver() -> AsyncIterator[Pushes]:
    async with ScriptedBackend() as backend:
        yield Pushes(backend)


async def publish(server: Server, channel: str, data: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        await HttpApi(session, server).call("publish", {"channel": channel, "data": data})


async def test_a_user_with_no_connection_gets_a_push(receiver: Pushes) -> None:
    async with running_server(push_config(receiver.backend.url)) as server:
        await publish(server, "#alice", {"text": "hi alice"})
        await publish(server, "#marker", {})
        [push] = await receiver.until_marker("marker")
    assert push["type"] == "push"
    assert (push["user"], push["channel"], push["data"]) == (
        "alice",
        "#alice",
        {"text": "hi alice"},
    )
    assert push["offset"] == 0  # no history in this namespace
    assert push["id"]


async def test_a_connected_subscriber_gets_no_push_and_only_the_absent_dm_member_does(
    receiver: Pushes, sdk: SdkClients
) -> None:
    async with running_server(push_config(receiver.backend.url)) as server:
        alice, _ = await sdk.connect(server.port, "alice")
        await subscribe(alice, "#alice")
        await subscribe(alice, "dm:42#alice,bob")
        await publish(server, "#alice", {"text": "you are online"})
        await publish(server, "dm:42#alice,bob", {"text": "hi"})
        await publish(server, "#marker", {})
        pushes = await receiver.until_marker("marker")
    assert [(p["user"], p["channel"]) for p in pushes] == [("bob", "dm:42#alice,bob")]


async def test_a_user_connected_to_another_node_gets_no_push(
    receiver: Pushes, sdk: SdkClients, redis_server: RedisServer
) -> None:
    prefix = f"push-{uuid.uuid4().hex[:8]}"
    redis = {"broker": "redis", "redis_url": redis_server.url, "redis_prefix": prefix}
    config = push_config(receiver.backend.url, **redis)
    async with running_server(config) as node_a, running_server(config) as node_b:
        alice, _ = await sdk.connect(node_b.port, "alice")
        await subscribe(alice, "#alice")
        await publish(node_a, "#alice", {"text": "on node b"})
        await publish(node_a, "#carol", {"text": "nobody home"})
        await publish(node_a, "#marker", {})
        pushes = await receiver.until_marker("marker")
    assert [(p["user"], p["channel"]) for p in pushes] == [("carol", "#carol")]
