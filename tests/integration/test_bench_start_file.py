"""`tether-bench run rooms --start-file`: several bench processes start publishing together.

`make bench-scale` (tether-bench scale) runs six bench processes against one server for the
100,000-connection run (three for the 50,000 one); each connects, then waits for the start
file before it publishes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tether.config import NamespaceConfig
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether_bench import BenchOptions, run_bench

pytestmark = pytest.mark.integration


async def test_rooms_waits_for_the_start_file_then_delivers_every_publication(
    tmp_path: Path,
) -> None:
    start = tmp_path / "start"
    bench = NamespaceConfig(history_size=100, history_ttl=300, recover=True, allow_subscribe=True)
    config = make_config(namespaces={"default": NamespaceConfig(), "bench": bench})
    async with asyncio.timeout(60), running_server(config) as server:
        options = BenchOptions(
            scenario="rooms",
            url=f"ws://127.0.0.1:{server.port}/connection/websocket",
            api_url=f"http://127.0.0.1:{server.http_port}/api",
            api_key=TEST_API_KEY,
            token_secret=TEST_SECRET,
            server_pid=os.getpid(),
            progress=False,
            connections=40,
            rate=100,
            duration=0.5,
            start_file=str(start),
        )
        running: asyncio.Task[dict[str, Any]] = asyncio.create_task(run_bench(options))
        await asyncio.sleep(2.0)  # connected long ago, and would be done without the file
        assert not running.done()
        start.touch()
        report = await running

    assert report["connected"] == 40
    assert report["publications"] == 50
    assert report["deliveries"] == report["expected_deliveries"] > 0
    assert (report["losses"], report["duplicates"], report["order_violations"]) == (0, 0, 0)
