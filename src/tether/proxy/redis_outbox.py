"""The outbox buffer in a Redis stream shared by every node (``broker = "redis"``).

One stream per receiver (``{prefix}:outbox:{name}``) and one consumer group ``tether``:
each node adds its events and takes batches as the group's consumer ``node_name``. On a
Redis Cluster (``redis_cluster``) the stream is one key, so it lives on the shard of its
slot; every command and script here touches that key alone.

* ``put`` stages the event in the process (at most ``max_buffered`` staged) and a writer
  adds it with a script that refuses it when the stream already holds ``max_buffered``
  unacknowledged events (XLEN: acknowledged events are deleted), so the bound holds
  across nodes. Staged events reach Redis within milliseconds; a graceful stop writes
  them all first; only a process killed outright loses what was staged.
* ``take`` returns this consumer's pending events first (a restarted node with the same
  ``node_name`` resumes its own batch), then events other consumers took and left
  unacknowledged for ``claim_idle`` seconds (a node that died mid-batch), then new ones.
* ``ack`` acknowledges and deletes the batch.

Redis unreachable: the writer keeps events staged (bounded) and retries each second;
``take`` retries each second. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from tether.proxy.tasks import stop_task

log = structlog.get_logger("tether.outbox")


GROUP = "tether"
POLL = 0.5
"""Seconds between looks for events other nodes added, while there are none."""
_PUT = """
local n = 0
for i = 2, #ARGV do
  if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return n end
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
  n = n + 1
end
return n
"""
_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""


class RedisStore:
    def __init__(
        self,
        url: str,
        key: str,
        consumer: str,
        *,
        max_buffered: int,
        claim_idle: float = 30.0,
        cluster: bool = False,
    ) -> None:
        self.max_buffered = max_buffered
        self.key = key
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.dropped = 0
        """Events the stream refused (full) after ``put`` had staged them."""
        self._url = url
        self._cluster = cluster
        self._redis: Redis | RedisCluster | None = None
        self._staged: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._written = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._held: list[tuple[str, bytes]] = []
        self._length = 0

    async def start(self) -> None:
        client = RedisCluster if self._cluster else Redis
        self._redis = client.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
        self._put = self._redis.register_script(_PUT)
        self._ack = self._redis.register_script(_ACK)
        self._writer = asyncio.get_running_loop().create_task(self._write(), name=self.key)

    async def close(self) -> None:
        if self._writer is not None:
            await stop_task(self._writer)
            self._writer = None
        try:
            await self._flush()  # a graceful stop loses nothing staged
        except (RedisError, OSError) as exc:
            log.error("outbox: staged events lost at stop", key=self.key, error=str(exc))
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- in ---------------------------------------------------------------------------

    def put(self, event: bytes) -> bool:
        if len(self._staged) >= self.max_buffered:
            return False
        self._staged.append(event)
        self._wake.set()
        return True

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except (RedisError, OSError) as exc:
                log.warning("outbox: Redis unavailable, events stay staged", error=str(exc))
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _flush(self) -> None:
        while self._staged:
            chunk = [self._staged[i] for i in range(min(100, len(self._staged)))]
            added = int(await self._put(keys=[self.key], args=[self.max_buffered, *chunk]))
            for _ in range(len(chunk)):
                self._staged.popleft()
            self._written.set()
            refused = len(chunk) - added
            if refused:
                self.dropped += refused
                log.error("outbox full: events dropped", key=self.key, dropped=refused)

    # -- out --------------------------------------------------------------------------

    def buffered(self) -> int:
        return self._length + len(self._staged)

    async def _ensure_group(self, redis: Redis | RedisCluster) -> None:
        try:
            await redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, limit: int) -> list[tuple[str, bytes]]:
        while not self._held:
            try:
                self._held = await self._read(limit)
            except (RedisError, OSError) as exc:
                log.warning("outbox: cannot read the stream", key=self.key, error=str(exc))
                await asyncio.sleep(1.0)
        return self._held

    async def _read(self, limit: int) -> list[tuple[str, bytes]]:
        redis = self._redis
        assert redis is not None
        await self._ensure_group(redis)
        self._length = int(await redis.xlen(self.key))
        # 1. what this consumer took before (a restart with the same node name)
        entries = await self._group_read(redis, limit, "0")
        if entries:
            return entries
        # 2. what a consumer that went away left unacknowledged
        claimed = await redis.xautoclaim(
            self.key, GROUP, self.consumer, int(self.claim_idle * 1000), "0-0", count=limit
        )
        if claimed[1]:
            return _events(claimed[1])
        # 3. new events; none: wait for this node's next write, or POLL for other nodes'.
        # (Not XREADGROUP BLOCK: a blocking read cancelled at shutdown can leave the
        # reader waiting on a reply that never comes.)
        entries = await self._group_read(redis, limit, ">")
        if not entries:
            self._written.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can turn a cancel that
            # meets its timeout into TimeoutError, and the stop would be swallowed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await self._written.wait()
        return entries

    async def _group_read(
        self, redis: Redis | RedisCluster, limit: int, start: str
    ) -> list[tuple[str, bytes]]:
        answer: Any = await redis.xreadgroup(GROUP, self.consumer, {self.key: start}, count=limit)
        if not answer:
            return []
        _, entries = answer[0]
        return _events(entries)

    async def ack(self, keys: Sequence[str]) -> None:
        while True:
            try:
                await self._ack(keys=[self.key], args=[GROUP, *keys])  # both, atomically
                break
            except (RedisError, OSError) as exc:
                # Unacknowledged, the batch would be sent again: retry the ack instead.
                log.warning("outbox: ack failed, retrying", key=self.key, error=str(exc))
                await asyncio.sleep(1.0)
        self._held = []


def _events(entries: Any) -> list[tuple[str, bytes]]:
    out = []
    for entry_id, fields in entries:
        if fields is None:  # deleted meanwhile
            continue
        key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        out.append((key, fields[b"e"]))
    return out
