"""Lanes: the event class of a namespace, and every rule that depends on it.

Every namespace belongs to one lane (its config key ``lane``: ``"critical"``,
``"standard"`` or ``"ephemeral"``), so every channel has one, and so order within a
channel is kept. This module is the one place that says what a lane means; the queue
(:mod:`tether.core.outbound`), the hub and the node only ask it.

==========  =====================  ======================  ===========  =========  =======
lane        queue on a connection  over the queue bound    coalesced    history    publish
                                                           by key                  limit
==========  =====================  ======================  ===========  =========  =======
critical    urgent: with replies   never dropped: the      no           allowed    10000
            and pings, first       connection is slow
standard    tick batches, after    shed (dropped, then     no           allowed    5000
            critical               recovered) if the
                                   connection allows it,
                                   else slow
ephemeral   windows, newest per    dropped, oldest first;  yes          never      1000
            key, last              never a reason to close
==========  =====================  ======================  ===========  =========  =======

The shed rule (:func:`may_shed_standard`): a connection over its bound may drop its
standard lane instead of being closed only to keep a live critical subscription flowing,
and only when every live standard subscription can be recovered by resubscribing (the
client's own, in a namespace with recovery). The *publish limit* is the default of
``lane_publish_limits``: publishes in flight per lane, beyond which a lane refuses new
ones (:class:`LaneGate`) without touching the others.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class Lane(enum.StrEnum):
    """A namespace's event class. Its value is what the config says."""

    CRITICAL = "critical"
    STANDARD = "standard"
    EPHEMERAL = "ephemeral"

    @classmethod
    def named(cls, name: str) -> Lane:
        """The lane a (validated) config value names. Raises KeyError for another."""
        return _BY_NAME[name]

    @property
    def urgent(self) -> bool:
        """Queued with replies and pings, written before every other lane."""
        return self is Lane.CRITICAL

    @property
    def coalesced(self) -> bool:
        """Collected in windows and coalesced by key (the newest frame per key wins);
        dropped, oldest first, over its own bound, never a reason to close a connection.
        A publish's coalescing key means something only in this lane."""
        return self is Lane.EPHEMERAL

    @property
    def stored(self) -> bool:
        """May keep history (and so be recovered). Ephemeral events are never stored."""
        return self is not Lane.EPHEMERAL

    @property
    def sheddable(self) -> bool:
        """Its queued data may be dropped to keep the connection, then recovered by
        resubscribing (see :func:`may_shed_standard`)."""
        return self is Lane.STANDARD

    @property
    def protected(self) -> bool:
        """A live subscription in this lane is worth shedding the sheddable lane for."""
        return self is Lane.CRITICAL

    @property
    def default_publish_limit(self) -> int:
        """Default of ``lane_publish_limits[lane]``: publishes in flight."""
        return _DEFAULT_PUBLISH_LIMITS[self]


_BY_NAME: dict[str, Lane] = {lane.value: lane for lane in Lane}
_DEFAULT_PUBLISH_LIMITS = {Lane.CRITICAL: 10000, Lane.STANDARD: 5000, Lane.EPHEMERAL: 1000}

LANE_NAMES: tuple[str, ...] = tuple(lane.value for lane in Lane)
"""The config values, in lane order (critical, standard, ephemeral)."""


def default_publish_limits() -> dict[str, int]:
    """The default ``lane_publish_limits`` table."""
    return {lane.value: lane.default_publish_limit for lane in Lane}


def may_shed_standard(live: Iterable[tuple[Lane, bool]]) -> bool:
    """The shed rule. ``live`` is ``(lane, recoverable)`` for each live subscription of a
    connection whose queue is over its bound while its critical data fits alone;
    ``recoverable``: the client can resubscribe it and recover what it missed.

    True when the standard lane may be dropped instead of the connection: there is a
    live subscription of a protected lane (a chat to keep), at least one of the
    sheddable lane, and every one of those is recoverable."""
    protected = sheddable = False
    for lane, recoverable in live:
        if lane.protected:
            protected = True
        elif lane.sheddable:
            if not recoverable:
                return False
            sheddable = True
    return protected and sheddable


class LaneGate:
    """Admission of publishes per lane: at most ``limits[lane]`` in flight, so that a
    saturated lane is refused (load shedding) before any work and without touching the
    others. Call :meth:`enter` before the work and :meth:`leave` after it, once each."""

    __slots__ = ("_inflight", "_limits", "shed")

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = {lane: limits[lane.value] for lane in Lane}
        self._inflight = dict.fromkeys(Lane, 0)
        self.shed: dict[Lane, int] = dict.fromkeys(Lane, 0)
        """Publishes refused per lane because it had its limit in flight."""

    def enter(self, lane: Lane) -> bool:
        """Count one publish in flight in ``lane``; False (counted as shed) when the lane
        already has its limit."""
        if self._inflight[lane] >= self._limits[lane]:
            self.shed[lane] += 1
            return False
        self._inflight[lane] += 1
        return True

    def leave(self, lane: Lane) -> None:
        self._inflight[lane] -= 1
