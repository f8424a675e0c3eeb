"""The cluster view: every node announces itself through the shared store, and
``POST /api/info`` on any node answers for all live ones (tether.cluster)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec
import pytest
from msgspec import Raw
from ops_kit import poll_until, redis_nodes

from tether import cluster
from tether.auth import mint_connection_token
from tether.errors import ClientError
from tether.protocol.channels import check_channel_name
from tether.protocol.messages import ClientInfo
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, running_server
from tether.testing.wsclient import WSClient
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration


async def info(server: Server) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{server.http_port}/api/info",
            json={},
            headers={"X-API-Key": TEST_API_KEY},
        ) as resp,
    ):
        assert resp.status == 200
        nodes: list[dict[str, Any]] = (await resp.json())["result"]["nodes"]
        return nodes


async def test_info_on_one_node_lists_itself_alone(server: Server) -> None:
    [node] = await info(server)
    assert node["name"] == server.node.name
    assert node["version"] == server.node.version
    assert set(node) >= {"uid", "num_clients", "num_users", "num_channels", "num_subs", "uptime"}
    assert 0 <= node["saturation"] <= 1


async def test_info_on_any_node_answers_for_every_live_node(redis_server: RedisServer) -> None:
    async with redis_nodes(redis_server, "node-a", "node-b") as (a, b):
        token = mint_connection_token(TEST_SECRET, "alice")
        async with await WSClient.open(b.port) as ws:
            await ws.call("connect", {"token": token})
            await ws.call("subscribe", {"channel": "chat:view"})

            async def b_announced_its_client() -> bool:
                nodes = {n["name"]: n for n in await info(a)}
                return nodes.keys() == {"node-a", "node-b"} and nodes["node-b"]["num_subs"] == 1

            # B announces every ANNOUNCE_INTERVAL: its client shows within two of them.
            await poll_until(b_announced_its_client, within=3 * cluster.ANNOUNCE_INTERVAL)
            from_a = await info(a)
            assert [n["name"] for n in from_a] == ["node-a", "node-b"]  # the answering node first
            assert from_a[0]["num_clients"] == 0
            assert from_a[1]["num_clients"] == 1
            assert [n["name"] for n in await info(b)] == ["node-b", "node-a"]


async def test_a_stopped_node_leaves_the_list_at_once(redis_server: RedisServer) -> None:
    async with redis_nodes(redis_server, "node-a") as (a,):
        config = msgspec.structs.replace(a.config, node_name="node-c")  # same cluster
        async with running_server(config) as c:

            async def both() -> bool:
                return [n["name"] for n in await info(a)] == ["node-a", "node-c"]

            await poll_until(both, within=3 * cluster.ANNOUNCE_INTERVAL)
            assert c.announcer.announced >= 1
        assert [n["name"] for n in await info(a)] == ["node-a"]  # withdrawn on stop


async def test_an_entry_not_refreshed_for_stale_after_is_left_out(
    redis_server: RedisServer,
) -> None:
    async with redis_nodes(redis_server, "node-a") as (a,):
        old = cluster.own_entry(a.node)
        gone = msgspec.structs.replace(
            old, uid="node-gone", name="node-gone", updated=time.time() - cluster.STALE_AFTER - 1
        )
        recent = msgspec.structs.replace(old, uid="node-z", name="node-z", updated=time.time())
        for entry in (gone, recent):
            data = ClientInfo(user="", client=entry.uid, conn_info=Raw(msgspec.json.encode(entry)))
            await a.node.presence_store.add(cluster.NODES_KEY, entry.uid, data)
        assert [n["name"] for n in await info(a)] == ["node-a", "node-z"]


def test_no_client_channel_can_name_the_node_entries() -> None:
    with pytest.raises(ClientError):
        check_channel_name(cluster.NODES_KEY, max_length=255)
