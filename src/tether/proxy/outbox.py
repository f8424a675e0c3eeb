"""Outbound events (webhooks, offline push): a bounded buffer delivered in batches, at
least once.

Every event gets a unique ``id`` when it is put; a receiver deduplicates by it (an event
is sent again when its batch's answer is lost). A batch is one POST of
``{"events": [...]}``; any 2xx answer acknowledges the whole batch; anything else (or no
answer within ``timeout``) and the same batch is sent again, after full-jitter
exponential backoff (0.1 s to 5 s), while the endpoint's retry budget and circuit
breaker allow: a receiver that is down gets about one request a second, never a storm.

The buffer holds at most ``max_buffered`` events. When it is full, **new** events are
dropped (what is already buffered is kept, so a receiver that comes back gets a complete
prefix): each drop is counted (``tether_outbox_dropped_total``), the first of each full
episode is logged as an error, and ``/ready`` reports it (the node stays ready: clients
are unaffected). Two stores (:class:`OutboxStore`):

* :class:`MemoryStore` (the memory broker): in the process; a restart loses what it held.
  Bound: ``max_buffered`` events.
* :class:`RedisStore` (``broker = "redis"``): a Redis stream shared by every node, read
  through a consumer group, so whichever node is up delivers, and a node restart loses
  nothing that reached Redis (events wait at most a few milliseconds in the process).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
import structlog

from tether.config import OutboxConfig
from tether.errors import BackendUnavailable
from tether.proxy.http import Endpoint, Limits
from tether.proxy.tasks import stop_task

log = structlog.get_logger("tether.outbox")

MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0


class Batch(msgspec.Struct):
    events: list[msgspec.Raw]


class OutboxStore(Protocol):
    """Where events wait. ``put`` never blocks; ``take`` returns the oldest unacknowledged
    events (the same ones again until :meth:`ack`); ``ack`` drops them for good."""

    max_buffered: int
    dropped: int
    """Events refused after ``put`` accepted them (a shared store found itself full)."""

    def put(self, event: bytes) -> bool:
        """Buffer ``event`` (encoded JSON); False (dropped) when full."""
        ...

    async def take(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` (key, event) pairs; waits until there is at least one."""
        ...

    async def ack(self, keys: Sequence[str]) -> None: ...

    def buffered(self) -> int:
        """Events held (an estimate for a shared store)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """The process's own bounded deque (see the module docstring)."""

    def __init__(self, max_buffered: int) -> None:
        self.max_buffered = max_buffered
        self.dropped = 0  # decided in put, never later
        self._events: deque[tuple[str, bytes]] = deque()
        self._seq = 0
        self._ready = asyncio.Event()

    def put(self, event: bytes) -> bool:
        if len(self._events) >= self.max_buffered:
            return False
        self._seq += 1
        self._events.append((str(self._seq), event))
        self._ready.set()
        return True

    async def take(self, limit: int) -> list[tuple[str, bytes]]:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return [self._events[i] for i in range(min(limit, len(self._events)))]

    async def ack(self, keys: Sequence[str]) -> None:
        done = set(keys)
        while self._events and self._events[0][0] in done:
            self._events.popleft()

    def buffered(self) -> int:
        return len(self._events)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class OutboxStats(msgspec.Struct):
    put: int = 0
    dropped: int = 0
    delivered: int = 0
    batches: int = 0
    failed_batches: int = 0
    full: bool = False


class Outbox:
    """One receiver (``name``: ``webhook`` or ``push``): events in, batches out."""

    def __init__(
        self, name: str, config: OutboxConfig, store: OutboxStore, *, node: str = ""
    ) -> None:
        self.name = name
        self.config = config
        self.store = store
        self.node = node
        self.endpoint = Endpoint(
            name,
            config.url,
            Limits(
                timeout=config.timeout,
                max_in_flight=1,
                max_response_bytes=64 << 10,
                breaker_failures=config.breaker_failures,
                breaker_reset=config.breaker_reset,
                retry_budget_ratio=config.retry_budget_ratio,
            ),
            idempotent=False,  # the outbox retries itself, from its buffer
        )
        self.stats = OutboxStats()
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        """Events dropped because the buffer was full."""
        return self.stats.dropped + self.store.dropped

    def put(self, kind: str, fields: dict[str, Any]) -> None:
        """Buffer one event of ``kind``; never blocks, never raises."""
        event = {
            "id": str(uuid.uuid4()),
            "type": kind,
            "time": int(time.time() * 1000),
            "node": self.node,
            **fields,
        }
        if self.store.put(msgspec.json.encode(event)):
            self.stats.put += 1
            if self.stats.full and self.store.buffered() < self.store.max_buffered:
                self.stats.full = False
                log.warning("outbox accepts events again", outbox=self.name)
            return
        self.stats.dropped += 1
        if not self.stats.full:
            self.stats.full = True
            log.error(
                "outbox full: new events are dropped until the receiver catches up",
                outbox=self.name,
                max_buffered=self.store.max_buffered,
                dropped=kind,
            )

    async def start(self) -> None:
        await self.endpoint.start()
        await self.store.start()
        self._task = asyncio.get_running_loop().create_task(self._deliver(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        await self.store.close()
        await self.endpoint.close()

    async def _deliver(self) -> None:
        """Forever: the oldest batch, POSTed until a 2xx acknowledges it."""
        failures = 0
        budget = self.endpoint.budget
        while True:
            batch = await self.store.take(self.config.batch_size)
            if failures:
                # A retry: only while the budget allows, after a jittered backoff.
                delay = random.uniform(0, min(MAX_BACKOFF, MIN_BACKOFF * 2**failures))
                await asyncio.sleep(delay)
                if not budget.try_spend():
                    await asyncio.sleep(1.0)
                    continue
            else:
                budget.record_call()
            body = b'{"events":[' + b",".join(event for _, event in batch) + b"]}"
            try:
                await self.endpoint.call(body, _accept_any, self.config.headers)
            except BackendUnavailable as exc:
                failures += 1
                self.stats.failed_batches += 1
                if exc.reason == "circuit_open":
                    await asyncio.sleep(self.config.breaker_reset)
                continue
            failures = 0
            await self.store.ack([key for key, _ in batch])
            self.stats.batches += 1
            self.stats.delivered += len(batch)


def _accept_any(body: bytes) -> bytes:
    """A receiver's answer needs no body: the 200 acknowledges the batch."""
    return body
