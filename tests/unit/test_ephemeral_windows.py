"""Ephemeral windows: the hub coalesces a channel's typing/cursor frames for up to
``ephemeral_window`` seconds and hands every subscriber one shared batch per window.

The loop is faked (:class:`~tether.testing.loop.FakeLoop`): callbacks run only when a test calls
:meth:`FakeLoop.tick` or :meth:`FakeLoop.advance`, so "the next iteration" and "the end of
the window" are exact and nothing depends on timing.
"""

from __future__ import annotations

from msgspec import Raw

from tether.core.hub import Hub
from tether.core.lanes import Lane
from tether.core.outbound import OutboundQueue, OverflowPolicy, QueueLimits, QueueStats
from tether.core.transport import Cadence, Flusher
from tether.protocol.messages import Publication
from tether.testing.loop import FakeLoop
from tether.testing.transports import JSON_LINES

WINDOW = 0.02
CHANNEL = "typing:room"


class Recorder:
    remote = "127.0.0.1:1"

    def __init__(self) -> None:
        self.writes: list[list[str]] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data.decode().split())

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")


class NeverOverflows:
    """The owner of a queue that must never reach its bound here."""

    def can_recover_standard(self) -> bool:
        raise AssertionError("over the bound")

    def resubscribe_standard(self) -> None:
        raise AssertionError("shed")

    def close_slow(self) -> None:
        raise AssertionError("slow")


class Subscriber(OutboundQueue):
    __slots__ = ("limits", "wire_format")

    transport: Recorder

    def __init__(self, limits: QueueLimits) -> None:
        super().__init__(limits, Recorder(), NeverOverflows())
        self.limits = limits
        self.wire_format = JSON_LINES


def setup(subscribers: int = 3) -> tuple[Hub[Subscriber], FakeLoop, list[Subscriber]]:
    loop = FakeLoop()
    stats = QueueStats()
    hub: Hub[Subscriber] = Hub(stats)
    flusher = Flusher(loop.call_soon)
    flusher.on_tick_end(hub.end_tick)
    cadence = Cadence(
        hub.flush_ephemeral, loop.call_soon, loop.call_later, interval=WINDOW, clock=loop.time
    )
    hub.use_ephemeral_cadence(cadence.request)
    limits = QueueLimits(
        policy=OverflowPolicy(max_bytes=1 << 20, max_ephemeral_bytes=1 << 16),
        flusher=flusher,
        call_soon=loop.call_soon,
        stats=stats,
    )
    subs = [Subscriber(limits) for _ in range(subscribers)]
    for sub in subs:
        for channel, lane in ((CHANNEL, Lane.EPHEMERAL), ("chat:room", Lane.CRITICAL)):
            hub.add_pending(channel, sub)
            hub.go_live(channel, sub, after_offset=0, lane=lane)
    return hub, loop, subs


def typing(hub: Hub[Subscriber], user: str, n: int) -> None:
    publication = Publication(data=Raw(f'"{user}{n}"'.encode()))
    hub.broadcast_publication(CHANNEL, publication, Lane.EPHEMERAL, key=user)


def sent(sub: Subscriber) -> list[str]:
    """The data of every publication ``sub`` received, in wire order."""
    return [part.split('"data":"')[1].split('"')[0] for w in sub.transport.writes for part in w]


def test_first_typing_frame_after_a_quiet_window_goes_out_on_the_next_iteration() -> None:
    hub, loop, subs = setup()
    typing(hub, "ann", 0)
    loop.settle()  # no timer involved: the leading edge of the window
    assert [sent(s) for s in subs] == [["ann0"]] * 3
    assert not loop.later


def test_a_typing_storm_reaches_each_subscriber_once_per_window_newest_per_key() -> None:
    hub, loop, subs = setup()
    typing(hub, "ann", 0)
    loop.settle()
    for n in range(1, 6):  # five more events per user, each in its own loop iteration
        for user in ("ann", "bob"):
            typing(hub, user, n)
            loop.settle()
    assert [len(s.transport.writes) for s in subs] == [1, 1, 1]  # held by the window

    loop.advance(WINDOW)

    for sub in subs:
        assert sub.transport.writes == [sub.transport.writes[0], sub.transport.writes[1]]
        assert sent(sub) == ["ann0", "ann5", "bob5"]
    assert hub.stats.ephemeral_coalesced == 8 * len(subs)  # ann1-4 and bob1-4, each
    assert hub.deliveries == 3 * len(subs)


def test_frames_without_a_coalescing_key_are_all_delivered() -> None:
    hub, loop, subs = setup(subscribers=1)
    for n in range(4):
        hub.broadcast_publication(
            CHANNEL, Publication(data=Raw(f'"c{n}"'.encode())), Lane.EPHEMERAL, key=None
        )
        loop.settle()
    loop.advance(WINDOW)
    assert sent(subs[0]) == ["c0", "c1", "c2", "c3"]
    assert hub.stats.ephemeral_coalesced == 0


def test_a_chat_frame_is_not_held_by_an_open_typing_window() -> None:
    hub, loop, subs = setup()
    typing(hub, "ann", 0)
    loop.settle()
    typing(hub, "ann", 1)  # the window is now open until WINDOW
    hub.broadcast_publication(
        "chat:room", Publication(data=Raw(b'"hello"'), offset=1), Lane.CRITICAL
    )
    loop.settle()
    assert [sent(s) for s in subs] == [["ann0", "hello"]] * 3
    loop.advance(WINDOW)
    assert [sent(s) for s in subs] == [["ann0", "hello", "ann1"]] * 3


def test_a_subscriber_that_goes_live_during_a_window_gets_each_frame_once() -> None:
    hub, loop, subs = setup(subscribers=1)
    typing(hub, "ann", 0)
    loop.settle()
    newcomer = Subscriber(subs[0].limits)
    hub.add_pending(CHANNEL, newcomer)
    typing(hub, "bob", 1)  # buffered for the newcomer, and in the open window
    hub.go_live(CHANNEL, newcomer, after_offset=0, lane=Lane.EPHEMERAL)
    loop.advance(WINDOW)
    assert sent(newcomer) == ["bob1"]
    assert sent(subs[0]) == ["ann0", "bob1"]


def test_a_paused_subscriber_keeps_only_the_newest_frame_per_key_over_many_windows() -> None:
    hub, loop, subs = setup(subscribers=2)
    blocked, healthy = subs
    blocked.pause_writing()
    for n in range(4):
        for user in ("ann", "bob"):
            typing(hub, user, n)
        loop.advance(WINDOW)
    assert sent(healthy) == ["ann0", "bob0", "ann1", "bob1", "ann2", "bob2", "ann3", "bob3"]
    assert sent(blocked) == []

    blocked.resume_writing()
    loop.settle()
    assert sent(blocked) == ["ann3", "bob3"]
    assert hub.stats.ephemeral_coalesced == 6


def test_a_held_frame_and_a_window_with_the_same_key_send_only_the_newest() -> None:
    hub, loop, subs = setup(subscribers=1)
    sub = subs[0]
    sub.pause_writing()
    typing(hub, "ann", 0)
    loop.settle()  # held in the connection's own table
    typing(hub, "ann", 1)
    sub.resume_writing()
    hub.flush_ephemeral()  # the window closes before the resumed connection is flushed
    loop.settle()
    assert sent(sub) == ["ann1"]


def test_cadence_runs_at_most_once_per_interval_and_serves_requests_at_its_end() -> None:
    loop = FakeLoop()
    runs: list[float] = []
    cadence = Cadence(
        lambda: runs.append(loop.now),
        loop.call_soon,
        loop.call_later,
        interval=0.5,
        clock=loop.time,
    )
    cadence.request()
    loop.settle()
    assert runs == [0.0]  # leading edge: at once
    loop.advance(0.1)
    cadence.request()
    cadence.request()
    loop.advance(0.1)
    assert runs == [0.0]
    loop.advance(0.3)
    assert runs == [0.0, 0.5]  # trailing edge: once, for both requests
    loop.advance(2.0)
    cadence.request()
    loop.settle()
    assert runs == [0.0, 0.5, 2.5]


def test_cadence_with_interval_zero_runs_on_every_next_iteration() -> None:
    loop = FakeLoop()
    runs: list[int] = []
    cadence = Cadence(
        lambda: runs.append(1), loop.call_soon, loop.call_later, interval=0, clock=loop.time
    )
    for _ in range(3):
        cadence.request()
        loop.settle()
    assert runs == [1, 1, 1]
    assert not loop.later
