"""``tether capacity``: the cost model read from bench figures, the fleet it plans, and the
check against a measured rooms run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tether.capacity import (
    CapacityError,
    Target,
    check_rooms,
    costs_from_bench,
    plan,
    rooms_run,
)
from tether.cli import app

# Costs chosen round: 100 us per publication, 1 us per delivery, 1 us/s per idle
# connection, 2000 connects per CPU-second, 5 KiB per connection, 50 MiB baseline.
PUB, DELIVERY = 100e-6, 1e-6


def _capacity_run(fanout: int, rate: float = 200, seconds: float = 6) -> dict[str, Any]:
    """A paced capacity run (tether-bench compare's row ``tether@capacity-N``) whose server
    CPU the round costs above account for exactly."""
    publications = int(rate * seconds)
    deliveries = fanout * publications
    cpu = publications * (PUB + fanout * DELIVERY)
    return {
        "scenario": "latency",
        "row": f"tether@capacity-{fanout}",
        "label": "Tether",
        "connections": fanout,
        "rate": rate,
        "publications": publications,
        "deliveries": deliveries,
        "server_cpu_s": cpu,
        "deliveries_per_server_cpu_s": deliveries / cpu,
    }


def _connect_cost(connects_per_cpu_s: float, row: str = "tether") -> dict[str, Any]:
    return {
        "scenario": "connect-cost",
        "row": row,
        "label": "Tether" if row == "tether" else "Tether over Redis",
        "connect_per_s": 7000,  # wall clock: not what the model reads
        "connects_per_server_cpu_s": connects_per_cpu_s,
    }


def bench() -> dict[str, Any]:
    rooms = {
        "scenario": "rooms",
        "label": "Tether",
        "connections": 2000,
        "publications": 8000,
        "deliveries": 40000,  # fan-out 5
        "rate": 1000,
        # 1000/s x (100 + 5) us + 2000 x 1 us/s = 0.107 cores
        "server_cpu_percent": 10.7,
        "elapsed_s": 9.0,
    }
    return {
        "meta": {"date": "2026-01-01 00:00 UTC"},
        "results": [
            _capacity_run(1000),
            _capacity_run(250),
            _connect_cost(2000),
            _connect_cost(1000, row="tether-redis"),
            {
                "scenario": "idle",
                "label": "Tether",
                "connections": 10000,
                "server_cpu_percent": 1.0,
                "connect_per_s": 2500,
                "rss_per_connection_kib": 5.0,
                "server_rss_before_mib": 50.0,
            },
            rooms,
        ],
    }


def test_costs_are_a_straight_line_through_the_two_capacity_runs() -> None:
    costs = costs_from_bench(bench())
    assert costs.per_publication == pytest.approx(PUB)
    assert costs.per_delivery == pytest.approx(DELIVERY)
    assert costs.per_connection_idle == pytest.approx(1e-6)
    assert costs.connects_per_cpu_s == 2000  # memory broker, per server CPU-second
    assert "2026-01-01" in costs.source
    assert "fan-outs 250 and 1000" in costs.source


def test_runs_at_the_maximum_rate_are_not_fitted_on() -> None:
    # The half-of-maximum latency run and the batch1 fan-out run coalesce publications
    # into shared writes: had the line gone through them, the costs would move.
    data = bench()
    for scenario, row in (("latency", "tether"), ("fanout", "tether-batch1")):
        coalesced = dict(_capacity_run(2000), scenario=scenario, row=row)
        coalesced["deliveries_per_server_cpu_s"] *= 3
        data["results"].insert(0, coalesced)
    costs = costs_from_bench(data)
    assert costs.per_publication == pytest.approx(PUB)
    assert costs.per_delivery == pytest.approx(DELIVERY)


def test_connect_cost_is_the_lower_median_of_several_stored_runs() -> None:
    data = bench()
    data["results"] += [_connect_cost(1500), _connect_cost(2500), _connect_cost(3000)]
    assert costs_from_bench(data).connects_per_cpu_s == 2000


def test_a_bench_without_the_capacity_runs_is_refused_saying_to_rerun_it() -> None:
    data = bench()
    data["results"] = [r for r in data["results"] if r["scenario"] != "latency"]
    with pytest.raises(CapacityError, match=r"tether@capacity-1000 .*re-run `make bench`"):
        costs_from_bench(data)


def test_a_failed_capacity_run_is_named_in_the_refusal() -> None:
    data = bench()
    data["results"][1] = {"scenario": "latency", "row": "tether@capacity-250", "error": "x"}
    with pytest.raises(CapacityError, match="failed runs: tether@capacity-250"):
        costs_from_bench(data)


def test_capacity_runs_at_different_rates_are_refused() -> None:
    data = bench()
    data["results"][1] = _capacity_run(250, rate=400)
    with pytest.raises(CapacityError, match="different rates"):
        costs_from_bench(data)


def test_capacity_runs_that_fit_no_line_with_positive_costs_are_refused() -> None:
    # The fan-out 1000 run cheaper per publication than the fan-out 250 one: a negative
    # cost per delivery.
    data = bench()
    data["results"][0]["deliveries_per_server_cpu_s"] *= 10
    with pytest.raises(CapacityError, match="no straight line with positive costs"):
        costs_from_bench(data)


def test_the_model_predicts_the_rooms_run_it_was_not_fitted_on() -> None:
    data = bench()
    check = check_rooms(costs_from_bench(data), rooms_run(data))
    assert check.predicted_cores == pytest.approx(0.107, abs=1e-4)
    assert check.error == pytest.approx(0.0, abs=1e-3)


def test_a_rooms_report_that_measured_more_cpu_shows_a_negative_error() -> None:
    data = bench()
    report = dict(rooms_run(data), server_cpu_percent=21.4)
    check = check_rooms(costs_from_bench(data), rooms_run(report))
    assert check.error == pytest.approx(-0.5, abs=1e-3)


def _target(**overrides: Any) -> Target:
    base: dict[str, Any] = {
        "connections": 1000,
        "channels": 10,
        "publications_per_s": 10,
        "fanout": 10,
        "storm_clients": 0,
        "storm_seconds": 30,
    }
    return Target(**(base | overrides))


def test_a_small_target_gets_the_minimum_fleet() -> None:
    result = plan(costs_from_bench(bench()), _target())
    assert (result.nodes, result.cores, result.limited_by) == (2, 2, "min_nodes")
    assert result.connections_per_node == 500


def test_cpu_bound_target_gets_enough_nodes_to_stay_under_the_utilization() -> None:
    # 20,000 publications/s, fan-out 10, 10,000 connections: every node holding a
    # subscriber pays 100 us per publication, on min(nodes, 10) nodes: 2 cores per node
    # up to 10 nodes, then (20 + 0.2 deliveries + 0.01 idle) cores spread: 34 nodes.
    costs = costs_from_bench(bench())
    target = _target(connections=10_000, publications_per_s=20_000, fanout=10)
    result = plan(costs, target)
    assert result.nodes == 34
    assert result.limited_by == "cpu"
    assert result.steady_cores_per_node <= 0.6
    assert any("more nodes do not help" in line for line in result.assumptions)


def test_connection_cap_sets_the_fleet_when_traffic_is_light() -> None:
    result = plan(
        costs_from_bench(bench()), _target(connections=1_000_000, max_connections_per_node=100_000)
    )
    assert result.nodes == 10
    assert result.limited_by == "connections"


def test_a_reconnection_storm_is_spread_under_each_nodes_admission_rate() -> None:
    result = plan(
        costs_from_bench(bench()),
        _target(storm_clients=120_000, storm_seconds=10, max_connects_per_second=2000),
    )
    # 12,000 connects/s: 6 nodes admit 2000/s each, but a connect costs 500 us, so
    # 2000/s is a whole core with no room for the steady load: 7 nodes, 1714/s each.
    assert result.nodes == 7
    assert result.storm_connects_per_node_per_s == pytest.approx(1714.3)
    assert result.limited_by == "storm cpu"


def test_memory_is_baseline_plus_connections_with_headroom() -> None:
    result = plan(costs_from_bench(bench()), _target(connections=20480, memory_headroom=2.0))
    # 10,240 per node x 5 KiB = 50 MiB, + 50 MiB baseline, x 2
    assert result.memory_per_node_mib == pytest.approx(200.0)


def test_every_assumption_is_stated() -> None:
    result = plan(costs_from_bench(bench()), _target())
    text = "\n".join(result.assumptions)
    for figure in ("100 us", "1.000 us per delivery", "5.00 KiB", "60%", "2 nodes"):
        assert figure in text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["results"].pop(2), "no 'connect-cost' run of row 'tether'"),
        (lambda b: b["results"][2].pop("connects_per_server_cpu_s"), "connects_per_server"),
        (lambda b: b["results"][4].pop("rss_per_connection_kib"), "'rss_per_connection_kib'"),
        (lambda b: b.pop("results"), "not a bench JSON"),
    ],
)
def test_an_unusable_bench_json_is_refused_naming_what_is_missing(
    mutate: Any, message: str
) -> None:
    data = bench()
    mutate(data)
    with pytest.raises(CapacityError, match=message):
        costs_from_bench(data)


def test_an_impossible_target_is_refused() -> None:
    costs = costs_from_bench(bench())
    with pytest.raises(CapacityError, match="fanout"):
        plan(costs, _target(connections=5, fanout=10))
    with pytest.raises(CapacityError, match="utilization"):
        plan(costs, _target(utilization=0))


def test_cli_prints_the_plan_the_assumptions_and_the_rooms_check(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench()))
    args = ["capacity", "--bench", str(path), "--connections", "1000000"]
    args += ["--publications", "10", "--fanout", "10"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nodes:  10 (limited by: connections)" in result.stdout
    assert "model check: predicts 0.107 cores for the rooms run, measured 0.107" in result.stdout
    assert "assumptions:" in result.stdout
    as_json = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(as_json.stdout)["plan"]["nodes"] == 10


def test_cli_refuses_a_missing_bench_file_with_exit_2(tmp_path: Path) -> None:
    args = ["capacity", "--bench", str(tmp_path / "none.json"), "--connections", "1"]
    result = CliRunner().invoke(app, [*args, "--publications", "1", "--fanout", "1"])
    assert result.exit_code == 2
    assert "cannot read" in result.output
