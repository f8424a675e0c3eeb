"""The bench's capacity runs (``tether-bench compare`` rows ``tether@capacity-N``): what
``tether capacity`` fits its line on, and how the page shows them."""

from __future__ import annotations

from typing import Any

from tether.capacity import CAPACITY_ROW
from tether_bench.compare import capacity_markdown, plan


def _args(extra: list[str], flag: str) -> str | None:
    return extra[extra.index(flag) + 1] if flag in extra else None


def test_the_capacity_runs_share_one_paced_rate_at_two_fanouts() -> None:
    runs = [(s, extra) for s, row, extra in plan(quick=False) if row.startswith(CAPACITY_ROW)]
    assert {s for s, _ in runs} == {"latency"}
    assert len({_args(extra, "--rate") for _, extra in runs}) == 1
    assert _args(runs[0][1], "--rate") not in (None, "0")  # paced, not calibrated
    assert len({_args(extra, "-n") for _, extra in runs}) == 2
    assert all("--batch" not in extra and "--fraction" not in extra for _, extra in runs)


def _run(fanout: int, cpu_s: float) -> dict[str, Any]:
    publications = 400
    return {
        "scenario": "latency",
        "row": f"{CAPACITY_ROW}{fanout}",
        "label": "Tether",
        "rate": 50.0,
        "publications": publications,
        "deliveries": publications * fanout,
        "server_cpu_s": cpu_s,
        "measured_s": 8.0,
        "server_cpu_percent": round(100 * cpu_s / 8, 1),
        "deliveries_per_server_cpu_s": round(publications * fanout / cpu_s),
        "latency": {"p99_ms": 12.5},
        "losses": 0,
        "duplicates": 0,
        "order_violations": 0,
    }


def test_the_page_shows_the_capacity_runs_and_the_line_through_them() -> None:
    # 100 us per publication + 1 us per delivery: 400 x 1.1 ms, 400 x 0.35 ms.
    by = {("latency", r["row"]): r for r in (_run(1000, 0.44), _run(250, 0.14))}
    text = "\n".join(capacity_markdown(by))
    assert f"| `{CAPACITY_ROW}1000` | 50.0 | 1000 | 0.44 s (8.0 s) |" in text
    assert "**100 µs per publication**" in text
    assert "**1.000 µs per delivery**" in text


def test_capacity_runs_that_fit_no_line_are_shown_with_the_reason() -> None:
    by = {("latency", r["row"]): r for r in (_run(1000, 0.14), _run(250, 0.44))}
    text = "\n".join(capacity_markdown(by))
    assert "No line: no straight line with positive costs" in text


def test_a_page_without_capacity_runs_has_no_such_section() -> None:
    assert capacity_markdown({}) == []
