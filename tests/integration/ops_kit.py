"""Helpers of the operations tests: what a node's /metrics exposes, a real Prometheus."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tether.server import Server
from tether.testing.servers import make_config, running_server
from tether_bench.redisserver import RedisServer, free_port

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def exposed_metric_names(text: str) -> set[str]:
    """Every series name a /metrics text declares (a family with no sample yet too:
    a counter as ``_total``, a histogram as ``_bucket``/``_sum``/``_count``)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def scrape(server: Server) -> str:
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


class PrometheusServer:
    """A real Prometheus server (Debian's `prometheus` package, scripts/system-deps.sh)
    scraping ``targets`` every second as job ``tether``, evaluating ``rules`` every second;
    its data lives in ``workdir``. A context manager: killed on exit."""

    def __init__(self, workdir: Path, targets: list[str], rules: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "tether", "static_configs": [{"targets": targets}]}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        assert binary is not None, "prometheus missing: run scripts/system-deps.sh"
        log = self.workdir / "prometheus.log"
        with log.open("wb") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        process = self._process

        async def ready() -> bool:
            assert process.returncode is None, log.read_text()
            return await self._ready()

        await poll_until(ready, within=30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def _ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{self.url}/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def get(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}{path}", params=params) as resp,
        ):
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def alerts(self) -> dict[str, str]:
        """Alert name -> state (``pending`` or ``firing``) of the alerts active now."""
        data = await self.get("/api/v1/alerts")
        return {alert["labels"]["alertname"]: alert["state"] for alert in data["alerts"]}

    async def value(self, query: str) -> float | None:
        """The value of an instant query with one result (None if it has none)."""
        result = (await self.get("/api/v1/query", query=query))["result"]
        return float(result[0]["value"][1]) if result else None


async def poll_until(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    """Await ``condition()`` every 0.2 s until it is true; TimeoutError after ``within`` seconds.
    For state outside this process (Prometheus, a browser), which sends no event."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110  (nothing to wait on but the answer)
            await asyncio.sleep(0.2)


@asynccontextmanager
async def redis_nodes(redis: RedisServer, *names: str) -> AsyncIterator[list[Server]]:
    """Nodes named ``names`` sharing ``redis`` (one key prefix, as one cluster)."""
    prefix = f"view{os.getpid()}-{time.monotonic_ns()}"
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                running_server(
                    make_config(
                        broker="redis", redis_url=redis.url, redis_prefix=prefix, node_name=name
                    )
                )
            )
            for name in names
        ]
        yield servers
