"""The saturation signal: one number in 0..1 saying how close a node is to the first limit
it will hit, made for autoscalers and alerts (``tether_saturation``).

It is the largest of five parts, each the fraction of one limit in use:

========== ===================================================================== =========
part       computed as                                                           full at
========== ===================================================================== =========
loop       event-loop lag / ``LOOP_LAG_FULL`` (0.1 s)                             0.1 s late
cpu        process CPU seconds / wall seconds since the previous sample (one     one core
           event loop uses at most one core)
connections admitted sockets / ``max_connections``                               the cap
connects   connect attempts per second (admitted + refused) /                    the rate
           ``max_connects_per_second``
queue      bytes in outbound queues / (connections x ``outbound_queue_bytes``):  every queue
           how full the average connection's queue is                            full
========== ===================================================================== =========

Each part is clipped to 0..1. Rates (cpu, connects) are measured between two samples at
least ``MIN_WINDOW`` apart: a sample taken sooner repeats the previous figures, so a page
polling every second and Prometheus every 15 s do not make each other's windows tiny.

:class:`Saturation` is pure arithmetic over figures the caller reads (no I/O, no clock of
its own); :func:`of_node` keeps one per node and feeds it the node's figures, so that
``/metrics``, the node's announcements and ``/api/info`` share one window.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.core.node import Node

LOOP_LAG_FULL = 0.1
"""Seconds of event-loop lag counted as saturated: every delivery waits this long, and the
latency a phone sees grows with it (docs/howto/operate.md, TetherEventLoopLag)."""

MIN_WINDOW = 1.0
"""Shortest window, in seconds, over which the cpu and connects rates are measured."""

PARTS = ("loop", "cpu", "connections", "connects", "queue")


@dataclass(frozen=True, slots=True)
class Reading:
    """What the node shows at one instant (all figures cumulative or instantaneous)."""

    now: float  # monotonic seconds
    cpu_seconds: float  # process CPU time so far
    loop_lag: float  # seconds
    connections: int  # admitted sockets
    max_connections: int
    connect_attempts: int  # admitted + refused so far
    max_connects_per_second: float
    queued_bytes: int
    outbound_queue_bytes: int  # the per-connection bound


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


class Saturation:
    """Keeps the previous :class:`Reading` and turns a new one into the five parts."""

    def __init__(self) -> None:
        self._previous: Reading | None = None
        self._parts = dict.fromkeys(PARTS, 0.0)

    def update(self, reading: Reading) -> dict[str, float]:
        """The parts (``PARTS`` -> 0..1) for ``reading``; see the module docstring."""
        previous = self._previous
        if previous is not None and reading.now - previous.now < MIN_WINDOW:
            return dict(self._parts)
        parts = dict.fromkeys(PARTS, 0.0)
        parts["loop"] = _clip(reading.loop_lag / LOOP_LAG_FULL)
        if reading.max_connections > 0:
            parts["connections"] = _clip(reading.connections / reading.max_connections)
        if reading.connections > 0 and reading.outbound_queue_bytes > 0:
            budget = reading.connections * reading.outbound_queue_bytes
            parts["queue"] = _clip(reading.queued_bytes / budget)
        if previous is not None:
            elapsed = reading.now - previous.now
            parts["cpu"] = _clip((reading.cpu_seconds - previous.cpu_seconds) / elapsed)
            if reading.max_connects_per_second > 0:
                per_second = (reading.connect_attempts - previous.connect_attempts) / elapsed
                parts["connects"] = _clip(per_second / reading.max_connects_per_second)
        self._previous = reading
        self._parts = parts
        return dict(parts)


def overall(parts: dict[str, float]) -> float:
    """The saturation: the most loaded part."""
    return max(parts.values(), default=0.0)


def reading(node: Node) -> Reading:
    """``node``'s figures now (process CPU time: the node is the process's one loop)."""
    config = node.config
    admission = node.admission
    return Reading(
        now=time.monotonic(),
        cpu_seconds=time.process_time(),
        loop_lag=node.loop_lag,
        connections=admission.connections,
        max_connections=config.max_connections,
        connect_attempts=admission.admitted + admission.refused,
        max_connects_per_second=config.max_connects_per_second,
        queued_bytes=sum(client.queued_bytes for client in node.clients.values()),
        outbound_queue_bytes=config.outbound_queue_bytes,
    )


_BY_NODE: weakref.WeakKeyDictionary[Node, Saturation] = weakref.WeakKeyDictionary()


def of_node(node: Node) -> dict[str, float]:
    """The parts of ``node``'s saturation now, from the one :class:`Saturation` kept for it."""
    saturation = _BY_NODE.get(node)
    if saturation is None:
        saturation = _BY_NODE[node] = Saturation()
    return saturation.update(reading(node))
