"""Fault injection for brokers: a wrapper that counts, holds and fails calls on demand.

Wrap any :class:`~tether.brokers.base.Broker` (the in-memory one by default) and hand it
to a :class:`~tether.core.node.Node` or a :class:`~tether.brokers.guarded.GuardedBroker`;
the wrapper keeps the inner broker's contract except for the faults a test asks for::

    broker = FaultyBroker()                 # wraps a fresh MemoryBroker
    broker.hold("publish")                  # publishes hang, as on a stalled network
    task = asyncio.create_task(node.publish("chat:room", b"{}"))
    await broker.wait_held("publish")       # the publish is now in flight
    ...                                     # the lane is saturated meanwhile
    broker.release("publish")               # the held calls go through

    broker.fail("history", times=2)         # the next two reads raise BrokerUnavailable
    assert broker.calls["history"] == 3     # calls that reached the wrapper, failed or not

Everything here waits on events, never on the clock, and starts no task.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tether.brokers.base import Broker, BrokerEventHandler
from tether.brokers.delegating import DelegatingBroker
from tether.brokers.memory import MemoryBroker
from tether.errors import BrokerUnavailable

__all__ = ["FaultyBroker"]

T = TypeVar("T")


class _Hold:
    """Calls of one method wait here until released."""

    __slots__ = ("changed", "held", "on_reply", "open")

    def __init__(self, on_reply: bool) -> None:
        self.on_reply = on_reply
        self.open = asyncio.Event()
        self.changed = asyncio.Event()
        self.held = 0


class FaultyBroker(DelegatingBroker):
    """A :class:`~tether.brokers.base.Broker` around ``inner`` that can hold or fail calls.

    Faults apply per method name (``publish``, ``history``, ``subscribe``, ...):

    * :meth:`hold`: calls wait until :meth:`release`. With ``on_reply=True`` the inner
      broker runs the call at once and only its answer is held (a slow reply: the broker
      already acted, e.g. publications keep flowing after a history read was taken).
    * :meth:`fail`: the next ``times`` calls raise ``exc`` (default BrokerUnavailable)
      without reaching ``inner`` (``times=None``: every call until :meth:`heal`). A call
      held on its request is checked when released: hold, then fail, then release makes
      a call that hangs and then fails, as one that times out.
    * :attr:`calls` counts every call that reached the wrapper, held or failed ones too.
    * :attr:`healthy` can be set to report an unhealthy broker.
    """

    def __init__(self, inner: Broker | None = None) -> None:
        super().__init__(inner if inner is not None else MemoryBroker())
        self.calls: Counter[str] = Counter()
        self._holds: dict[str, _Hold] = {}
        self._failures: dict[str, tuple[int | None, Callable[[], BaseException]]] = {}
        self._healthy: bool | None = None

    # -- faults -------------------------------------------------------------------------

    def hold(self, method: str, *, on_reply: bool = False) -> None:
        """From now on, calls of ``method`` wait until :meth:`release`."""
        self._holds[method] = _Hold(on_reply)

    def release(self, method: str) -> None:
        """Let every held call of ``method`` go on, and stop holding new ones."""
        hold = self._holds.pop(method, None)
        if hold is not None:
            hold.open.set()

    def held(self, method: str) -> int:
        """Calls of ``method`` waiting right now."""
        hold = self._holds.get(method)
        return hold.held if hold is not None else 0

    async def wait_held(self, method: str, count: int = 1) -> None:
        """Return once ``count`` calls of ``method`` are being held (:meth:`hold` first)."""
        hold = self._holds[method]
        while hold.held < count:
            hold.changed.clear()
            await hold.changed.wait()

    def fail(
        self,
        method: str,
        times: int | None = 1,
        exc: Callable[[], BaseException] = lambda: BrokerUnavailable("injected fault"),
    ) -> None:
        """The next ``times`` calls of ``method`` raise ``exc()`` (None: until healed)."""
        self._failures[method] = (times, exc)

    def heal(self, method: str | None = None) -> None:
        """Stop failing ``method`` (None: every method)."""
        if method is None:
            self._failures.clear()
        else:
            self._failures.pop(method, None)

    async def around(self, method: str, fn: Callable[[], Awaitable[T]]) -> T:
        self.calls[method] += 1
        hold = self._holds.get(method)
        if hold is not None and not hold.on_reply:
            await self._wait(hold)  # a held request fails or goes on once released
        failure = self._failures.get(method)
        if failure is not None:
            times, exc = failure
            if times is not None:
                if times <= 1:
                    del self._failures[method]
                else:
                    self._failures[method] = (times - 1, exc)
            raise exc()
        result = await fn()
        if hold is not None and hold.on_reply:
            await self._wait(hold)
        return result

    @staticmethod
    async def _wait(hold: _Hold) -> None:
        hold.held += 1
        hold.changed.set()
        try:
            await hold.open.wait()
        finally:
            hold.held -= 1

    # -- Broker (every other method goes through around(), see DelegatingBroker) ------

    @property
    def healthy(self) -> bool:
        return self.inner.healthy if self._healthy is None else self._healthy

    @healthy.setter
    def healthy(self, value: bool | None) -> None:
        """Force what :attr:`healthy` reports (None: ask the inner broker again)."""
        self._healthy = value

    async def start(self, handler: BrokerEventHandler) -> None:
        await self.around("start", lambda: self.inner.start(handler))

    async def close(self) -> None:
        for hold in self._holds.values():
            hold.open.set()
        self._holds.clear()
        await self.inner.close()
