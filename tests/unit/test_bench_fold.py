"""``compare.fold_runs``: repeated runs of a row fold into their median run, and a fan-out
row's list of runs holds its fan-out runs only (rows of other scenarios share its name)."""

from __future__ import annotations

from tether_bench.compare import fold_runs


def test_a_fanout_rows_runs_are_its_fanout_runs_only() -> None:
    results = [
        {
            "scenario": "fanout",
            "row": "tether",
            "deliveries_per_s": d,
            "deliveries_per_server_cpu_s": d,
        }
        for d in (2.4e6, 2.3e6, 2.5e6)
    ]
    results.append({"scenario": "rooms", "row": "tether", "deliveries_per_s": 3.8e5})
    results.append({"scenario": "latency", "row": "tether", "latency": {"p99_ms": 9.0}})
    folded = {(r["scenario"], r["row"]): r for r in fold_runs(results)}
    fan = folded["fanout", "tether"]
    assert fan["run_deliveries_per_s"] == [2.4e6, 2.3e6, 2.5e6]
    assert fan["deliveries_per_s"] == 2.4e6  # the run with the median per CPU-s
    assert folded["rooms", "tether"]["deliveries_per_s"] == 3.8e5
