"""`tether-bench run` against an in-process Tether: every scenario, tiny fleets, exact counts.

Correctness of the tool, not speed: no timing is asserted. Each run must deliver every
publication exactly once and in order, and report the fields scripts rely on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tether.config import NamespaceConfig, ProxyConfig
from tether.server import Server
from tether.testing.backend import free_port
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether_bench import BenchOptions, run_bench
from tether_bench.compare import hook_outage_markdown
from tether_bench.deltabytes import measure as measure_delta_bytes

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


@pytest.mark.parametrize("protocol", ["tether", "tether-protobuf", "tether-mixed"])
async def test_fanout_delivers_every_publication_to_every_subscriber(
    server: Server, protocol: str
) -> None:
    # Checked connections parse offsets out of every frame: in Protobuf, and in a mixed
    # run whose connections alternate JSON and Protobuf.
    report = await run_bench(
        _options(
            server,
            "fanout",
            connections=12,
            duration=0.6,
            bursts=2,
            check_sample=4,
            protocol=protocol,
        )
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


async def test_connect_cost_sets_everyone_up_with_recovering_subscribes(server: Server) -> None:
    # 300: enough server CPU to be seen (the kernel counts it in 10 ms ticks; 30 connects
    # took under one tick, and the figure was None).
    report = await run_bench(_options(server, "connect-cost", connections=300))

    assert report.keys() >= COMMON_FIELDS
    assert report["connected"] == report["alive_at_end"] == 300
    assert report["connect_errors"] == 0
    assert report["subscribes_recovered"] == 600  # both channels recovered (nothing missed)
    assert report["connects_per_server_cpu_s"] > 0


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


# -- the resilience scenarios ------------------------------------------------------------------


@pytest.fixture
async def lanes_server() -> Any:
    """Namespaces of the resilience scenarios; a small queue bound, so that a client that
    stops reading is cut off quickly."""
    config = make_config(
        namespaces={
            "default": NamespaceConfig(),
            "bench": BENCH_NAMESPACE,
            "chat": NamespaceConfig(
                history_size=300,
                history_ttl=300,
                recover=True,
                allow_subscribe=True,
                lane="critical",
            ),
            "typing": NamespaceConfig(allow_subscribe=True, lane="ephemeral"),
        },
        outbound_queue_bytes=64 * 1024,
        max_connects_per_second=50,
        max_connects_burst=10,
    )
    async with running_server(config) as srv:
        yield srv


async def test_slow_consumers_are_cut_off_and_healthy_ones_get_everything(
    lanes_server: Server,
) -> None:
    report = await run_bench(
        _options(
            lanes_server,
            "slow-consumers",
            connections=6,
            slow=2,
            rate=200,
            duration=1.0,
            payload=40000,
            check_sample=3,
        )
    )

    _assert_exact(report)
    assert report["healthy"] == 6
    assert report["slow_disconnects"] == 2
    assert report["slow_closed_3008_seen"] == 2
    for phase in ("without_slow", "with_slow"):
        assert report[phase]["deliveries"] == report[phase]["expected_deliveries"] > 0


async def test_typing_storm_never_loses_chat_and_accounts_for_every_typing_frame(
    lanes_server: Server,
) -> None:
    report = await run_bench(
        _options(lanes_server, "typing-storm", connections=5, rate=20, duration=0.5, bursts=2)
    )

    _assert_exact(report)
    assert report["typing_accepted"] == 100  # 10 x 20/s for 0.5 s
    accounted = report["typing_delivered"] + report["typing_dropped"] + report["typing_coalesced"]
    assert accounted == report["typing_expected_frames"] == 100 * 5
    assert report["chat_only"]["deliveries"] == report["chat_only"]["expected_deliveries"]
    assert report["with_typing"]["deliveries"] == report["with_typing"]["expected_deliveries"]


async def test_reconnect_storm_recovers_every_client_exactly(lanes_server: Server) -> None:
    report = await run_bench(
        _options(lanes_server, "reconnect-storm", connections=30, channels=2, rate=50, outage=0.3)
    )

    _assert_exact(report)
    assert report["reconnected"] == 30
    assert report["reconnect_errors"] == 0
    assert report["recovered_true"] == 30
    assert report["recovered_false"] == 0
    # 30 reconnects against a burst of 10: some are refused with 503 and retried.
    assert report["refused_503"] == report["connects_refused_server"] > 0
    assert 1 <= report["recovery_broker_reads"] <= 2 * 2
    # Every client was admitted once more (tether_connects_admitted_total).
    assert report["admitted_server"] == 30


async def test_publish_burst_delivers_every_accepted_publication_exactly_once(
    lanes_server: Server,
) -> None:
    report = await run_bench(
        _options(
            lanes_server,
            "publish-burst",
            connections=5,
            calibrate=0.3,
            duration=0.5,
            factor=3,
            http_connections=16,
        )
    )

    _assert_exact(report)
    assert report["offered"] > 0
    # The memory broker never keeps a publish waiting, so no lane fills up: nothing is shed.
    assert report["shed_429"] == report["shed_server"] == 0
    assert report["accepted"] + report["shed_429"] + report["publish_errors"] == report["offered"]
    assert report["offsets_match_accepted"]
    assert report["deliveries"] == report["expected_deliveries"] == report["accepted"] * 5


async def test_delta_bytes_counts_every_update_for_all_four_subscribers() -> None:
    report = await measure_delta_bytes(updates=12)

    assert report["updates"] == 12
    assert set(report["bytes"]) == {"json", "json_delta", "protobuf", "protobuf_delta"}
    assert report["bytes"]["json_delta"] < report["bytes"]["json"]
    assert report["bytes"]["protobuf_delta"] < report["bytes"]["protobuf"]


# -- hook-outage: a hanging backend, a real HTTP server process ------------------------------


@pytest.fixture
def hook_backend() -> Iterator[str]:
    """tether_bench.peers.hook_backend in a process of its own; its root URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether_bench.peers.hook_backend", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 15
        while True:
            assert proc.poll() is None, "the hook backend exited"
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < end, "the hook backend did not open its port"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def hooks_server(hook_backend: str) -> Any:
    proxy = ProxyConfig(
        url=hook_backend + "/hooks",
        timeout=0.3,
        max_in_flight=4,
        breaker_failures=3,
        breaker_reset=1.0,
    )
    config = make_config(
        proxies={"app": proxy},
        rpc_proxy="app",
        namespaces={
            "default": NamespaceConfig(),
            "bench": BENCH_NAMESPACE,
            "hooked": NamespaceConfig(publish_proxy="app"),
        },
    )
    async with running_server(config) as srv:
        yield srv


async def test_hook_outage_opens_the_breaker_and_fanout_gets_everything(
    hooks_server: Server, hook_backend: str
) -> None:
    report = await run_bench(
        _options(
            hooks_server,
            "hook-outage",
            connections=10,
            rate=20,
            duration=1.5,
            bursts=1,
            hook_clients=4,
            hook_rate=20,
            backend_url=hook_backend,
        )
    )

    _assert_exact(report)
    for phase in ("baseline", "hang"):
        assert report[phase]["deliveries"] == report[phase]["expected_deliveries"] > 0
        assert report[phase]["latency"]["samples"] > 0
    [opened] = report["breaker_opened_after_s"]
    assert opened is not None  # /metrics showed the publish hook's breaker open
    # open, or half-open while its probe (breaker_reset 1 s) waits on the hung backend
    assert report["breaker_state_end_of_hang"][0] in ("open", "half_open")
    assert report["breaker_closed_after_heal_s"][0] is not None
    publish = report["hook_publish"]
    # Every hooked publish during the hang: refused with error 100, temporary (a call still
    # waiting when the backend was healed may have been accepted after all).
    assert publish["answered"] == publish["temporary_100"] + publish["ok"] > 0
    assert publish["other_errors"] == 0
    assert report["hook_publish_open"]["temporary_100"] > 0
    assert report["hook_calls_unanswered"] == 0
    # The RPC hook has its own bulkhead and breaker: every RPC got its result.
    rpc = report["hook_rpc"]
    assert rpc["answered"] == rpc["ok"] > 0
    assert report["rpc_hook_failures_server"] == 0
    # The backend's own count: the requests the node sent (each timed out at the node).
    counters = report["publish_hook_server"]
    reached = (
        report["backend_publish_requests_before_open"]
        + report["backend_publish_requests_after_open"]
    )
    assert reached == counters["requests"] >= 3
    assert counters["timeouts"] >= 3
    assert counters["circuit_open"] > 0
    assert report["p99_ratio"] is not None

    # docs/benchmarks.md's section is rendered from this report (as compare records it)
    report.update(row="tether-hooks", command="tether-bench run hook-outage")
    limits = {"timeout": 0.3, "max_in_flight": 4, "breaker_failures": 3, "breaker_reset": 1}
    report["proxy"] = limits
    page = "\n".join(hook_outage_markdown({("hook-outage", "tether-hooks"): report}))
    assert f"**{publish['temporary_100']:,} error 100 (temporary)**" in page
    assert "### Targets of issue 14 (hanging backend)" in page
