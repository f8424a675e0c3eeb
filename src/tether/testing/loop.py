"""An event loop's scheduling, faked: callbacks run only when a test says so.

Pass :meth:`FakeLoop.call_soon`, :meth:`FakeLoop.call_later` and :meth:`FakeLoop.time`
wherever Tether takes them (the :class:`~tether.core.transport.Flusher`, the
:class:`~tether.core.transport.Cadence`, queue limits), then run "the next iteration" with
:meth:`FakeLoop.tick` and let time pass with :meth:`FakeLoop.advance`: nothing depends on
timing::

    loop = FakeLoop()
    flusher = Flusher(loop.call_soon)
    ...
    loop.settle()   # every callback that is ready, and what they schedule
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["FakeLoop"]


class FakeLoop:
    """Time starts at 0 and moves only with :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.soon: list[Callable[[], None]] = []
        """Callbacks for the next iteration, in order."""
        self.later: list[tuple[float, Callable[[], None]]] = []
        """``(when, callback)`` timers not yet due."""

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append((self.now + delay, callback))

    def tick(self) -> None:
        """One loop iteration: the callbacks that were ready when it started."""
        ready, self.soon = self.soon, []
        for callback in ready:
            callback()

    def settle(self) -> None:
        """Iterate until nothing is ready. Raises AssertionError after 20 iterations
        (callbacks that keep rescheduling themselves)."""
        for _ in range(20):
            if not self.soon:
                return
            self.tick()
        raise AssertionError("callbacks keep rescheduling themselves")

    def advance(self, seconds: float) -> None:
        """Let time pass, running timers that fall due and what they schedule."""
        self.now += seconds
        due = [entry for entry in self.later if entry[0] <= self.now + 1e-9]
        self.later = [entry for entry in self.later if entry[0] > self.now + 1e-9]
        for _, callback in sorted(due, key=lambda entry: entry[0]):
            callback()
        self.settle()
