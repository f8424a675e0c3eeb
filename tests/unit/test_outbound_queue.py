"""The per-connection outbound queue: lanes, coalescing, bounds and the slow-client cut-off.

Each test drives an :class:`~tether.core.outbound.OutboundQueue` over a fake transport
that records every ``write``; the loop tick is a list of callbacks the test runs by hand,
so "the next tick" is exact and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import msgspec

from tether.core.outbound import OutboundQueue, OverflowPolicy, QueueLimits, TickBatch
from tether.core.transport import Flusher
from tether.testing.servers import OPEN, make_config
from tether.testing.transports import LocalSession, local_node
from tether.transports.http import api


class Tick:
    """``call_soon`` that collects callbacks; :meth:`run` is one loop iteration."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def run(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()

    def run_all(self) -> None:
        """Run ticks until nothing is scheduled (what the loop does while idle)."""
        for _ in range(100):
            if not self.callbacks:
                return
            self.run()
        raise AssertionError("callbacks keep rescheduling themselves")


class RecordingTransport:
    remote = "127.0.0.1:1"

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def frames(self) -> list[bytes]:
        """Every frame written so far, in wire order (frames end with a newline here)."""
        return [f + b"\n" for w in self.writes for f in w.split(b"\n") if f]


class Owner:
    """The connection side of a queue: records what the overflow rule asks of it.
    ``recoverable``: whether its standard lane could be recovered (a client with a chat
    to protect and recoverable feeds)."""

    def __init__(self, transport: RecordingTransport, *, recoverable: bool = False) -> None:
        self.transport = transport
        self.recoverable = recoverable
        self.slow_calls = 0
        self.sheds = 0
        self.resubscribes = 0

    def can_recover_standard(self) -> bool:
        if self.recoverable:
            self.sheds += 1
        return self.recoverable

    def resubscribe_standard(self) -> None:
        self.resubscribes += 1  # the channels resubscribe later (the test ends shedding)

    def close_slow(self) -> None:
        self.slow_calls += 1
        self.transport.close(3008, "slow")


class Queue(OutboundQueue):
    """An outbound queue over a recording transport, with its owner at hand."""

    __slots__ = ("owner",)

    transport: RecordingTransport

    def __init__(self, limits: QueueLimits, *, recoverable: bool = False) -> None:
        transport = RecordingTransport()
        owner = Owner(transport, recoverable=recoverable)
        super().__init__(limits, transport, owner)
        self.owner = owner

    @property
    def slow_calls(self) -> int:
        return self.owner.slow_calls

    @property
    def sheds(self) -> int:
        return self.owner.sheds


def make_limits(tick: Tick, max_bytes: int, max_ephemeral_bytes: int) -> QueueLimits:
    policy = OverflowPolicy(max_bytes=max_bytes, max_ephemeral_bytes=max_ephemeral_bytes)
    return QueueLimits(policy=policy, flusher=Flusher(tick.call_soon), call_soon=tick.call_soon)


def make_queue(
    max_bytes: int = 10_000, max_ephemeral_bytes: int = 1_000, *, recoverable: bool = False
) -> tuple[Queue, Tick]:
    tick = Tick()
    limits = make_limits(tick, max_bytes, max_ephemeral_bytes)
    return Queue(limits, recoverable=recoverable), tick


def frame(name: str, size: int = 16) -> bytes:
    """A frame of ``size`` bytes that names itself."""
    body = name.encode()
    assert len(body) < size
    return body + b"." * (size - len(body) - 1) + b"\n"


def batch(name: str, size: int = 16) -> TickBatch:
    """A tick batch of one frame."""
    return TickBatch(frame(name, size))


def names(frames: list[bytes]) -> list[str]:
    return [f.rstrip(b".\n").decode() for f in frames]


# -- lanes: what goes first --------------------------------------------------------------


def test_chat_frame_is_written_before_typing_frames_queued_earlier() -> None:
    queue, tick = make_queue()
    for user in ("ann", "bob", "cat"):
        queue.enqueue_ephemeral(frame(f"typing-{user}"), key=user)
    queue.enqueue_urgent(frame("chat-1"))
    tick.run()

    assert len(queue.transport.writes) == 1  # one write per connection per tick
    assert queue.transport.writes[0].startswith(frame("chat-1"))
    assert names(queue.transport.frames) == ["chat-1", "typing-ann", "typing-bob", "typing-cat"]


def test_lanes_are_written_critical_then_standard_then_ephemeral() -> None:
    queue, tick = make_queue()
    queue.enqueue_ephemeral(frame("typing"), key="ann")
    queue.enqueue(frame("feed-1"))
    queue.enqueue_urgent(frame("chat-1"))
    queue.enqueue(frame("feed-2"))
    queue.enqueue_urgent(frame("chat-2"))
    tick.run()

    assert names(queue.transport.frames) == ["chat-1", "chat-2", "feed-1", "feed-2", "typing"]


def test_chat_frames_keep_their_order_and_none_is_lost_in_a_typing_storm() -> None:
    """10 typing frames (5 typists) for every chat frame, over many ticks, with a
    connection that cannot write for a while: every chat frame arrives, in order."""
    queue, tick = make_queue(max_bytes=100_000, max_ephemeral_bytes=96)  # 6 frames
    queue.pause_writing()  # the socket is full: frames pile up in the queue
    for n in range(1, 101):
        queue.enqueue_urgent(frame(f"chat-{n}"))
        for i in range(10):
            queue.enqueue_ephemeral(frame(f"typing-{n}-{i % 5}"), key=i % 5)
        tick.run()
        if n == 50:
            queue.resume_writing()
    tick.run()

    written = names(queue.transport.frames)
    chat = [name for name in written if name.startswith("chat-")]
    assert chat == [f"chat-{n}" for n in range(1, 101)]
    typing = [name for name in written if name.startswith("typing-")]
    stats = queue.stats
    assert stats.slow_disconnects == 0
    assert stats.ephemeral_coalesced > 0
    assert typing[-5:] == [f"typing-100-{i}" for i in range(5)]  # the newest of each typist
    # Every typing frame was written, replaced by a newer one, or dropped: none vanished.
    assert len(typing) + stats.ephemeral_coalesced + stats.ephemeral_dropped == 1000


# -- the ephemeral lane: coalesced and dropped first ----------------------------------------


def test_ephemeral_frames_with_the_same_key_keep_only_the_newest() -> None:
    queue, tick = make_queue()
    queue.enqueue_ephemeral(frame("ann-typing-1"), key="ann")
    queue.enqueue_ephemeral(frame("bob-typing-1"), key="bob")
    queue.enqueue_ephemeral(frame("ann-typing-2"), key="ann")
    queue.enqueue_ephemeral(frame("ann-typing-3"), key="ann")
    tick.run()

    assert names(queue.transport.frames) == ["bob-typing-1", "ann-typing-3"]
    assert queue.stats.ephemeral_coalesced == 2
    assert queue.stats.ephemeral_dropped == 0


def test_ephemeral_frames_without_a_shared_key_are_never_coalesced() -> None:
    queue, tick = make_queue()
    for n in range(3):
        queue.enqueue_ephemeral(frame(f"cursor-{n}"), key=object())
    tick.run()

    assert names(queue.transport.frames) == ["cursor-0", "cursor-1", "cursor-2"]
    assert queue.stats.ephemeral_coalesced == 0


def test_full_ephemeral_lane_drops_its_oldest_frames_first() -> None:
    queue, tick = make_queue(max_ephemeral_bytes=48)  # three 16-byte frames
    for user in ("ann", "bob", "cat", "dan", "eve"):
        queue.enqueue_ephemeral(frame(user), key=user)
    tick.run()

    assert names(queue.transport.frames) == ["cat", "dan", "eve"]
    assert queue.stats.ephemeral_dropped == 2
    assert queue.stats.slow_disconnects == 0
    assert queue.transport.closed is None


def test_ephemeral_frames_are_dropped_to_make_room_for_a_chat_frame() -> None:
    queue, tick = make_queue(max_bytes=64, max_ephemeral_bytes=64)
    queue.pause_writing()
    for user in ("ann", "bob", "cat", "dan"):
        queue.enqueue_ephemeral(frame(user), key=user)
    queue.enqueue_urgent(frame("chat-1"))
    queue.enqueue(frame("feed-1"))
    tick.run_all()  # still paused: the bounds are enforced on what is held back
    queue.resume_writing()
    tick.run_all()

    assert names(queue.transport.frames) == ["chat-1", "feed-1", "cat", "dan"]
    assert queue.stats.ephemeral_dropped == 2
    assert queue.stats.slow_disconnects == 0
    assert queue.slow_calls == 0


def test_ephemeral_frame_never_makes_a_connection_slow() -> None:
    queue, tick = make_queue(max_bytes=32, max_ephemeral_bytes=1_000)
    queue.pause_writing()
    queue.enqueue_urgent(frame("chat-1"))
    queue.enqueue_urgent(frame("chat-2"))
    queue.enqueue_ephemeral(frame("typing"), key="ann")  # no room left: dropped
    tick.run()
    queue.resume_writing()
    tick.run()

    assert names(queue.transport.frames) == ["chat-1", "chat-2"]
    assert queue.stats.ephemeral_dropped == 1
    assert queue.slow_calls == 0


# -- bounds: the slow client -------------------------------------------------------------


def test_chat_frames_over_the_bound_close_the_connection_as_slow_after_fan_out() -> None:
    queue, tick = make_queue(max_bytes=48)
    queue.pause_writing()  # the client stopped reading: its socket buffer is full
    for n in range(1, 5):
        queue.enqueue_urgent(frame(f"chat-{n}"))  # 64 bytes: over the bound

    assert queue.slow_calls == 0  # never inside fan-out...
    tick.run_all()
    assert queue.slow_calls == 1  # ...but on a following tick
    assert queue.transport.closed == (3008, "slow")
    assert queue.stats.slow_disconnects == 1
    assert queue.transport.writes == []


def test_standard_frame_that_does_not_fit_closes_the_connection_as_slow() -> None:
    queue, tick = make_queue(max_bytes=48)
    queue.pause_writing()
    for n in range(1, 5):
        queue.enqueue(frame(f"feed-{n}"))
    tick.run_all()

    assert queue.slow_calls == 1
    assert queue.stats.slow_disconnects == 1


def test_a_large_tick_to_a_writable_socket_is_written_not_counted_as_slow() -> None:
    queue, tick = make_queue(max_bytes=48)
    for n in range(1, 5):  # 64 bytes, over the bound, but the client is reading
        queue.enqueue(frame(f"feed-{n}"))
    tick.run_all()

    assert names(queue.transport.frames) == ["feed-1", "feed-2", "feed-3", "feed-4"]
    assert queue.slow_calls == 0


# -- bounds: shedding the standard lane to keep the critical lane -----------------------------


def _shedding_queue(max_bytes: int) -> tuple[Queue, Tick]:
    return make_queue(max_bytes=max_bytes, recoverable=True)


def test_standard_overflow_is_shed_while_the_critical_lane_fits() -> None:
    queue, tick = _shedding_queue(max_bytes=64)
    queue.pause_writing()
    queue.enqueue_urgent(frame("chat-1"))
    for n in range(1, 5):
        queue.attach(batch(f"feed-{n}"))  # 80 bytes in all: over the bound
        tick.run_all()
    queue.attach(batch("feed-5"))  # dropped: the standard lane is being shed
    queue.enqueue_urgent(frame("chat-2"))
    tick.run_all()
    queue.resume_writing()
    tick.run_all()

    assert queue.sheds == 1
    assert queue.owner.resubscribes == 1  # on the tick after the shed
    assert queue.slow_calls == 0
    assert names(queue.transport.frames) == ["chat-1", "chat-2"]
    assert queue.stats.standard_shed_bytes == 64  # feed-1 to feed-4 (16 bytes each)

    queue.end_shedding()  # the standard channels resubscribed
    queue.attach(batch("feed-6"))
    tick.run_all()
    assert names(queue.transport.frames)[-1] == "feed-6"


def test_standard_overflow_is_slow_when_the_connection_cannot_recover_its_standard_lane() -> None:
    queue, tick = make_queue(max_bytes=64)  # its owner cannot recover the standard lane
    queue.pause_writing()
    queue.enqueue_urgent(frame("chat-1"))
    for n in range(1, 5):
        queue.attach(batch(f"feed-{n}"))
    tick.run_all()

    assert queue.slow_calls == 1
    assert queue.stats.standard_shed_bytes == 0


def test_a_connection_that_overflows_again_soon_after_a_shed_is_slow() -> None:
    now = [0.0]
    tick = Tick()
    policy = OverflowPolicy(
        max_bytes=48, max_ephemeral_bytes=1_000, shed_interval=60, clock=lambda: now[0]
    )
    limits = QueueLimits(policy=policy, flusher=Flusher(tick.call_soon), call_soon=tick.call_soon)
    queue = Queue(limits, recoverable=True)
    queue.pause_writing()
    for n in range(1, 5):
        queue.enqueue(frame(f"feed-{n}"))
    tick.run_all()
    queue.end_shedding()  # its standard channels resubscribed
    now[0] = 59.0
    for n in range(5, 9):
        queue.enqueue(frame(f"feed-{n}"))
    tick.run_all()

    assert queue.owner.resubscribes == 1
    assert queue.slow_calls == 1


def test_shedding_the_standard_lane_drops_its_queued_frames_and_keeps_the_critical_lane() -> None:
    queue, tick = make_queue()
    queue.pause_writing()
    queue.enqueue(frame("feed-1"))
    queue.enqueue_urgent(frame("chat-1"))
    tick.run_all()  # held while the socket is full
    queue.attach(batch("feed-2"))
    queue.shed_standard()
    queue.attach(batch("feed-3"))  # refused until the channels resubscribed
    queue.resume_writing()
    tick.run_all()

    assert queue.shedding
    assert queue.owner.resubscribes == 1
    assert names(queue.transport.frames) == ["chat-1"]
    assert queue.stats.standard_shed_bytes == 32  # feed-1 and feed-2
    queue.end_shedding()
    queue.attach(batch("feed-4"))
    tick.run_all()
    assert names(queue.transport.frames) == ["chat-1", "feed-4"]
    assert queue.slow_calls == 0


def test_critical_data_over_the_bound_is_slow_even_when_standard_could_be_shed() -> None:
    queue, tick = _shedding_queue(max_bytes=48)
    queue.pause_writing()
    queue.enqueue(frame("feed-1"))
    for n in range(1, 5):
        queue.enqueue_urgent(frame(f"chat-{n}"))  # 64 bytes of chat alone
    tick.run_all()

    assert queue.sheds == 0
    assert queue.slow_calls == 1


def test_held_critical_data_is_written_before_held_standard_data() -> None:
    queue, tick = make_queue()
    queue.pause_writing()
    queue.enqueue(frame("feed-1"))
    tick.run_all()
    queue.enqueue_urgent(frame("chat-1"))
    tick.run_all()
    queue.resume_writing()
    tick.run_all()

    assert names(queue.transport.frames) == ["chat-1", "feed-1"]


def test_slow_connection_accepts_nothing_more_and_is_cut_off_once() -> None:
    queue, tick = make_queue(max_bytes=16)
    queue.pause_writing()
    queue.enqueue_urgent(frame("chat-1"))
    queue.enqueue_urgent(frame("chat-2"))
    tick.run_all()
    for n in range(3, 10):
        queue.enqueue_urgent(frame(f"chat-{n}"))
        queue.enqueue(frame(f"feed-{n}"))
        queue.enqueue_ephemeral(frame(f"typing-{n}"), key="ann")
        tick.run_all()
    queue.resume_writing()
    tick.run_all()

    assert queue.slow_calls == 1
    assert queue.stats.slow_disconnects == 1
    assert queue.transport.writes == []  # it catches up through recovery instead


def test_paused_queue_writes_nothing_until_the_socket_drains() -> None:
    queue, tick = make_queue()
    queue.pause_writing()
    queue.enqueue_urgent(frame("chat-1"))
    queue.enqueue(frame("feed-1"))
    tick.run()
    assert queue.transport.writes == []

    queue.resume_writing()
    tick.run()
    assert names(queue.transport.frames) == ["chat-1", "feed-1"]
    assert len(queue.transport.writes) == 1


def test_frames_queued_in_one_tick_go_out_in_one_write() -> None:
    queue, tick = make_queue()
    for n in range(5):
        queue.enqueue(frame(f"feed-{n}"))
    tick.run()
    queue.enqueue(frame("feed-5"))
    tick.run()

    assert len(queue.transport.writes) == 2
    assert names(queue.transport.frames) == [f"feed-{n}" for n in range(6)]


def test_stopped_queue_accepts_no_more_frames() -> None:
    queue, tick = make_queue()
    queue.enqueue(frame("feed-1"))
    tick.run()
    queue.stop_queue()
    queue.enqueue(frame("feed-2"))
    queue.enqueue_urgent(frame("chat-1"))
    queue.enqueue_ephemeral(frame("typing"), key="ann")
    tick.run()

    assert names(queue.transport.frames) == ["feed-1"]


# -- through a node: the coalesce key of the server API -------------------------------------


async def test_api_publishes_with_one_coalesce_key_reach_a_blocked_client_as_the_newest() -> None:
    typing = msgspec.structs.replace(
        OPEN, lane="ephemeral", history_size=0, history_ttl=0, recover=False, join_leave=False
    )
    # ephemeral_window 0: every tick's frames reach the queue, which must coalesce them
    config = make_config(allow_anonymous=True, namespaces={"typing": typing}, ephemeral_window=0)
    async with local_node(config) as node:
        session = LocalSession(node)
        await session.call("connect", {})
        await session.call("subscribe", {"channel": "typing:room"})
        session.transport.pause()  # the client's socket is full
        for n in range(5):
            for user in ("ann", "bob"):
                data = {"user": user, "n": n}
                body = {"channel": "typing:room", "data": data, "coalesce_key": user}
                await api.call(node, "publish", json.dumps(body).encode())
                await asyncio.sleep(0)  # ticks pass while the socket stays full
        session.transport.resume()
        pushes = [await session.next_push() for _ in range(2)]
        await asyncio.sleep(0)

    assert [p["pub"]["data"] for p in pushes] == [{"user": "ann", "n": 4}, {"user": "bob", "n": 4}]
    assert not session.pushes
    assert node.queue_limits.stats.ephemeral_coalesced == 8
