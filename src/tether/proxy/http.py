"""One outbound HTTP endpoint behind its own bulkhead, circuit breaker and retry budget.

Each hook of each proxy, and each webhook/push receiver, gets one :class:`Endpoint`:

* its own aiohttp connection pool (``max_in_flight`` connections) and concurrency limit:
  a call beyond ``max_in_flight`` is refused at once (``bulkhead_full``), never queued, so
  a slow ``/publish`` cannot starve ``/connect``;
* its own :class:`~tether.resilience.CircuitBreaker`: ``breaker_failures`` consecutive
  failed calls open it; while open, calls are refused at once (``circuit_open``);
* its own :class:`~tether.resilience.RetryBudget`: only endpoints marked idempotent retry,
  and only after a refused connection or an HTTP error status (a timeout has used the
  time; a bad answer would be bad again), while the budget allows.

Every failed call raises :class:`~tether.errors.BackendUnavailable` whose ``reason`` is
one of :data:`REASONS`, and logs one line. What the answer must be:

* HTTP 2xx within ``timeout`` seconds for the whole call (a slow drip of bytes is a
  ``timeout``); a 3xx is never followed (``redirect``); another status is ``status``;
* at most ``max_response_bytes`` (``too_large``, decided while reading: a huge body is
  never held);
* what ``parse`` accepts (``malformed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import structlog

from tether.errors import BackendUnavailable
from tether.resilience import CircuitBreaker, RetryBudget, call_with_retries

log = structlog.get_logger("tether.proxy")

T = TypeVar("T")

REASONS = (
    "timeout",
    "connection",
    "status",
    "redirect",
    "too_large",
    "malformed",
    "circuit_open",
    "bulkhead_full",
)
"""Why a call failed (the ``reason`` label of the metrics)."""
REJECTIONS = ("circuit_open", "bulkhead_full")
"""Reasons for which no request was sent."""
_RETRYABLE = frozenset({"connection", "status"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Limits:
    timeout: float = 1.0
    max_in_flight: int = 100
    max_response_bytes: int = 1 << 20
    breaker_failures: int = 5
    breaker_reset: float = 5.0
    retry_budget_ratio: float = 0.1
    retry_attempts: int = 2
    """Calls in all for an idempotent endpoint (1 call + 1 retry)."""


@dataclass(slots=True)
class EndpointStats:
    """Counters read by ``/metrics`` (never reset)."""

    calls: int = 0
    """Calls that sent a request (not refused by the bulkhead or the breaker)."""
    requests: int = 0
    """HTTP requests sent (retries included)."""
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    @property
    def retries(self) -> int:
        """Requests beyond the first of each call: the retries the budget allowed."""
        return self.requests - self.calls

    def observe(self, seconds: float) -> None:
        self.latency_count += 1
        self.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_counts[i] += 1


class Endpoint:
    """POSTs JSON to ``url``. Create it anywhere; :meth:`start` in the running loop."""

    def __init__(
        self,
        name: str,
        url: str,
        limits: Limits,
        *,
        idempotent: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.url = url
        self.limits = limits
        self.idempotent = idempotent
        self.breaker = CircuitBreaker(
            name,
            failure_threshold=limits.breaker_failures,
            reset_timeout=limits.breaker_reset,
            clock=clock,
            failure=BackendUnavailable,
        )
        # A small bank: after a quiet hour the first failing burst cannot spend 100.
        self.budget = RetryBudget(limits.retry_budget_ratio, cap=10, clock=clock)
        self.in_flight = 0
        self.stats = EndpointStats()
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.limits.max_in_flight)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.limits.timeout),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _refuse(self, reason: str, why: str) -> BackendUnavailable:
        self.stats.failures[reason] += 1
        return BackendUnavailable(f"{self.name}: {why}", reason)

    async def call(
        self, body: bytes, parse: Callable[[bytes], T], headers: Mapping[str, str] = {}
    ) -> T:
        """POST ``body``; return ``parse(answer)``. ``parse`` raises ValueError for an
        answer it does not accept. Raises :class:`BackendUnavailable`."""
        if self.in_flight >= self.limits.max_in_flight:
            raise self._refuse("bulkhead_full", f"{self.in_flight} calls in flight")
        if not self.breaker.allows_calls:
            raise self._refuse("circuit_open", "circuit open")
        self.in_flight += 1
        self.stats.calls += 1
        try:
            if not self.idempotent:
                return await self.breaker.call(lambda: self._post(body, parse, headers))

            def retryable(exc: BaseException) -> bool:
                # Not into a breaker that this failure just opened.
                return (
                    isinstance(exc, BackendUnavailable)
                    and exc.reason in _RETRYABLE
                    and self.breaker.allows_calls
                )

            return await call_with_retries(
                lambda: self.breaker.call(lambda: self._post(body, parse, headers)),
                budget=self.budget,
                attempts=self.limits.retry_attempts,
                base_delay=0.02,
                max_delay=0.2,
                retry_if=retryable,
            )
        except BackendUnavailable as exc:
            if exc.reason == "circuit_open":  # the breaker opened between two attempts
                self.stats.failures["circuit_open"] += 1
            raise
        finally:
            self.in_flight -= 1

    async def _post(
        self, body: bytes, parse: Callable[[bytes], T], headers: Mapping[str, str]
    ) -> T:
        session = self._session
        if session is None:
            raise RuntimeError(f"{self.name}: Endpoint.start() was not called")
        started = self._clock()
        self.stats.requests += 1
        send = {"Content-Type": "application/json", **headers}
        try:
            async with session.post(
                self.url, data=body, headers=send, allow_redirects=False
            ) as response:
                if 300 <= response.status < 400:
                    where = response.headers.get("Location", "?")
                    raise self._fail("redirect", f"HTTP {response.status} to {where}")
                if not 200 <= response.status < 300:
                    raise self._fail("status", f"HTTP {response.status}")
                limit = self.limits.max_response_bytes
                if response.content_length is not None and response.content_length > limit:
                    raise self._fail("too_large", f"{response.content_length} bytes")
                answer = bytearray()
                async for chunk in response.content.iter_any():
                    answer += chunk
                    if len(answer) > limit:
                        raise self._fail("too_large", f"more than {limit} bytes")
        except TimeoutError:
            raise self._fail("timeout", f"no whole answer in {self.limits.timeout} s") from None
        except aiohttp.ClientError as exc:
            raise self._fail("connection", f"{type(exc).__name__}: {exc}") from None
        finally:
            self.stats.observe(self._clock() - started)
        try:
            return parse(bytes(answer))
        except ValueError as exc:
            raise self._fail("malformed", str(exc)) from None

    def _fail(self, reason: str, why: str) -> BackendUnavailable:
        self.stats.failures[reason] += 1
        log.warning("backend call failed", endpoint=self.name, reason=reason, error=why)
        return BackendUnavailable(f"{self.name}: {why}", reason)
