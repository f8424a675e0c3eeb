"""The Flusher: one flush per tick, and an adaptive delay after an expensive flush."""

from __future__ import annotations

from collections.abc import Callable

from tether.core.transport import Flusher


class Loop:
    """Records how the flusher asks to be called back."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.later: list[tuple[float, Callable[[], None]]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append((delay, callback))


class Conn:
    def __init__(self, clock: list[float], cost: float) -> None:
        self.clock, self.cost, self.flushes = clock, cost, 0

    def flush(self) -> None:
        self.flushes += 1
        self.clock[0] += self.cost


def _flusher(clock: list[float], max_delay: float) -> tuple[Flusher, Loop]:
    loop = Loop()
    flusher = Flusher(loop.call_soon, loop.call_later, max_delay=max_delay, clock=lambda: clock[0])
    return flusher, loop


def test_connections_marked_in_one_tick_are_flushed_once_by_one_callback() -> None:
    clock = [0.0]
    flusher, loop = _flusher(clock, max_delay=0.002)
    conns = [Conn(clock, cost=0.0) for _ in range(3)]
    for conn in conns:
        flusher.mark(conn)
    assert len(loop.soon) == 1
    loop.soon.pop()()
    assert [c.flushes for c in conns] == [1, 1, 1]


def test_after_an_expensive_flush_the_next_one_waits_as_long_capped_at_max_delay() -> None:
    clock = [0.0]
    flusher, loop = _flusher(clock, max_delay=0.002)
    flusher.mark(Conn(clock, cost=0.0015))  # a 1.5 ms flush
    loop.soon.pop()()
    flusher.mark(Conn(clock, cost=0.005))  # waits 1.5 ms, then takes 5 ms
    assert loop.later[0][0] == 0.0015
    loop.later.pop()[1]()
    flusher.mark(Conn(clock, cost=0.0))
    assert loop.later[0][0] == 0.002  # capped


def test_a_cheap_flush_keeps_the_next_one_on_the_next_loop_iteration() -> None:
    clock = [0.0]
    flusher, loop = _flusher(clock, max_delay=0.002)
    flusher.mark(Conn(clock, cost=0.0005))  # under 1 ms: not worth delaying
    loop.soon.pop()()
    flusher.mark(Conn(clock, cost=0.0))
    assert len(loop.soon) == 1
    assert loop.later == []


def test_max_delay_zero_never_delays() -> None:
    clock = [0.0]
    flusher, loop = _flusher(clock, max_delay=0.0)
    flusher.mark(Conn(clock, cost=0.01))
    loop.soon.pop()()
    flusher.mark(Conn(clock, cost=0.0))
    assert len(loop.soon) == 1
    assert loop.later == []
