"""The Grafana dashboard in deploy/grafana/: every query names metrics a real node exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_kit import exposed_metric_names, redis_nodes, scrape

from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tether-dashboard.json"
METRIC = re.compile(r"\b((?:tether|process|python)_\w+)")


def _expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]["query"]


def test_dashboard_panels_have_unique_ids_and_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            refs = [target["refId"] for target in panel["targets"]]
            assert refs, f"panel {panel['title']!r} has no query"
            assert len(refs) == len(set(refs))


async def test_every_dashboard_expression_names_metrics_a_node_exposes(
    redis_server: RedisServer,
) -> None:
    # A node on Redis, so that the broker's series (breaker, call latency) exist.
    async with redis_nodes(redis_server, "ops") as (node,):
        exposed = exposed_metric_names(await scrape(node))
    dashboard = json.loads(DASHBOARD.read_text())
    seen: set[str] = set()
    for expr in _expressions(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"no Tether metric in {expr!r}"
        assert names <= exposed, f"{expr!r} names {sorted(names - exposed)}, not exposed"
        seen |= names
    # The dashboard covers the saturation signal and the breaker-facing health gauge.
    assert {
        "tether_saturation",
        "tether_saturation_part",
        "tether_broker_healthy",
        "tether_circuit_breaker_state",
        "tether_broker_call_seconds_bucket",
    } <= seen
