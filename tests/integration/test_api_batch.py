"""The server API's ``batch``: commands answered in order, each as if sent alone, on the
memory broker and over Redis (where a run of consecutive publishes goes to Redis as one
pipeline: the answers and what subscribers see must not show it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether.testing.wsclient import WSClient
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "redis"])
async def node(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Server]:
    if request.param == "memory":
        config = make_config()
    else:
        prefix = f"batch{uuid.uuid4().hex[:8]}"
        config = make_config(broker="redis", redis_url=redis_server.url, redis_prefix=prefix)
    async with running_server(config) as server:
        yield server


async def _batch(server: Server, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{server.http_port}/api/batch"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"commands": commands}, headers={"X-API-Key": TEST_API_KEY}) as resp,
    ):
        assert resp.status == 200
        replies: list[dict[str, Any]] = (await resp.json())["replies"]
        return replies


def _publish(channel: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"publish": {"channel": channel, "data": data, **extra}}


async def test_batch_answers_each_command_in_order_as_if_sent_alone(node: Server) -> None:
    replies = await _batch(
        node,
        [
            _publish("chat:a", 1),
            _publish("chat:a", 2),
            _publish("nope:a", 3),  # unknown namespace: its own error, the rest go on
            _publish("chat:b", 4),
            _publish("chat:a", 5, idempotency_key="k"),
            _publish("chat:a", 5, idempotency_key="k"),  # a duplicate: the first's position
            {"history": {"channel": "chat:a", "limit": -1}},
            _publish("chat:a", 6),
        ],
    )
    offsets = [r["publish"]["offset"] if "publish" in r else None for r in replies]
    assert offsets == [1, 2, None, 1, 3, 3, None, 4]
    assert replies[2] == {"error": {"code": 102, "message": "unknown channel"}}
    history = replies[6]["history"]
    assert [p["data"] for p in history["publications"]] == [1, 2, 5]
    assert history["offset"] == 3
    assert {replies[i]["publish"]["epoch"] for i in (0, 1, 4, 5, 7)} == {history["epoch"]}


async def test_subscribers_get_a_batch_of_publishes_once_each_in_order(node: Server) -> None:
    token = mint_connection_token(TEST_SECRET, "alice")
    async with await WSClient.open(node.port) as ws:
        await ws.call("connect", {"token": token})
        await ws.call("subscribe", {"channel": "chat:room"})
        await ws.call("subscribe", {"channel": "chat:other"})
        commands = [_publish("chat:room" if i % 4 else "chat:other", i) for i in range(20)]
        replies = await _batch(node, commands)
        assert [r["publish"]["offset"] for r in replies] == [
            (i // 4) + 1 if i % 4 == 0 else i - i // 4 for i in range(20)
        ]
        pushes: list[dict[str, Any]] = []
        while len(pushes) < 20:  # chat has join/leave pushes too: only publications count
            if "pub" in (push := await ws.next_push()):
                pushes.append(push)
    seen: dict[str, list[tuple[int, Any]]] = {}
    for push in pushes:
        pub = push["pub"]
        seen.setdefault(push["channel"], []).append((pub["offset"], pub["data"]))
    assert seen["chat:room"] == [(i - i // 4, i) for i in range(20) if i % 4]
    assert seen["chat:other"] == [((i // 4) + 1, i) for i in range(0, 20, 4)]
