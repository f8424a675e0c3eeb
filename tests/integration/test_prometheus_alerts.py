"""A real Prometheus server scrapes a real node and evaluates the shipped alert rules: when
the node's Redis stops, the broker and breaker alerts fire. The rules are the file in
deploy/prometheus/ with every ``for:`` cut to a few seconds (the durations themselves are
covered by `promtool test rules`, test_alert_rules.py); expressions and labels are as
shipped."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
import yaml
from ops_kit import PrometheusServer, poll_until

from tether.testing.servers import TEST_API_KEY, make_config, running_server
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "tether-alerts.yml"


def fast_rules(workdir: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "3s"
    path = workdir / "tether-alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


async def wait_for(prometheus: PrometheusServer, alert: str, state: str = "firing") -> None:
    async def reached() -> bool:
        return (await prometheus.alerts()).get(alert) == state

    await poll_until(reached, within=60)


async def test_the_broker_and_breaker_alerts_fire_when_the_nodes_redis_stops(
    tmp_path: Path,
) -> None:
    with RedisServer() as redis:
        config = make_config(broker="redis", redis_url=redis.url, redis_prefix=f"prom{os.getpid()}")
        async with running_server(config) as node:
            target = f"127.0.0.1:{node.http_port}"
            async with PrometheusServer(tmp_path, [target], fast_rules(tmp_path)) as prometheus:

                async def scraped() -> bool:
                    return await prometheus.value(f'up{{instance="{target}"}}') == 1

                await poll_until(scraped, within=30)
                assert await prometheus.value("tether_broker_healthy") == 1
                await asyncio.sleep(5)  # longer than every `for:`: a healthy node fires nothing
                assert await prometheus.alerts() == {}

                await asyncio.to_thread(redis.kill)
                # Publishes now fail (and open the breaker after breaker_failures).
                async with aiohttp.ClientSession() as http:
                    for n in range(8):
                        async with http.post(
                            f"http://{target}/api/publish",
                            json={"channel": "chat:outage", "data": {"n": n}},
                            headers={"X-API-Key": TEST_API_KEY},
                        ) as resp:
                            assert resp.status == 503
                await wait_for(prometheus, "TetherBrokerUnhealthy")
                await wait_for(prometheus, "TetherBreakerOpen")
                await wait_for(prometheus, "TetherNodeNotReady")
                assert await prometheus.value("tether_broker_healthy") == 0
                opened = 'tether_circuit_breaker_transitions_total{state="open"}'
                assert (await prometheus.value(opened) or 0) >= 1

                # Redis back: the node resyncs, the alerts resolve.
                await asyncio.to_thread(redis.start)

                async def resolved() -> bool:
                    firing = await prometheus.alerts()
                    return not {"TetherBrokerUnhealthy", "TetherBreakerOpen"} & set(firing)

                await poll_until(resolved, within=60)
