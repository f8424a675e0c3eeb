"""Guards on calls that leave the process, and the recovery cache that absorbs storms.

* The circuit breaker's state table (tether.resilience), driven by a fake clock.
* The retry budget and ``call_with_retries``: retries add at most ~10% to the load.
* GuardedBroker: never retries a publish that could be stored twice.
* RecoveryCache: one broker read per channel however many clients recover at once.
* Config: an ephemeral namespace cannot keep history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tether import server
from tether.auth import mint_connection_token
from tether.brokers.base import PublishItem, PublishOptions, StreamPosition
from tether.brokers.guarded import GuardedBroker
from tether.brokers.memory import MemoryBroker
from tether.config import load_config
from tether.core.recovery import RecoveryCache
from tether.errors import BrokerUnavailable, ConfigError, InternalError, UnrecoverablePosition
from tether.protocol.messages import Publication
from tether.resilience import (
    BreakerState,
    CircuitBreaker,
    RetryBudget,
    advance_breaker,
    call_with_retries,
)
from tether.testing.brokers import FaultyBroker
from tether.testing.clock import FakeClock
from tether.testing.servers import OPEN, TEST_SECRET, make_config
from tether.testing.transports import LocalSession, local_node

# -- CircuitBreaker --------------------------------------------------------------------------


class Dependency:
    """A dependency that fails on demand and counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    async def __call__(self) -> str:
        self.calls += 1
        if self.failing:
            raise BrokerUnavailable("down")
        return "ok"


async def _fail_times(breaker: CircuitBreaker, dep: Dependency, times: int) -> None:
    dep.failing = True
    for _ in range(times):
        with pytest.raises(BrokerUnavailable):
            await breaker.call(dep)


async def test_breaker_opens_after_failure_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker("redis", failure_threshold=3, clock=FakeClock())
    dep = Dependency()

    await _fail_times(breaker, dep, 2)
    assert breaker.state is BreakerState.CLOSED
    await _fail_times(breaker, dep, 1)
    assert breaker.state is BreakerState.OPEN


async def test_breaker_counts_only_consecutive_failures() -> None:
    breaker = CircuitBreaker("redis", failure_threshold=3, clock=FakeClock())
    dep = Dependency()

    await _fail_times(breaker, dep, 2)
    dep.failing = False
    await breaker.call(dep)
    await _fail_times(breaker, dep, 2)

    assert breaker.state is BreakerState.CLOSED


async def test_open_breaker_fails_fast_without_calling_the_dependency() -> None:
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout=5, clock=FakeClock())
    dep = Dependency()
    await _fail_times(breaker, dep, 2)
    dep.failing = False

    for _ in range(10):
        with pytest.raises(BrokerUnavailable, match="circuit open"):
            await breaker.call(dep)
    assert dep.calls == 2
    assert breaker.rejected == 10
    assert not breaker.allows_calls


async def test_breaker_half_opens_after_reset_timeout_and_a_successful_probe_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=5, clock=clock)
    dep = Dependency()
    await _fail_times(breaker, dep, 1)

    clock.advance(4.9)
    assert not breaker.allows_calls
    clock.advance(0.1)
    assert breaker.allows_calls
    dep.failing = False
    assert await breaker.call(dep) == "ok"  # the probe
    assert breaker.state is BreakerState.CLOSED
    assert await breaker.call(dep) == "ok"


async def test_failed_probe_reopens_the_breaker_for_another_reset_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=5, clock=clock)
    dep = Dependency()
    await _fail_times(breaker, dep, 1)
    clock.advance(5)

    await _fail_times(breaker, dep, 1)  # the probe fails
    assert breaker.state is BreakerState.OPEN
    calls = dep.calls
    clock.advance(4)
    with pytest.raises(BrokerUnavailable, match="circuit open"):
        await breaker.call(dep)
    assert dep.calls == calls


async def test_half_open_breaker_lets_one_probe_through_at_a_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1, clock=clock)
    dep = Dependency()
    await _fail_times(breaker, dep, 1)
    clock.advance(1)
    gate = asyncio.Event()

    async def slow_probe() -> str:
        await gate.wait()
        return "ok"

    probe = asyncio.create_task(breaker.call(slow_probe))
    await asyncio.sleep(0)
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(BrokerUnavailable, match="probe in flight"):
        await breaker.call(dep)
    gate.set()
    assert await probe == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_breaker_ignores_errors_that_are_not_the_dependencys_fault() -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, clock=FakeClock())

    async def bad_request() -> None:
        raise ValueError("caller's mistake")

    for _ in range(3):
        with pytest.raises(ValueError, match="caller's mistake"):
            await breaker.call(bad_request)
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("start", "illegal"),
    [
        (BreakerState.CLOSED, BreakerState.HALF_OPEN),
        (BreakerState.CLOSED, BreakerState.CLOSED),
        (BreakerState.OPEN, BreakerState.CLOSED),
        (BreakerState.OPEN, BreakerState.OPEN),
        (BreakerState.HALF_OPEN, BreakerState.HALF_OPEN),
    ],
)
def test_illegal_breaker_transition_raises(start: BreakerState, illegal: BreakerState) -> None:
    with pytest.raises(InternalError, match="breaker redis: illegal"):
        advance_breaker("redis", start, illegal)


# -- RetryBudget and call_with_retries ------------------------------------------------------


def test_retry_budget_allows_about_one_retry_per_ten_calls() -> None:
    budget = RetryBudget(0.1, min_per_second=0, clock=FakeClock())
    allowed = 0
    for _ in range(1000):
        budget.record_call()
        allowed += budget.try_spend()  # every call fails and wants a retry

    assert 90 <= allowed <= 100
    assert budget.denied == 1000 - allowed


def test_retry_budget_lets_a_quiet_node_retry() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.1, min_per_second=1, clock=clock)
    budget.record_call()
    assert not budget.try_spend()

    clock.advance(1)
    budget.record_call()
    assert budget.try_spend()


def test_retry_budget_keeps_at_most_cap_tokens() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.1, cap=3, min_per_second=1, clock=clock)
    clock.advance(3600)
    budget.record_call()

    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def _budget(tokens: int) -> RetryBudget:
    """A budget holding ``tokens`` retries and earning no more (its clock stands still)."""
    clock = FakeClock()
    budget = RetryBudget(0.0, cap=tokens, min_per_second=1, clock=clock)
    clock.advance(tokens)
    budget.record_call()  # earns one token per second that passed
    return budget


async def _retries(budget: RetryBudget, fn: Callable[[], Awaitable[Any]], **kw: Any) -> Any:
    return await call_with_retries(fn, budget=budget, base_delay=0.001, max_delay=0.002, **kw)


async def test_call_with_retries_retries_an_unavailable_dependency_until_it_answers() -> None:
    dep = Dependency()
    outcomes = iter([True, True, False])

    async def flaky() -> str:
        dep.failing = next(outcomes)
        return await dep()

    assert await _retries(_budget(10), flaky, attempts=3) == "ok"
    assert dep.calls == 3


async def test_call_with_retries_stops_retrying_when_the_budget_is_spent() -> None:
    dep = Dependency()
    dep.failing = True
    budget = _budget(1)

    with pytest.raises(BrokerUnavailable):
        await _retries(budget, dep, attempts=5)
    assert dep.calls == 2  # the call and one retry
    assert budget.denied == 1


async def test_call_with_retries_makes_at_most_attempts_calls() -> None:
    dep = Dependency()
    dep.failing = True

    with pytest.raises(BrokerUnavailable):
        await _retries(_budget(100), dep, attempts=3)
    assert dep.calls == 3


async def test_call_with_retries_spends_a_token_per_retry_and_none_after_the_last_attempt() -> None:
    dep = Dependency()
    dep.failing = True
    budget = _budget(100)

    with pytest.raises(BrokerUnavailable):
        await _retries(budget, dep, attempts=3)
    assert (dep.calls, budget.spent, budget.denied) == (3, 2, 0)


async def test_call_with_retries_never_retries_other_errors() -> None:
    calls = 0

    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("caller's mistake")

    with pytest.raises(ValueError, match="caller's mistake"):
        await _retries(_budget(100), bad_request, attempts=3)
    assert calls == 1


async def test_retries_under_an_outage_add_at_most_a_tenth_to_the_load() -> None:
    budget = RetryBudget(0.1, min_per_second=0, clock=FakeClock())
    dep = Dependency()
    dep.failing = True
    for _ in range(200):
        with pytest.raises(BrokerUnavailable):
            await call_with_retries(dep, budget=budget, attempts=5, base_delay=0.0001)

    assert 200 < dep.calls <= 220


# -- GuardedBroker ---------------------------------------------------------------------------


def _publication(n: int) -> Publication:
    return Publication(data=msgspec.Raw(b'{"n":%d}' % n))


OPTIONS = PublishOptions(history_size=10, history_ttl=60)


def _guarded(inner: FaultyBroker, clock: FakeClock, **breaker: Any) -> GuardedBroker:
    budget = RetryBudget(clock=clock)
    clock.advance(10)  # the retry budget earns tokens over time: start with some
    return GuardedBroker(
        inner, breaker=CircuitBreaker("broker", clock=clock, **breaker), budget=budget
    )


def test_a_success_seen_outside_calls_closes_an_open_breaker_at_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=5, clock=clock)
    asyncio.run(_fail_times(breaker, Dependency(), 1))
    assert breaker.state is BreakerState.OPEN

    breaker.record_success()  # e.g. the subscriber connection came back

    assert breaker.state is BreakerState.CLOSED
    assert breaker.allows_calls


class _Reconnecting:
    """An inner broker that only starts and, on demand, reports a reconnect."""

    healthy = True

    async def start(self, handler: Any) -> None:
        self.handler = handler


async def test_guarded_broker_closes_its_breaker_before_passing_on_a_resync() -> None:
    clock = FakeClock()
    inner = _Reconnecting()
    broker = GuardedBroker(
        inner,  # type: ignore[arg-type]
        breaker=CircuitBreaker("broker", failure_threshold=1, reset_timeout=5, clock=clock),
    )
    seen: list[tuple[set[str], bool]] = []

    class Node:
        def on_resync(self, channels: set[str]) -> None:
            # Every client is about to resubscribe through this broker.
            seen.append((channels, broker.healthy))

    await broker.start(Node())  # type: ignore[arg-type]
    await _fail_times(broker.breaker, Dependency(), 1)  # Redis went away: open
    assert not broker.healthy

    inner.handler.on_resync({"chat:room"})  # the subscriber reconnected

    assert seen == [({"chat:room"}, True)]
    assert broker.breaker.state is BreakerState.CLOSED


async def test_guarded_broker_never_retries_a_publish_without_idempotency_key() -> None:
    inner = FaultyBroker()
    broker = _guarded(inner, FakeClock())
    inner.fail("publish", times=1)

    with pytest.raises(BrokerUnavailable):
        await broker.publish("chat:room", _publication(1), OPTIONS)
    assert inner.calls["publish"] == 1
    page = await inner.history("chat:room", limit=-1)
    assert page.publications == []


async def test_guarded_broker_retries_a_publish_with_idempotency_key_and_stores_it_once() -> None:
    inner = FaultyBroker()
    broker = _guarded(inner, FakeClock())
    inner.fail("publish", times=1)

    result = await broker.publish(
        "chat:room", _publication(1), OPTIONS._replace(idempotency_key="msg-1")
    )

    assert inner.calls["publish"] == 2
    assert result.position.offset == 1
    page = await inner.history("chat:room", limit=-1)
    assert [p.offset for p in page.publications] == [1]


async def test_guarded_broker_retries_publishes_sent_together_only_if_each_has_a_key() -> None:
    inner = FaultyBroker()
    broker = _guarded(inner, FakeClock())
    keyed = [
        PublishItem("chat:room", _publication(n), OPTIONS._replace(idempotency_key=f"m{n}"))
        for n in range(3)
    ]
    inner.fail("publish", times=1)
    with pytest.raises(BrokerUnavailable):
        await broker.publish_many([*keyed[:2], PublishItem("chat:room", _publication(9), OPTIONS)])
    assert inner.calls["publish"] == 1

    inner.fail("publish", times=1)
    results = await broker.publish_many(keyed)

    assert inner.calls["publish"] == 3
    assert [r.position.offset for r in results] == [1, 2, 3]
    page = await inner.history("chat:room", limit=-1)
    assert [p.offset for p in page.publications] == [1, 2, 3]


async def test_guarded_broker_retries_history_reads() -> None:
    inner = FaultyBroker()
    broker = _guarded(inner, FakeClock())
    inner.fail("history", times=1)

    page = await broker.history("chat:room", limit=-1)

    assert inner.calls["history"] == 2
    assert page.publications == []


async def test_guarded_broker_is_unhealthy_and_fails_fast_while_its_breaker_is_open() -> None:
    clock = FakeClock()
    inner = FaultyBroker()
    broker = _guarded(inner, clock, failure_threshold=2, reset_timeout=5)
    inner.fail("publish", times=None)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            await broker.publish("chat:room", _publication(1), OPTIONS)
    assert not broker.healthy
    inner.heal()

    with pytest.raises(BrokerUnavailable, match="circuit open"):
        await broker.publish("chat:room", _publication(2), OPTIONS)
    assert inner.calls["publish"] == 2
    clock.advance(5)
    assert broker.healthy  # due for a probe
    await broker.publish("chat:room", _publication(3), OPTIONS)
    assert broker.breaker.state is BreakerState.CLOSED


async def test_guarded_broker_probe_answered_unrecoverable_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    inner = FaultyBroker()
    broker = _guarded(inner, clock, failure_threshold=1, reset_timeout=5)
    inner.fail("history", times=1)  # opens the breaker: its retries are refused
    with pytest.raises(BrokerUnavailable):
        await broker.history("chat:room", limit=-1)
    assert broker.breaker.state is BreakerState.OPEN
    clock.advance(5)
    inner.fail("history", times=1, exc=lambda: UnrecoverablePosition())

    with pytest.raises(UnrecoverablePosition):  # the probe: an answer, not a failure
        await broker.history("chat:room", since=StreamPosition(7, "gone"), limit=10)

    assert broker.breaker.state is BreakerState.HALF_OPEN
    assert broker.healthy  # the probe is over: the next call may probe
    await broker.history("chat:room", limit=-1)
    assert broker.breaker.state is BreakerState.CLOSED


# -- RecoveryCache -------------------------------------------------------------------------


def _n(publication: Publication) -> int:
    n: int = msgspec.json.decode(bytes(publication.data))["n"]
    return n


async def _publish(broker: MemoryBroker, cache: RecoveryCache, n: int) -> Publication:
    publication = _publication(n)
    broker.publish_now("chat:room", publication, OPTIONS)
    cache.on_publication("chat:room", publication)  # what the node does on delivery
    return publication


async def test_recovery_cache_serves_new_publications_without_reading_the_broker() -> None:
    broker = MemoryBroker()
    cache = RecoveryCache(broker, FakeClock())
    for n in range(1, 4):
        await _publish(broker, cache, n)
    epoch = (await broker.history("chat:room")).position.epoch
    first = await cache.history(
        "chat:room", size=10, ttl=60, since=StreamPosition(1, epoch), limit=100
    )
    for n in range(4, 6):
        await _publish(broker, cache, n)

    later = await cache.history(
        "chat:room", size=10, ttl=60, since=StreamPosition(2, epoch), limit=100
    )

    assert [p.offset for p in first.publications] == [2, 3]
    assert [p.offset for p in later.publications] == [3, 4, 5]
    assert [_n(p) for p in later.publications] == [3, 4, 5]
    assert later.position == StreamPosition(5, epoch)
    assert cache.broker_reads == 1


async def test_recovery_cache_drops_its_tail_on_a_gap_and_reads_the_broker_again() -> None:
    broker = MemoryBroker()
    cache = RecoveryCache(broker, FakeClock())
    for n in range(1, 4):
        await _publish(broker, cache, n)
    epoch = (await broker.history("chat:room")).position.epoch
    await cache.history("chat:room", size=10, ttl=60, since=StreamPosition(3, epoch), limit=10)
    broker.publish_now("chat:room", _publication(4), OPTIONS)  # this node never heard it
    await _publish(broker, cache, 5)

    page = await cache.history(
        "chat:room", size=10, ttl=60, since=StreamPosition(3, epoch), limit=10
    )

    assert [p.offset for p in page.publications] == [4, 5]  # the missed one is not skipped
    assert cache.broker_reads == 2


async def test_recovery_cache_trims_its_tail_to_the_history_size() -> None:
    broker = MemoryBroker()
    cache = RecoveryCache(broker, FakeClock())
    options = OPTIONS._replace(history_size=3)
    for n in range(1, 4):
        broker.publish_now("chat:room", _publication(n), options)
    epoch = (await broker.history("chat:room")).position.epoch
    await cache.history("chat:room", size=3, ttl=60, since=StreamPosition(3, epoch), limit=10)
    for n in range(4, 6):
        publication = _publication(n)
        broker.publish_now("chat:room", publication, options)
        cache.on_publication("chat:room", publication)

    with pytest.raises(UnrecoverablePosition):
        await cache.history("chat:room", size=3, ttl=60, since=StreamPosition(1, epoch), limit=10)
    page = await cache.history(
        "chat:room", size=3, ttl=60, since=StreamPosition(2, epoch), limit=10
    )
    assert [p.offset for p in page.publications] == [3, 4, 5]


async def _storm(cache: RecoveryCache, epoch: str, count: int) -> list[asyncio.Task[Any]]:
    """``count`` recoveries of chat:room at once, each from its own position."""
    return [
        asyncio.create_task(
            cache.history(
                "chat:room", size=10, ttl=60, since=StreamPosition(i % 3, epoch), limit=10
            )
        )
        for i in range(count)
    ]


async def _stream(broker: FaultyBroker) -> str:
    for n in range(1, 4):
        await broker.publish("chat:room", _publication(n), OPTIONS)
    return (await broker.inner.history("chat:room")).position.epoch


async def test_recoveries_waiting_on_a_failed_stream_read_fail_with_it_and_read_nothing() -> None:
    broker = FaultyBroker()
    cache = RecoveryCache(broker, FakeClock())
    epoch = await _stream(broker)
    broker.hold("history")
    storm = await _storm(cache, epoch, 50)
    await broker.wait_held("history")
    broker.fail("history", times=None)  # the held read will fail: the broker is down
    broker.release("history")
    outcomes = await asyncio.gather(*storm, return_exceptions=True)
    broker.heal()
    after = await cache.history(
        "chat:room", size=10, ttl=60, since=StreamPosition(1, epoch), limit=10
    )

    assert all(isinstance(o, BrokerUnavailable) for o in outcomes)  # temporary: retry later
    assert broker.calls["history"] == 2  # the failed read, then one read once it is back
    assert [p.offset for p in after.publications] == [2, 3]


async def test_recoveries_go_on_with_one_read_when_the_recovery_that_started_it_is_cancelled() -> (
    None
):
    broker = FaultyBroker()
    cache = RecoveryCache(broker, FakeClock())
    epoch = await _stream(broker)
    broker.hold("history")
    storm = await _storm(cache, epoch, 50)
    await broker.wait_held("history")
    storm[0].cancel()  # the client whose recovery started the read went away
    await asyncio.sleep(0)
    broker.release("history")
    outcomes = await asyncio.gather(*storm[1:])

    assert storm[0].cancelled()
    assert broker.calls["history"] == 2  # the abandoned read, and one more for everyone
    for i, page in enumerate(outcomes, start=1):
        assert [p.offset for p in page.publications] == list(range(i % 3 + 1, 4))


async def test_two_hundred_concurrent_recoveries_of_one_channel_cost_one_broker_read() -> None:
    """A reconnection storm: 200 clients of one channel resubscribe at once, each from its
    own position, while publications keep coming. One stream read serves them all, and
    each client gets exactly what it missed, once, in order."""
    broker = FaultyBroker()
    chat = msgspec.structs.replace(OPEN, join_leave=False, presence=False)
    config = make_config(allow_anonymous=True, namespaces={"chat": chat})
    async with local_node(config, broker=broker) as node:
        results = [await node.publish("chat:room", b'{"n":%d}' % n) for n in range(1, 11)]
        epoch = results[0].position.epoch
        sessions = [LocalSession(node) for _ in range(200)]
        for session in sessions:
            await session.call("connect", {"token": mint_connection_token(TEST_SECRET, "u")})
        reads_before = broker.calls["history"]

        broker.hold("history", on_reply=True)  # the stream read is slow to answer
        pending = []
        for i, session in enumerate(sessions):
            request = {"channel": "chat:room", "recover": True, "offset": i % 10, "epoch": epoch}
            pending.append(session.send_command("subscribe", request))
        await broker.wait_held("history")
        # Publications made while the read is in flight: heard live, not in its answer.
        for n in (11, 12):
            await node.publish("chat:room", b'{"n":%d}' % n)
        broker.release("history")
        replies = [await s.reply(cid) for s, cid in zip(sessions, pending, strict=True)]
        await node.publish("chat:room", b'{"n":13}')
        live = [await s.next_push() for s in sessions]
        extra = [len(s.pushes) for s in sessions]

    assert broker.calls["history"] - reads_before == 1
    assert node.recovery.broker_reads == 1
    for i, (reply, push) in enumerate(zip(replies, live, strict=True)):
        result = reply["subscribe"]
        assert result["recovered"] is True
        recovered = [p["offset"] for p in result.get("publications", [])]
        assert [*recovered, push["pub"]["offset"]] == list(range(i % 10 + 1, 14))
    assert extra == [0] * 200  # nothing delivered twice


# -- config ------------------------------------------------------------------------------


def test_ephemeral_namespace_with_history_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(
        '[namespaces.typing]\nlane = "ephemeral"\nhistory_size = 10\nhistory_ttl = 60\n'
    )

    with pytest.raises(ConfigError, match=r"namespaces\.typing") as raised:
        load_config(path, env={})
    assert "history_size" in str(raised.value)


async def test_breaker_and_retry_budget_follow_the_config() -> None:
    env = {
        "TETHER_BROKER": "redis",
        "TETHER_REDIS_URL": "redis://127.0.0.1:1",
        "TETHER_BREAKER_FAILURES": "3",
        "TETHER_BREAKER_RESET": "7.5",
        "TETHER_RETRY_BUDGET_RATIO": "0.25",
    }
    broker, presence = server.make_broker(load_config(env=env).config)
    try:
        assert isinstance(broker, GuardedBroker)
        assert broker.breaker.failure_threshold == 3
        assert broker.breaker.reset_timeout == 7.5
        assert broker.budget.ratio == 0.25
    finally:
        await broker.close()
        await presence.close()
