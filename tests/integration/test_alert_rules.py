"""The Prometheus alert rules in deploy/prometheus/: valid, unit-tested with promtool, each
with a runbook entry, each naming only metrics a real node exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ops_kit import exposed_metric_names, redis_nodes, scrape

from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "tether-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tether-alerts.test.yml"
OPERATE = ROOT / "docs" / "howto" / "operate.md"


def promtool() -> str:
    """promtool from Debian's `prometheus` package (scripts/system-deps.sh installs it)."""
    path = shutil.which("promtool")
    assert path is not None, "promtool missing: run scripts/system-deps.sh"
    return path


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alert_names() -> list[str]:
    return [str(rule["alert"]) for rule in _rules()]


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert set(_alert_names()) == fired


def test_every_alert_has_a_runbook_entry_saying_what_users_see_and_what_to_do() -> None:
    doc = OPERATE.read_text()
    sections = dict(re.findall(r"^### (\w+)\n(.*?)(?=^##)", doc + "\n##", re.S | re.M))
    for rule in _rules():
        name = str(rule["alert"])
        assert name in sections, f"no runbook entry '### {name}' in docs/howto/operate.md"
        body = sections[name]
        for part in ("**What it means.**", "**What users see.**", "**What to do.**"):
            assert part in body, f"{name}: runbook entry lacks {part}"
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook"] == f"docs/howto/operate.md#{name.lower()}"


async def test_every_metric_the_rules_use_is_exposed_by_a_node(redis_server: RedisServer) -> None:
    # A node on Redis, so that the broker's series (breaker, call latency) exist.
    async with redis_nodes(redis_server, "ops") as (node,):
        exposed = exposed_metric_names(await scrape(node))
    used = {name for rule in _rules() for name in re.findall(r"\b(tether_\w+)", str(rule["expr"]))}
    assert used
    assert used <= exposed, sorted(used - exposed)
