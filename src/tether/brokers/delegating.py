"""A base for brokers that wrap another one and act around each of its calls.

The guard (:class:`~tether.brokers.guarded.GuardedBroker`) and the test kit's fault
injector (:class:`~tether.testing.brokers.FaultyBroker`) both keep the inner broker's
contract and only add something around every call: a breaker and a timer, or a hold and
a failure. Each used to forward the eight Broker methods by hand; here they are forwarded
once, through one method a subclass writes, :meth:`DelegatingBroker.around`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tether.brokers.base import (
    Broker,
    BrokerEventHandler,
    HistoryPage,
    PublishItem,
    PublishOptions,
    PublishResult,
    StreamPosition,
    publish_all,
)
from tether.protocol.messages import ClientInfo, Publication

__all__ = ["DelegatingBroker"]

T = TypeVar("T")


class DelegatingBroker:
    """A :class:`~tether.brokers.base.Broker` passing every call to :attr:`inner` through
    :meth:`around`. ``start`` and ``close`` go straight through (a subclass that needs
    them overrides them); so does :attr:`healthy`."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    async def around(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` (one call of the inner broker's method ``op``, such as
        ``"publish"`` or ``"publish_join"``) and return its answer. ``call`` may be run
        again (a retry) or not at all (a refusal); each run is one call of the inner
        broker."""
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    async def start(self, handler: BrokerEventHandler) -> None:
        await self.inner.start(handler)

    async def close(self) -> None:
        await self.inner.close()

    async def subscribe(self, channel: str) -> None:
        await self.around("subscribe", lambda: self.inner.subscribe(channel))

    async def unsubscribe(self, channel: str) -> None:
        await self.around("unsubscribe", lambda: self.inner.unsubscribe(channel))

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        return await self.around(
            "publish", lambda: self.inner.publish(channel, publication, options)
        )

    async def publish_many(self, items: Sequence[PublishItem]) -> list[PublishResult]:
        """One call of ``around("publish", ...)`` for the whole batch (one round trip
        when the inner broker pipelines, :func:`~tether.brokers.base.publish_all`)."""
        return await self.around("publish", lambda: publish_all(self.inner, items))

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self.around("publish_join", lambda: self.inner.publish_join(channel, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self.around("publish_leave", lambda: self.inner.publish_leave(channel, info))

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        return await self.around(
            "history",
            lambda: self.inner.history(channel, since=since, limit=limit, reverse=reverse),
        )

    async def remove_history(self, channel: str) -> None:
        await self.around("remove_history", lambda: self.inner.remove_history(channel))

    async def channels(self) -> set[str]:
        return await self.around("channels", self.inner.channels)
