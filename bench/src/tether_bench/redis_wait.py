"""What durability costs a publish: latency of the Redis broker's publish with and without
``WAIT 1`` (the namespace option ``wait_replicas``), over a primary with one replica, with
and without AOF persistence.

    python -m tether_bench.redis_wait [--publishes 2000]

Starts its own redis-servers (a primary and its replica on free ports, one temporary
directory each), publishes one publication at a time (one in flight: the latency a
backend waiting for its 200 sees) through :class:`~tether.brokers.redis.RedisBroker`,
and prints one markdown row per setup: median and 99th percentile in milliseconds.
The figures are this machine's, replica on the same host (no network round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import msgspec

from tether.brokers.base import PublishOptions
from tether.brokers.redis import RedisBroker
from tether.protocol.messages import Publication
from tether.testing.broker_contract import RecordingHandler
from tether_bench.failover import ReplicatedRedis

SETUPS: list[tuple[str, tuple[str, ...], int]] = [
    ("no persistence", (), 0),
    ("no persistence, WAIT 1", (), 1),
    ("appendonly, appendfsync everysec", ("--appendonly", "yes", "--appendfsync", "everysec"), 0),
    ("appendonly, appendfsync always", ("--appendonly", "yes", "--appendfsync", "always"), 0),
    ("appendfsync always, WAIT 1", ("--appendonly", "yes", "--appendfsync", "always"), 1),
]


async def measure(extra_args: tuple[str, ...], wait: int, publishes: int) -> list[float]:
    """Seconds each of ``publishes`` sequential publishes took (after a warm-up)."""
    async with ReplicatedRedis(extra_args=extra_args) as redis:
        broker = RedisBroker(redis.primary.url, prefix=f"b{uuid.uuid4().hex[:6]}")
        await broker.start(RecordingHandler())
        options = PublishOptions(
            history_size=100, history_ttl=300, wait_replicas=wait, wait_timeout=1.0
        )
        payload = msgspec.Raw(b'{"text":"' + b"x" * 200 + b'"}')
        try:
            for _ in range(200):  # warm-up: connections, script cache
                await broker.publish("bench:wait", Publication(data=payload), options)
            took = []
            for i in range(publishes):
                started = time.perf_counter()
                await broker.publish(f"bench:wait{i % 10}", Publication(data=payload), options)
                took.append(time.perf_counter() - started)
            return took
        finally:
            await broker.close()


async def main(publishes: int) -> None:
    print(f"| setup ({publishes} sequential publishes) | median ms | p99 ms |")
    print("|---|---|---|")
    for name, extra_args, wait in SETUPS:
        took = sorted(await measure(extra_args, wait, publishes))
        median = statistics.median(took) * 1000
        p99 = took[int(len(took) * 0.99) - 1] * 1000
        print(f"| {name} | {median:.3f} | {p99:.3f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishes", type=int, default=2000)
    asyncio.run(main(parser.parse_args().publishes))
