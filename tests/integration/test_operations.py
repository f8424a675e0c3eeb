"""What an operator sees on the HTTP port: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import aiohttp
import pytest

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET
from tether.testing.wsclient import WSClient

pytestmark = pytest.mark.integration


def _url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


async def test_health_answers_ok_while_the_process_runs(server: Server) -> None:
    async with aiohttp.ClientSession() as http, http.get(_url(server, "/health")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_ready_turns_503_when_the_node_starts_draining(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(_url(server, "/ready")) as resp:
            assert resp.status == 200
        server.node.closing = True
        async with http.get(_url(server, "/ready")) as resp:
            assert resp.status == 503
            assert (await resp.json())["closing"] is True


async def test_metrics_count_connections_and_publications(server: Server) -> None:
    token = mint_connection_token(TEST_SECRET, "alice")
    async with await WSClient.open(server.port) as ws:
        await ws.call("connect", {"token": token})
        await ws.call("subscribe", {"channel": "chat:metrics"})
        async with aiohttp.ClientSession() as http:
            async with http.post(
                _url(server, "/api/publish"),
                json={"channel": "chat:metrics", "data": {"n": 1}},
                headers={"X-API-Key": TEST_API_KEY},
            ) as resp:
                assert resp.status == 200
            await ws.next_push()
            async with http.get(_url(server, "/metrics")) as resp:
                assert resp.status == 200
                text = await resp.text()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples["tether_connections"]) == 1
    assert float(samples["tether_subscriptions"]) == 1
    assert float(samples["tether_publications_total"]) == 1
    assert float(samples["tether_deliveries_total"]) == 1
    assert 'tether_publishes_shed_total{lane="standard"}' in samples
