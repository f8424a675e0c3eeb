"""Admission control: refuse early and politely what the node cannot take.

* New connections: a token bucket (``max_connects_per_second``, ``max_connects_burst``)
  and caps on concurrent connections, per node and per IP. A refused WebSocket upgrade
  gets HTTP 503 with ``Retry-After``; SDKs treat it as a transport failure and back off
  with jitter, so a reconnection storm is spread out instead of choking the node.
* Per user: ``max_connections_per_user``, checked at connect (error 111, temporary).
* Per connection publishes: a token bucket (``client_publish_rate``/``_burst``, error 111).
"""

from __future__ import annotations

import math
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored. ``clock`` is monotonic."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class Admission:
    """Node-wide admission of new connections. Counts what it admitted until
    :meth:`release` (call it exactly once per admitted connection)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connects_per_second: float,
        connects_burst: int,
        max_per_ip: int,
        clock: Callable[[], float],
    ) -> None:
        self._bucket = TokenBucket(connects_per_second, connects_burst, clock)
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.connections = 0
        self._per_ip: dict[str, int] = {}
        self.admitted = 0
        self.refused = 0

    def admit(self, ip: str) -> int | None:
        """None if admitted (counted), else the whole seconds to put in ``Retry-After``."""
        if self.connections >= self.max_connections:
            return self._refuse(1.0)
        if self.max_per_ip and self._per_ip.get(ip, 0) >= self.max_per_ip:
            return self._refuse(1.0)
        wait = self._bucket.take()
        if wait:
            return self._refuse(wait)
        self.connections += 1
        self.admitted += 1
        if self.max_per_ip:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def _refuse(self, wait: float) -> int:
        self.refused += 1
        return max(1, math.ceil(wait))

    def release(self, ip: str) -> None:
        self.connections -= 1
        if self.max_per_ip:
            count = self._per_ip.get(ip, 0) - 1
            if count > 0:
                self._per_ip[ip] = count
            else:
                self._per_ip.pop(ip, None)
