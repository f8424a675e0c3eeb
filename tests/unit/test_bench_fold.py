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


def test_a_profile_run_gives_its_row_the_profile_and_no_figure() -> None:
    results = [
        {"scenario": "connect-cost", "row": "tether", "connects_per_server_cpu_s": c}
        for c in (9000, 9500, 9200)
    ]
    profile = {"samples": 700, "self": [], "inclusive": []}
    results.append(
        {
            "scenario": "connect-cost",
            "row": "tether@profile",
            "connects_per_server_cpu_s": 6000,  # py-spy at 1,000 Hz slowed it
            "profile": profile,
        }
    )
    folded = fold_runs(results)
    assert [r["row"] for r in folded] == ["tether"]
    row = folded[0]
    assert row["connects_per_server_cpu_s"] == 9200
    assert row["run_connects_per_cpu_s"] == [9000, 9500, 9200]
    assert row["profile"]["samples"] == 700
    assert "extra run" in row["profile"]["run"]
