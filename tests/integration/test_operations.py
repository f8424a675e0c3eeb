"""What an operator sees on the HTTP port: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET
from tether.testing.wsclient import WSClient

pytestmark = pytest.mark.integration

METRICS_REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "metrics.md"


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
    # chat is a standard-lane namespace: counted there, once per publication.
    assert float(samples['tether_publications_total{lane="standard"}']) == 1
    assert float(samples['tether_publications_total{lane="critical"}']) == 0
    assert float(samples['tether_deliveries_total{lane="standard"}']) == 1
    assert 'tether_publishes_shed_total{lane="standard"}' in samples


def _documented_metrics() -> dict[str, str]:
    """``tether_*`` name -> type, from the table rows of docs/reference/metrics.md (first
    cell a backticked name as exposed, counters with ``_total``; second cell the type)."""
    documented: dict[str, str] = {}
    for line in METRICS_REFERENCE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 1:
            name = re.fullmatch(r"`(tether_\w+)`", cells[0])
            if name is not None:
                assert name[1] not in documented, f"{name[1]} documented twice"
                documented[name[1]] = cells[1]
    return documented


async def test_every_exposed_metric_is_documented_in_the_metrics_reference(
    server: Server,
) -> None:
    async with aiohttp.ClientSession() as http, http.get(_url(server, "/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    # The parser names a counter family without its `_total`; the text format (and the
    # reference) names it with.
    exposed = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(text)
        if family.name.startswith("tether_")
    }
    documented = _documented_metrics()
    assert set(exposed) == set(documented), (
        f"exposed but not documented: {sorted(set(exposed) - set(documented))}; "
        f"documented but not exposed: {sorted(set(documented) - set(exposed))}"
    )
    assert exposed == documented


async def test_event_loop_lag_shows_how_late_the_loop_ran(server: Server) -> None:
    await asyncio.sleep(0.05)  # housekeeping is asleep, due within the next second
    time.sleep(1.5)  # noqa: ASYNC251  (a CPU-bound stretch: the loop runs nothing else)
    async with asyncio.timeout(5):
        while server.node.loop_lag == 0.0:  # noqa: ASYNC110  (the next tick sets it)
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http, http.get(_url(server, "/metrics")) as resp:
            text = await resp.text()
    [line] = [x for x in text.splitlines() if x.startswith("tether_event_loop_lag_seconds ")]
    assert float(line.split()[1]) >= 0.5


async def test_admin_page_is_served_and_reads_only_endpoints_that_exist(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(_url(server, "/admin")) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        # What the page's script fetches: /metrics, and API methods with the typed key.
        assert 'fetch("/metrics"' in page
        methods = set(re.findall(r'api\("(\w+)"', page))
        assert methods == {"info", "channels"}
        for method in methods:
            async with http.post(
                _url(server, f"/api/{method}"), json={}, headers={"X-API-Key": TEST_API_KEY}
            ) as resp:
                assert resp.status == 200
                assert "result" in await resp.json()
        # Every metric the page shows is one the node exposes.
        async with http.get(_url(server, "/metrics")) as resp:
            exposed = {
                line.split("{")[0].split(" ")[0]
                for line in (await resp.text()).splitlines()
                if line.startswith("tether_")
            }
    shown = set(re.findall(r'\["(tether_\w+)"', page))
    assert shown
    assert shown <= exposed, shown - exposed
