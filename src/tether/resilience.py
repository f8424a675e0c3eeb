"""Circuit breaker and retry budget: the guards on every call that leaves the process.

Why our own breaker: the libraries reviewed (purgatory, aiobreaker, pybreaker,
circuitbreaker) either bring a storage layer we do not need, are unmaintained, or are
synchronous at heart; the state machine below is a small table that a fake clock can
drive in tests. Backoff with full jitter comes from tenacity.

Breaker states (a table, as in :mod:`tether.protocol.session`)::

    CLOSED    --failure_threshold consecutive failures-->  OPEN
    OPEN      --reset_timeout elapsed, next call-------->  HALF_OPEN (that call is the probe)
    HALF_OPEN --probe succeeds-------------------------->  CLOSED
    HALF_OPEN --probe fails----------------------------->  OPEN

While OPEN (and while a probe is in flight), calls fail at once with BrokerUnavailable:
a dead dependency costs nothing and tells callers "temporary, retry later".

Retry budget: retries may add at most ``ratio`` (10%) to the load, plus a small floor, so
that retries can never multiply an outage's load.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_attempt,
    wait_random_exponential,
)

from tether.errors import BrokerUnavailable, InternalError

log = structlog.get_logger("tether.resilience")

T = TypeVar("T")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


BREAKER_TRANSITIONS: dict[BreakerState, frozenset[BreakerState]] = {
    BreakerState.CLOSED: frozenset({BreakerState.OPEN}),
    BreakerState.OPEN: frozenset({BreakerState.HALF_OPEN}),
    BreakerState.HALF_OPEN: frozenset({BreakerState.CLOSED, BreakerState.OPEN}),
}


def advance_breaker(name: str, current: BreakerState, new: BreakerState) -> BreakerState:
    """Return ``new`` if :data:`BREAKER_TRANSITIONS` allows ``current -> new``; raise
    InternalError otherwise (the breaker's own code asked for it: a bug)."""
    if new not in BREAKER_TRANSITIONS[current]:
        raise InternalError(f"breaker {name}: illegal {current.value} -> {new.value}")
    return new


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; probes after
    ``reset_timeout`` seconds. ``clock`` is monotonic seconds."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        failure: type[Exception] = BrokerUnavailable,
    ) -> None:
        self.name = name
        self.failure = failure
        """The exception that counts as the dependency failing, and that a refused call
        raises (BrokerUnavailable for brokers, BackendUnavailable for backend hooks)."""
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.rejected = 0
        self.transitions = dict.fromkeys(BreakerState, 0)
        """How many times the breaker entered each state (for /metrics)."""

    def _move(self, new: BreakerState) -> None:
        self.state = advance_breaker(self.name, self.state, new)
        log.warning("circuit breaker", name=self.name, state=new.value)
        self.transitions[new] += 1

    @property
    def allows_calls(self) -> bool:
        """False while OPEN and not yet due for a probe."""
        if self.state is BreakerState.OPEN:
            return self._clock() - self._opened_at >= self.reset_timeout
        return not (self.state is BreakerState.HALF_OPEN and self._probing)

    def _before(self) -> None:
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_timeout:
                self.rejected += 1
                raise self.failure(f"{self.name}: circuit open")
            self._move(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probing:
                self.rejected += 1
                raise self.failure(f"{self.name}: circuit half-open, probe in flight")
            self._probing = True

    def _success(self) -> None:
        self._failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            self._move(BreakerState.CLOSED)

    def _failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            self._opened_at = self._clock()
            self._move(BreakerState.OPEN)
            return
        self._failures += 1
        if self.state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._move(BreakerState.OPEN)

    def record_success(self) -> None:
        """The dependency answered outside :meth:`call` (a reconnect that worked): close
        at once instead of waiting for ``reset_timeout`` and a probe."""
        if self.state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN)
        self._success()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` through the breaker. Only :attr:`failure` counts as a failure
        (a caller's mistake says nothing about the dependency's health)."""
        self._before()
        try:
            result = await fn()
        except self.failure:
            self._failure()
            raise
        except BaseException:
            if self.state is BreakerState.HALF_OPEN:
                self._probing = False  # an unrelated error: let the next call probe
            raise
        self._success()
        return result


class RetryBudget:
    """Each call earns ``ratio`` of a retry token (at most ``cap`` kept); each retry spends
    one. ``min_per_second`` tokens trickle in regardless, so a quiet node can still retry."""

    def __init__(
        self,
        ratio: float = 0.1,
        *,
        cap: float = 100,
        min_per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.cap = cap
        self.min_per_second = min_per_second
        self._clock = clock
        self._tokens = 0.0
        self._stamp = clock()
        self.spent = 0
        self.denied = 0

    def _earn(self, tokens: float) -> None:
        now = self._clock()
        earned = tokens + (now - self._stamp) * self.min_per_second
        self._tokens = min(self.cap, self._tokens + earned)
        self._stamp = now

    def record_call(self) -> None:
        self._earn(self.ratio)

    def try_spend(self) -> bool:
        """Spend a token for one retry if there is one. The time-based trickle counts up
        to now, so a caller that only retries (an outbox during an outage) still gets
        ``min_per_second``."""
        self._earn(0.0)
        if self._tokens >= 1:
            self._tokens -= 1
            self.spent += 1
            return True
        self.denied += 1
        return False


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    budget: RetryBudget,
    attempts: int = 3,
    base_delay: float = 0.05,
    max_delay: float = 1.0,
    retry_if: Callable[[BaseException], bool] = lambda exc: isinstance(exc, BrokerUnavailable),
) -> T:
    """Call ``fn``; on an error ``retry_if`` accepts (default: BrokerUnavailable) retry with
    full-jitter exponential backoff, at most ``attempts`` calls in all and only while
    ``budget`` allows. Only for operations that are safe to repeat (reads, idempotent
    publishes, idempotent backend hooks)."""
    budget.record_call()
    # The first attempt without tenacity: nearly every call succeeds at once, and a
    # retrying state per call was a tenth of a connect over Redis (connect-cost profile).
    try:
        return await fn()
    except Exception as exc:
        if attempts <= 1 or not retry_if(exc) or not budget.try_spend():
            raise
    # The rest as tenacity would have gone on: attempt n waits up to base_delay * 2^(n-1),
    # so the k-th call here (attempt k + 1) has twice the multiplier.
    await asyncio.sleep(random.uniform(0.0, min(base_delay, max_delay)))
    rest = attempts - 1

    def should_retry(state: RetryCallState) -> bool:
        # Retry only an unavailable dependency, and only while the budget allows. tenacity
        # asks before it checks ``stop``: after the last attempt, spend no token.
        outcome = state.outcome
        if outcome is None or not outcome.failed or state.attempt_number >= rest:
            return False
        exc = outcome.exception()
        return exc is not None and retry_if(exc) and budget.try_spend()

    retrying = AsyncRetrying(
        retry=should_retry,
        stop=stop_after_attempt(rest),
        wait=wait_random_exponential(multiplier=2 * base_delay, max=max_delay),
        reraise=True,
    )

    # tenacity awaits only coroutine functions; ``fn`` may be a plain callable returning
    # an awaitable (a lambda), which it would hand back un-awaited.
    async def attempt() -> T:
        return await fn()

    return await retrying(attempt)
