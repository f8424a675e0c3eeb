"""``tether serve --workers N``: N processes share the ports and meet in Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from cluster_kit import CHANNELS, Publisher, follower_fleet

from tether_bench.cluster import CLUSTER_API_KEY, NodeProcess, http_status
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

CLIENTS = 24
ROUNDS = 10


async def test_publications_from_the_api_reach_clients_on_every_worker(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    node = NodeProcess("host", tmp_path, redis_server.url, args=["--workers", "2"])
    node.start()
    try:
        async with asyncio.timeout(120), aiohttp.ClientSession() as session:
            await node.wait_ready()
            await _until_both_workers_answer(session, node.api_url)
            async with follower_fleet(node.port, CLIENTS) as followers:
                publisher = Publisher(session, node.api_url)
                for seq in range(ROUNDS):
                    await asyncio.gather(
                        *(publisher.publish_until_accepted(ch, seq) for ch in CHANNELS)
                    )
                for follower in followers:
                    await follower.wait_until(
                        lambda f: all(len(f.received[ch]) >= ROUNDS for ch in CHANNELS)
                    )
                served_by = Counter(f.nodes[-1] for f in followers)
                received = [
                    [d.data["seq"] for d in f.received[ch]] for f in followers for ch in CHANNELS
                ]
    finally:
        await asyncio.to_thread(node.stop)
    # The kernel spread the connections over both workers (24 connections all on one of
    # two workers would be a 1-in-8-million chance).
    assert set(served_by) == {"host-w0", "host-w1"}, served_by
    assert received == [list(range(ROUNDS))] * (CLIENTS * len(CHANNELS))


async def test_workers_drain_and_exit_when_their_supervisor_is_killed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    node = NodeProcess("host", tmp_path, redis_server.url, args=["--workers", "2"])
    node.start()
    workers: list[int] = []
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as session:
            await node.wait_ready()
            await _until_both_workers_answer(session, node.api_url)
            assert node.process is not None
            workers = _children(node.process.pid)
            assert len(workers) == 2
            node.kill(signal.SIGKILL)  # the supervisor only: no chance to pass anything on
            while any(_running(pid) for pid in workers):  # noqa: ASYNC110  (polled in /proc)
                await asyncio.sleep(0.1)
            assert await http_status(node.http_port, "/ready") is None  # nobody listens
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(node.stop)
    assert "drain" in node.log_tail(200).lower()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """False once ``pid`` has exited (gone, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _until_both_workers_answer(session: aiohttp.ClientSession, url: str) -> None:
    """Both workers listen once each answered on a new connection (the kernel spreads new
    connections only over the sockets already bound). The caller bounds the wait."""
    seen: set[str] = set()
    while seen != {"host-w0", "host-w1"}:
        async with session.post(
            f"{url}/api/info",
            json={},
            headers={"X-API-Key": CLUSTER_API_KEY, "Connection": "close"},
        ) as response:
            seen.add((await response.json())["result"]["nodes"][0]["name"])


def test_workers_with_the_memory_broker_is_a_config_error_naming_the_fix(
    tmp_path: Path,
) -> None:
    config = tmp_path / "memory.toml"
    config.write_text('broker = "memory"\nport = 18123\nhttp_port = 18124\n')
    done = subprocess.run(
        [sys.executable, "-m", "tether", "serve", "-c", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert 'needs broker = "redis"' in done.stderr
