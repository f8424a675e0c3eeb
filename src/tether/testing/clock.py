"""A clock that moves only when a test says so.

Pass a :class:`FakeClock` wherever Tether takes a ``clock`` callable (monotonic seconds),
then :meth:`FakeClock.advance` past a TTL instead of sleeping through it::

    clock = FakeClock()
    broker = MemoryBroker(meta_ttl=60, clock=clock)
    ...
    clock.advance(61)   # the stream's metadata has expired
"""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds, starting at ``start``; advanced by hand, never by itself."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``. Raises ValueError for a negative step: monotonic
        clocks never go back, and code under test may rely on it."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now += seconds
