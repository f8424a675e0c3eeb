"""`tether bench` against an in-process Tether: every scenario, tiny fleets, exact counts.

Correctness of the tool, not speed: no timing is asserted. Each run must deliver every
publication exactly once and in order, and report the fields scripts rely on.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tether.bench import BenchOptions, run_bench
from tether.config import NamespaceConfig
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server

pytestmark = pytest.mark.integration

BENCH_NAMESPACE = NamespaceConfig(
    history_size=100, history_ttl=300, recover=True, allow_subscribe=True
)
COMMON_FIELDS = {
    "scenario",
    "target",
    "protocol",
    "connections",
    "connected",
    "alive_at_end",
    "client_cpu_percent",
    "server_cpu_percent",
    "server_rss_mib",
    "started_at",
}


def _options(server: Server, scenario: str, **overrides: Any) -> BenchOptions:
    options = BenchOptions(
        scenario=scenario,
        url=f"ws://127.0.0.1:{server.port}/connection/websocket",
        api_url=f"http://127.0.0.1:{server.http_port}/api",
        api_key=TEST_API_KEY,
        token_secret=TEST_SECRET,
        server_pid=os.getpid(),  # the server runs in this process
        progress=False,
    )
    for key, value in overrides.items():
        setattr(options, key, value)
    return options


@pytest.fixture
async def server() -> Any:
    config = make_config(namespaces={"default": NamespaceConfig(), "bench": BENCH_NAMESPACE})
    async with running_server(config) as srv:
        yield srv


def _assert_exact(report: dict[str, Any]) -> None:
    assert report["losses"] == 0
    assert report["duplicates"] == 0
    assert report["order_violations"] == 0
    assert report["publish_errors"] == 0
    assert report["checked_connections"] > 0
    assert report["alive_at_end"] == report["connections"]


async def test_fanout_delivers_every_publication_to_every_subscriber(server: Server) -> None:
    report = await run_bench(
        _options(server, "fanout", connections=12, duration=0.6, bursts=2, check_sample=4)
    )

    assert report.keys() >= COMMON_FIELDS
    _assert_exact(report)
    assert report["publications"] > 0
    assert report["deliveries"] == report["expected_deliveries"] == report["publications"] * 12
    assert len(report["burst_deliveries_per_s"]) == 2
    assert report["deliveries_per_s"] > 0
    assert report["latency"]["samples"] > 0


async def test_fanout_counts_unchecked_connections_exactly_too(server: Server) -> None:
    report = await run_bench(
        _options(server, "fanout", connections=10, duration=0.4, bursts=1, check_sample=1)
    )

    _assert_exact(report)
    assert report["checked_connections"] == 1
    assert report["deliveries"] == report["publications"] * 10


async def test_rooms_delivers_personal_and_group_publications(server: Server) -> None:
    report = await run_bench(_options(server, "rooms", connections=25, rate=200, duration=0.5))

    assert report.keys() >= COMMON_FIELDS
    _assert_exact(report)
    assert report["checked_connections"] == 25
    assert report["publications"] == 100
    # half to personal channels (1 member), half to 10-member groups (the last has 5)
    assert report["deliveries"] == report["expected_deliveries"] > report["publications"]
    assert {"p50_ms", "p99_ms", "p999_ms"} <= report["latency"].keys()


async def test_idle_reports_rss_per_connection_and_keeps_everyone(server: Server) -> None:
    report = await run_bench(_options(server, "idle", connections=30, duration=0.2, settle=0.1))

    assert report.keys() >= COMMON_FIELDS
    assert report["connected"] == report["alive_at_end"] == 30
    assert report["channels_per_connection"] == 2
    assert report["rss_per_connection_kib"] is not None


async def test_latency_calibrates_then_reports_percentiles(server: Server) -> None:
    report = await run_bench(
        _options(server, "latency", connections=10, duration=0.5, calibrate=0.3)
    )

    assert report.keys() >= COMMON_FIELDS
    _assert_exact(report)
    assert report["calibrated_max_deliveries_per_s"] > 0
    assert report["rate"] > 0
    latency = report["latency"]
    assert latency["samples"] > 0
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["p999_ms"] <= latency["max_ms"]


async def test_refused_connections_are_reported_not_hidden(server: Server) -> None:
    options = _options(server, "fanout", connections=3, duration=0.2, bursts=1)
    options.token_secret = "not-the-secret-" + "y" * 32

    with pytest.raises(ConnectionError, match="no connection"):
        await run_bench(options)
