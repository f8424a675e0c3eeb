"""What the failover tests (Sentinel, Redis Cluster) share: a steady publish stream and
the check that every loss a client suffered was signalled to it."""

from __future__ import annotations

import asyncio

from centrifuge import SubscribedContext
from cluster_kit import Attempt, Publisher
from sdk_kit import SubEvents

from tether.server import Server
from tether_bench.cluster import http_status

PERIOD = 0.02
"""Seconds between two publishes of the stream."""


class Stream:
    """Publishes ``{"seq": n}`` every :data:`PERIOD` until stopped; records every attempt
    and, on the side, what ``/ready`` said meanwhile."""

    def __init__(self, publisher: Publisher, server: Server, channel: str) -> None:
        self.channel = channel
        self.publisher = publisher
        self.server = server
        self.readiness: list[bool] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            await self.publisher.publish(self.channel, seq)
            seq += 1
            if seq % 5 == 0:
                status = await http_status(self.server.http_port, "/ready")
                self.readiness.append(status == 200)
            await asyncio.sleep(PERIOD)

    def stop(self) -> None:
        self._stop.set()

    def accepted(self) -> list[Attempt]:
        return self.publisher.accepted(self.channel)

    async def until_accepted(self, count: int) -> None:
        """Wait until ``count`` more publications are accepted (the caller bounds it)."""
        target = len(self.accepted()) + count
        while len(self.accepted()) < target:  # noqa: ASYNC110  (the stream task fills it)
            await asyncio.sleep(PERIOD)

    async def until_accepted_outside(self, epoch: str) -> None:
        """Wait until a publication is accepted in another epoch than ``epoch``."""
        while all(a.answer["result"]["epoch"] == epoch for a in self.accepted()):  # noqa: ASYNC110
            await asyncio.sleep(PERIOD)


def assert_every_loss_signalled(
    events: SubEvents, accepted: list[Attempt], first: SubscribedContext
) -> None:
    """Every accepted publication was received, or the client was told (a resubscribe
    with ``recovered: false`` into another epoch or past its offset)."""
    told = []
    while not events.subscribed.empty():
        told.append(events.subscribed.get_nowait())
    resets = [
        t for t in told if t.was_recovering and not t.recovered and t.stream_position is not None
    ]
    got = {p.data["seq"] for p in events.received}
    lost = [a for a in accepted if a.seq not in got]
    for attempt in lost:
        epoch, offset = attempt.answer["result"]["epoch"], attempt.answer["result"]["offset"]
        assert any(
            r.stream_position.epoch != epoch or r.stream_position.offset >= offset
            for r in resets
            if r.stream_position is not None
        ), f"seq {attempt.seq} ({epoch}, {offset}) lost without a word: {told}"
    # The client saw publications the new master never got: it must have been told.
    assert first.stream_position is not None
    assert any(r.stream_position.epoch != first.stream_position.epoch for r in resets
               if r.stream_position is not None), told  # fmt: skip
