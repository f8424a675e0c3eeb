"""The edge between a client session and the socket carrying it.

A transport moves already-framed bytes: the node frames each message once (with the
framer of the one client transport it serves) and hands the same bytes to every
connection. Two implementations: the WebSocket listener, and the in-memory pair of
:mod:`tether.testing.transports`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ClientTransport(Protocol):
    remote: str
    """Peer address, for logs and per-IP limits."""

    def write(self, data: bytes) -> None:
        """Queue framed bytes for the socket; never blocks."""

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then a close with ``code``/``reason``, then close."""


class Flusher:
    """Coalesces writes: every connection that got data during this loop tick is flushed
    once, with one ``write`` of everything queued for it, by a single scheduled callback."""

    __slots__ = ("_call_soon", "_dirty", "_scheduled", "_tick_end")

    def __init__(self, call_soon: Callable[[Callable[[], None]], object]) -> None:
        self._dirty: list[Flushable] = []
        self._scheduled = False
        self._call_soon = call_soon
        self._tick_end: list[Callable[[], None]] = []

    def on_tick_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the start of every flush (the hub closes its tick batches)."""
        self._tick_end.append(callback)

    def mark(self, conn: Flushable) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        for callback in self._tick_end:
            callback()
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()


class Flushable(Protocol):
    def flush(self) -> None: ...
