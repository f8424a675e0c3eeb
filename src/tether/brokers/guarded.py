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
"""

from __future__ import annotations

from collections.abc import Awaitable

from tether.brokers.base import (
    Broker,
    BrokerEventHandler,
    HistoryPage,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from tether.protocol.messages import ClientInfo, Publication
from tether.resilience import CircuitBreaker, RetryBudget, call_with_retries


class GuardedBroker:
    """:class:`~tether.brokers.base.Broker` guarding ``inner`` (same contract)."""

    def __init__(
        self,
        inner: Broker,
        *,
        breaker: CircuitBreaker | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        self.inner = inner
        self.breaker = breaker or CircuitBreaker("broker")
        self.budget = budget or RetryBudget()

    @property
    def healthy(self) -> bool:
        return self.inner.healthy and self.breaker.allows_calls

    async def start(self, handler: BrokerEventHandler) -> None:
        await self.inner.start(_CloseBreakerOnResync(handler, self.breaker))

    async def close(self) -> None:
        await self.inner.close()

    async def subscribe(self, channel: str) -> None:
        await self.breaker.call(lambda: self.inner.subscribe(channel))

    async def unsubscribe(self, channel: str) -> None:
        # Not through the breaker: giving up interest must never be refused.
        await self.inner.unsubscribe(channel)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        def once() -> Awaitable[PublishResult]:
            return self.breaker.call(lambda: self.inner.publish(channel, publication, options))

        if options.idempotency_key:
            return await call_with_retries(once, budget=self.budget)
        return await once()

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self.breaker.call(lambda: self.inner.publish_join(channel, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self.breaker.call(lambda: self.inner.publish_leave(channel, info))

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        return await call_with_retries(
            lambda: self.breaker.call(
                lambda: self.inner.history(channel, since=since, limit=limit, reverse=reverse)
            ),
            budget=self.budget,
        )

    async def remove_history(self, channel: str) -> None:
        await self.breaker.call(lambda: self.inner.remove_history(channel))

    async def channels(self) -> set[str]:
        return await call_with_retries(
            lambda: self.breaker.call(self.inner.channels), budget=self.budget
        )


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
