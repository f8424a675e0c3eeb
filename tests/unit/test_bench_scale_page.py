"""The scale section of docs/benchmarks.md (``tether-bench scale``, `make bench-scale`) follows
its data: titles, counts and verdicts of the connection-count parts come from the figures,
and ``--only`` keeps the other parts' figures."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tether_bench import scale

CLEAN = {"losses": 0, "duplicates": 0, "order_violations": 0}


def connections_part(total: int, workers: int, procs: int, spread: int) -> dict[str, Any]:
    sizes = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    return {
        "connections": total,
        "bench_processes": procs,
        "bench_sizes": sizes,
        "source_addresses": spread,
        "rate_per_process": 150,
        "duration_s": 60,
        "nofile_soft": 20_000,
        "measured": "2026-12-02 01:00 UTC",
        "workers": workers,
        "connected": total,
        "alive_at_end": total,
        "checked_connections": total,
        "connect_errors": 0,
        "refused_retried": 1_234,
        "connect_all_s": 100.0,
        "fds_per_worker": [total // workers + 20] * workers,
        "rss_before_mib": 60.0 * workers,
        "rss_connected_mib": 60.0 * workers + total * 4.5 / 1024,
        "rss_connected_per_worker_mib": [100.0] * workers,
        "rss_end_mib": 900.0,
        "rss_peak_mib": 950.0,
        "rss_per_connection_kib": 4.5,
        "worker_cpu_connect_s": 130.0,
        "worker_cpu_connect_percent": 130.0,
        "worker_cpu_per_connect_ms": 1.3,
        "worker_cpu_publish_percent": 70.0,
        "redis_cpu_publish_percent": 8.0,
        "publish_phase_s": 66.0,
        "publications": 54_000,
        "publish_errors": 0,
        "deliveries": 600_000,
        "expected_deliveries": 600_000,
        "latency_p50_ms": [2.0] * procs,
        "latency_p99_ms": [30.0] * procs,
        "load_before": [2.0, 2.0, 2.0],
        "load_after": [3.0, 3.0, 3.0],
        "errors": [],
        "elapsed_s": 250.0,
        "command": ".venv/bin/tether-bench run rooms --url ws://127.0.0.1:19030/x -n 16667",
        "reports": [{"publisher_late": 0}] * procs,
        **CLEAN,
    }


def page(data: dict[str, Any]) -> str:
    return scale.render({"meta": {"date": "2026-12-02 01:00 UTC", "nproc": 2}, **data})


def test_the_hundred_thousand_section_is_written_from_its_figures() -> None:
    text = page({"hundred": connections_part(100_000, 7, 6, 8)})
    assert "## Scale-out on one machine: workers, a 3-node cluster, 100,000 connections" in text
    assert "### 100,000 connections on this 2-core machine (issue 11)" in text
    assert "`tether serve --workers 7`" in text
    assert "six `tether-bench run rooms` processes of about 16,667 connections" in text
    assert "127.0.0.2-127.0.0.9 (`--source-addresses 8`: about 12,500 connections" in text
    assert "(200,000 subscriptions)" in text
    assert "`-n` 16,667 / 16,667 / 16,667 / 16,667 / 16,666 / 16,666" in text
    assert "- **100,000 connections: met.** 100,000 set up" in text
    assert "1,234 upgrades refused with 503" in text


def test_a_loss_in_the_hundred_thousand_run_is_a_miss_on_the_page() -> None:
    text = page({"hundred": {**connections_part(100_000, 7, 6, 8), "losses": 3}})
    assert "- **100,000 connections: MISSED.**" in text
    assert "not every publication delivered exactly once" in text
    assert "**3 / 0 / 0**" in text


def test_publishers_behind_schedule_are_said_to_be() -> None:
    on_time = page({"hundred": connections_part(100_000, 7, 6, 8)})
    assert "no publisher was late for any of its 9,000 publications" in on_time
    late = {**connections_part(100_000, 7, 6, 8), "reports": [{"publisher_late": 500}] * 6}
    text = page({"hundred": late})
    assert "the publishers fell behind their schedule" in text
    assert "on 500, 500, 500, 500, 500, 500 of their 1-ms scheduling ticks" in text
    assert "the 60 s of publications took 66.0 s" in text


def test_both_connection_parts_are_rendered_each_against_its_own_goal() -> None:
    text = page(
        {
            "hundred": connections_part(100_000, 7, 6, 8),
            "fifty": connections_part(50_000, 3, 3, 4),
        }
    )
    assert "## Scale-out on one machine: workers, a 3-node cluster, 100,000 connections\n" in text
    assert "- **100,000 connections: met.**" in text
    assert "- **50,000 connections: met.**" in text
    assert "### 50,000 connections on this 2-core machine (issue 3)" in text
    assert "`tether serve --workers 3`" in text


def test_only_one_part_keeps_the_other_parts_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_path, out = tmp_path / "scale.json", tmp_path / "benchmarks.md"
    fifty = connections_part(50_000, 3, 3, 4)
    json_path.write_text(json.dumps({"meta": {"date": "2026-11-26 17:26 UTC"}, "fifty": fifty}))
    out.write_text(
        "# Benchmarks\n\nabove\n\n<!-- scale:begin -->\nOLD SECTION\n<!-- scale:end -->\nbelow\n"
    )
    monkeypatch.setattr(
        scale, "part_hundred", lambda quick, workdir: connections_part(100_000, 7, 6, 8)
    )
    handler = signal.getsignal(signal.SIGTERM)
    try:
        scale.main(["--only", "hundred", "--out", str(out), "--json", str(json_path)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    data = json.loads(json_path.read_text())
    assert data["fifty"] == fifty
    assert data["hundred"]["connections"] == 100_000
    assert data["meta"]["measured"]["fifty"] == "2026-11-26 17:26 UTC"
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nabove\n")
    assert text.endswith("below\n")
    assert "OLD SECTION" not in text
    assert "### 50,000 connections on this 2-core machine (issue 3)" in text
    assert "### 100,000 connections on this 2-core machine (issue 11)" in text
    assert "fifty 2026-11-26 17:26 UTC" in text
