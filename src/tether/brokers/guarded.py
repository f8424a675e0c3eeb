"""A Broker wrapper that puts a circuit breaker and a retry budget on every call.

Used in front of brokers that leave the process (Redis). What is retried:

* reads (history, channels) and idempotent publishes (with an idempotency key): retried
  with full-jitter backoff while the retry budget allows;
* a publish without an idempotency key is never retried here: if it failed after Redis
  ran the script, a retry would store it twice. The caller gets BrokerUnavailable (HTTP
  503) and may retry with a key.

While the breaker is open every call fails at once with BrokerUnavailable and
:attr:`healthy` is false, so ``/ready`` turns false and load balancers look elsewhere.
When the inner broker reconnects and asks for a resync, the breaker closes first: the
reconnect proved the server answers, and the resync sends every client to resubscribe,
which must not meet a breaker still waiting out its ``reset_timeout``.

Every call that reaches the inner broker is timed into :attr:`GuardedBroker.latency`
(``tether_broker_call_seconds`` on ``/metrics``), by operation and outcome: ``ok`` when
the broker answered (an unrecoverable position is an answer), ``error`` when it raised
BrokerUnavailable. Calls an open breaker refused never reach it and are not timed (the
breaker counts them).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from prometheus_client import Histogram

from tether.brokers.base import (
    Broker,
    BrokerEventHandler,
    PublishItem,
    PublishOptions,
    PublishResult,
    publish_all,
)
from tether.brokers.delegating import DelegatingBroker
from tether.errors import BrokerUnavailable, UnrecoverablePosition
from tether.protocol.messages import ClientInfo, Publication
from tether.resilience import CircuitBreaker, RetryBudget, call_with_retries

T = TypeVar("T")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: a Redis round trip on a LAN is ~0.2-1 ms; past the breaker's failure the
client's own timeout (seconds) ends the call."""


BROKER_CALL_DOC = (
    "Duration of broker calls that reached the broker, by breaker, operation, outcome."
)


def latency_histogram() -> Histogram:
    """An unregistered histogram of broker call durations (the node's /metrics collects
    every guard's into one family)."""
    return Histogram(
        "tether_broker_call_seconds",
        BROKER_CALL_DOC,
        ["breaker", "op", "outcome"],
        registry=None,
        buckets=LATENCY_BUCKETS,
    )


class GuardedBroker(DelegatingBroker):
    """:class:`~tether.brokers.base.Broker` guarding ``inner`` (same contract)."""

    def __init__(
        self,
        inner: Broker,
        *,
        breaker: CircuitBreaker | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        super().__init__(inner)
        self.breaker = breaker or CircuitBreaker("broker")
        self.budget = budget or RetryBudget()
        self.latency = latency_histogram()
        self._timers: dict[tuple[str, str], Histogram] = {}
        """The histogram's child per (op, outcome): ``labels()`` looks one up under a lock
        on every call, two per connect in a connect storm."""

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return await call
        except UnrecoverablePosition:
            raise  # the broker answered: "ok"
        except BrokerUnavailable:
            outcome = "error"
            raise
        finally:
            elapsed = time.perf_counter() - start
            timer = self._timers.get((op, outcome))
            if timer is None:
                timer = self._timers[op, outcome] = self.latency.labels(
                    self.breaker.name, op, outcome
                )
            timer.observe(elapsed)

    @property
    def healthy(self) -> bool:
        return self.inner.healthy and self.breaker.allows_calls

    async def start(self, handler: BrokerEventHandler) -> None:
        await self.inner.start(_CloseBreakerOnResync(handler, self.breaker))

    def _guarded(self, op: str, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return self.breaker.call(lambda: self._timed(op, call()))

    async def around(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        label = _LABELS.get(op, op)
        if op == "unsubscribe":
            # Not through the breaker: giving up interest must never be refused.
            return await self._timed(label, call())
        if op in _READS:
            return await call_with_retries(lambda: self._guarded(label, call), budget=self.budget)
        return await self._guarded(label, call)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        # Retried only with an idempotency key (see the module docstring).
        def call() -> Awaitable[PublishResult]:
            return self.inner.publish(channel, publication, options)

        if options.idempotency_key:
            return await call_with_retries(
                lambda: self._guarded("publish", call), budget=self.budget
            )
        return await self._guarded("publish", call)

    async def publish_many(self, items: Sequence[PublishItem]) -> list[PublishResult]:
        # One guarded call for the batch; retried only if every publish has a key.
        def call() -> Awaitable[list[PublishResult]]:
            return publish_all(self.inner, items)

        if all(item.options.idempotency_key for item in items):
            return await call_with_retries(
                lambda: self._guarded("publish", call), budget=self.budget
            )
        return await self._guarded("publish", call)


_READS = frozenset({"history", "channels"})
"""Calls retried within the budget: they change nothing, so a second try is safe."""

_LABELS = {"publish_join": "join", "publish_leave": "leave"}
"""``op`` label values of ``tether_broker_call_seconds`` that differ from the method."""


class _CloseBreakerOnResync:
    """Passes broker events on; a resync first closes the breaker (see the module)."""

    def __init__(self, handler: BrokerEventHandler, breaker: CircuitBreaker) -> None:
        self._handler = handler
        self._breaker = breaker

    def on_publication(self, channel: str, publication: Publication) -> None:
        self._handler.on_publication(channel, publication)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._handler.on_join(channel, info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._handler.on_leave(channel, info)

    def on_resync(self, channels: set[str]) -> None:
        self._breaker.record_success()
        self._handler.on_resync(channels)
