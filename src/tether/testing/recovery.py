"""One table of recovery scenarios, run on every broker through every read path.

A client that resubscribes with ``recover`` sends the last position it saw; it gets
exactly what it missed with ``recovered: true``, or nothing and ``recovered: false`` with
the stream's current position (docs/explanation/recovery.md). Each row of
:data:`RECOVERY_SCENARIOS` is one situation and what the client gets in it.
:class:`~tether.testing.broker_contract.BrokerContract` runs every row on its broker
(so on every engine: memory, Redis, sharded Redis, Redis Cluster) through each of
:data:`RECOVERY_PATHS`:

* ``"broker"``: :func:`~tether.core.recovery.recover` reads the broker directly
  (:class:`BrokerStream`);
* ``"cache"``: it reads the node's :class:`~tether.core.recovery.RecoveryCache`, whose
  tail was loaded halfway through the publications and kept current by live delivery,
  as on a node that serves a reconnect storm.

Both paths must give the same answer: the cache is only a faster way to read the stream.

Positions in the table are ``since`` offsets in the stream's own epoch unless ``epoch``
names another one. An empty epoch means "any epoch", as in Centrifugo v6 (issue 10): the
SDKs' ``getState`` flow recovers from offset 0 with no epoch to get what the stream holds.
"""

from __future__ import annotations

import dataclasses

from tether.brokers.base import Broker, HistoryPage, StreamPosition

__all__ = ["RECOVERY_PATHS", "RECOVERY_SCENARIOS", "BrokerStream", "RecoveryScenario"]

RECOVERY_PATHS = ("broker", "cache")


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryScenario:
    """One recovery situation and its outcome.

    The stream (``history_size`` kept, the suite's ``history_ttl``) gets ``published``
    publications; then, in this order, its history is removed (``remove_history``), its
    ``history_ttl`` passes (``expire``), or its ``meta_ttl`` passes and it gets two
    publications in a new epoch (``restart``). The client recovers from ``since`` (in
    ``epoch``; None: the epoch the stream had when it published) with at most ``cap``
    publications. It gets the publications at ``missed`` offsets and ``recovered``;
    always the stream's current top as the position."""

    name: str
    published: int
    since: int
    recovered: bool
    missed: tuple[int, ...] = ()
    epoch: str | None = None
    history_size: int = 10
    cap: int = 300
    remove_history: bool = False
    expire: bool = False
    restart: bool = False


RECOVERY_SCENARIOS: tuple[RecoveryScenario, ...] = (
    # -- recovered: everything after the position is still in the stream -----------------
    RecoveryScenario("nothing missed", published=5, since=5, recovered=True),
    RecoveryScenario("missed a few", published=10, since=7, recovered=True, missed=(8, 9, 10)),
    RecoveryScenario(
        "from offset zero of the epoch", published=4, since=0, recovered=True, missed=(1, 2, 3, 4)
    ),
    RecoveryScenario("empty stream", published=0, since=0, recovered=True),
    RecoveryScenario(
        "missed exactly the cap", published=10, since=7, cap=3, recovered=True, missed=(8, 9, 10)
    ),
    RecoveryScenario(
        "just inside the trimmed stream",
        published=20,
        since=10,
        recovered=True,
        missed=tuple(range(11, 21)),
    ),
    RecoveryScenario(
        "expired, nothing missed", published=10, since=10, expire=True, recovered=True
    ),
    # Issue 10 (Centrifugo v6): an empty epoch is any epoch.
    RecoveryScenario("empty epoch", published=5, since=3, epoch="", recovered=True, missed=(4, 5)),
    RecoveryScenario(
        "zero position, empty epoch",
        published=5,
        since=0,
        epoch="",
        recovered=True,
        missed=(1, 2, 3, 4, 5),
    ),
    # -- not recovered: the loss is reported, never silent -------------------------------
    RecoveryScenario("missed more than the cap", published=10, since=6, cap=3, recovered=False),
    RecoveryScenario("trimmed", published=20, since=8, recovered=False),
    RecoveryScenario("another epoch", published=5, since=3, epoch="another-epoch", recovered=False),
    RecoveryScenario("expired", published=10, since=8, expire=True, recovered=False),
    RecoveryScenario(
        "history removed", published=10, since=8, remove_history=True, recovered=False
    ),
    RecoveryScenario("ahead of the stream", published=5, since=8, recovered=False),
    RecoveryScenario("stream restarted", published=5, since=5, restart=True, recovered=False),
    RecoveryScenario("empty epoch, trimmed", published=20, since=8, epoch="", recovered=False),
)


class BrokerStream:
    """A :class:`~tether.core.recovery.StreamReader` that reads ``broker`` directly, with
    no cache: the reference the :class:`~tether.core.recovery.RecoveryCache` is held to."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def history(
        self, channel: str, *, size: int, ttl: float, since: StreamPosition, limit: int
    ) -> HistoryPage:
        return await self.broker.history(channel, since=since, limit=limit)

    async def position(self, channel: str, *, size: int, ttl: float) -> StreamPosition:
        return (await self.broker.history(channel, limit=0)).position
