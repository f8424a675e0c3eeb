"""What /metrics reads about the broker: GuardedBroker times every call that reaches its
broker, by operation and outcome; a circuit breaker counts the states it entered."""

from __future__ import annotations

import pytest

from tether.brokers.base import PublishOptions, StreamPosition
from tether.brokers.guarded import GuardedBroker
from tether.errors import BrokerUnavailable, UnrecoverablePosition
from tether.protocol.messages import Publication
from tether.resilience import BreakerState, CircuitBreaker
from tether.testing.brokers import FaultyBroker
from tether.testing.clock import FakeClock


def counts(guard: GuardedBroker) -> dict[tuple[str, str], float]:
    """(op, outcome) -> number of timed calls, from the histogram's _count samples."""
    [metric] = guard.latency.collect()
    return {
        (s.labels["op"], s.labels["outcome"]): s.value
        for s in metric.samples
        if s.name.endswith("_count")
    }


class Handler:
    def on_publication(self, channel: str, publication: Publication) -> None: ...
    def on_join(self, channel: str, info: object) -> None: ...
    def on_leave(self, channel: str, info: object) -> None: ...
    def on_resync(self, channels: set[str]) -> None: ...


async def test_calls_that_reach_the_broker_are_timed_by_operation_and_outcome() -> None:
    faulty = FaultyBroker()
    guard = GuardedBroker(faulty, breaker=CircuitBreaker("shard-a", failure_threshold=2))
    await guard.start(Handler())
    await guard.subscribe("chat:x")
    await guard.publish("chat:x", Publication(), PublishOptions(history_size=10, history_ttl=60))
    with pytest.raises(UnrecoverablePosition):  # an answer, not a broker failure
        await guard.history("chat:x", since=StreamPosition(5, "other-epoch"))
    faulty.fail("publish", times=None)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            await guard.publish("chat:x", Publication(), PublishOptions())
    with pytest.raises(BrokerUnavailable):  # the breaker is open: refused, never timed
        await guard.publish("chat:x", Publication(), PublishOptions())
    assert counts(guard) == {
        ("subscribe", "ok"): 1,
        ("publish", "ok"): 1,
        ("history", "ok"): 1,
        ("publish", "error"): 2,
    }
    [metric] = guard.latency.collect()
    assert {s.labels["breaker"] for s in metric.samples} == {"shard-a"}
    await guard.close()


async def test_a_breaker_counts_every_state_it_enters() -> None:
    clock = FakeClock()
    faulty = FaultyBroker()
    breaker = CircuitBreaker("shard-b", failure_threshold=1, reset_timeout=5, clock=clock)
    guard = GuardedBroker(faulty, breaker=breaker)
    assert breaker.transitions == dict.fromkeys(BreakerState, 0)
    faulty.fail("subscribe", times=2)
    with pytest.raises(BrokerUnavailable):
        await guard.subscribe("chat:a")  # opens
    clock.advance(5)
    with pytest.raises(BrokerUnavailable):
        await guard.subscribe("chat:a")  # half-open probe fails: open again
    clock.advance(5)
    await guard.subscribe("chat:a")  # half-open probe succeeds: closed
    assert breaker.transitions == {
        BreakerState.OPEN: 2,
        BreakerState.HALF_OPEN: 2,
        BreakerState.CLOSED: 1,
    }
