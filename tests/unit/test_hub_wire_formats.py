"""The hub frames a message once per wire format present on the channel.

Connections choose their codec at the handshake, so one channel can have subscribers of
two encodings. Each encoding's subscribers share one frame per publication, one tick batch
and one ephemeral window; an encoding nobody on the channel speaks costs nothing. The
second codec here is a fake: JSON inside, tagged so that its frames are told apart, and
counting what it encodes. The loop is faked (:class:`~tether.testing.loop.FakeLoop`).
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Raw
from test_ephemeral_windows import NeverOverflows

from tether.core.hub import Hub
from tether.core.lanes import Lane
from tether.core.outbound import OutboundQueue, OverflowPolicy, QueueLimits, QueueStats
from tether.core.transport import Cadence, Flusher, WireFormat
from tether.protocol.codec import JSON
from tether.protocol.messages import ClientInfo, Command, Join, Publication, Push, Reply
from tether.testing.loop import FakeLoop
from tether.testing.transports import line_frame

CHAT = "chat:room"
TYPING = "typing:room"
WINDOW = 0.02


class TaggedCodec:
    """JSON with a one-byte tag in front of every message; counts the encodes."""

    binary = True

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.name = f"tagged-{tag.decode()}"
        self.ping = tag + JSON.ping
        self.publications = 0
        self.pushes = 0

    def decode_commands(self, frame: bytes, *, max_commands: int = 100) -> list[Command]:
        return JSON.decode_commands(frame.removeprefix(self.tag), max_commands=max_commands)

    def encode_reply(self, reply: Reply) -> bytes:
        return self.tag + JSON.encode_reply(reply)

    def encode_push(self, push: Push) -> bytes:
        self.pushes += 1
        return self.tag + JSON.encode_push(push)

    def encode_publication_push(self, channel: str, publication: Publication) -> bytes:
        self.publications += 1
        return self.tag + JSON.encode_publication_push(channel, publication)

    def join(self, messages: Sequence[bytes]) -> bytes:
        return b"\n".join(messages)


class Recorder:
    remote = "127.0.0.1:1"

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")


class Subscriber(OutboundQueue):
    __slots__ = ("wire_format",)

    transport: Recorder

    def __init__(self, limits: QueueLimits, wire_format: WireFormat) -> None:
        super().__init__(limits, Recorder(), NeverOverflows())
        self.wire_format = wire_format

    def frames(self) -> list[bytes]:
        return [line for write in self.transport.writes for line in write.splitlines()]


class Setup:
    def __init__(self) -> None:
        self.loop = FakeLoop()
        stats = QueueStats()
        self.hub: Hub[Subscriber] = Hub(stats)
        flusher = Flusher(self.loop.call_soon)
        flusher.on_tick_end(self.hub.end_tick)
        cadence = Cadence(
            self.hub.flush_ephemeral,
            self.loop.call_soon,
            self.loop.call_later,
            interval=WINDOW,
            clock=self.loop.time,
        )
        self.hub.use_ephemeral_cadence(cadence.request)
        self.limits = QueueLimits(
            policy=OverflowPolicy(max_bytes=1 << 20, max_ephemeral_bytes=1 << 16),
            flusher=flusher,
            call_soon=self.loop.call_soon,
            stats=stats,
        )
        self.a, self.b = TaggedCodec(b"A"), TaggedCodec(b"B")
        self.format_a = WireFormat(self.a, line_frame)
        self.format_b = WireFormat(self.b, line_frame)

    def subscriber(self, wire_format: WireFormat, channel: str, lane: Lane) -> Subscriber:
        sub = Subscriber(self.limits, wire_format)
        self.hub.add_pending(channel, sub)
        self.hub.go_live(channel, sub, after_offset=0, lane=lane)
        return sub

    def mixed(self, channel: str, lane: Lane) -> tuple[list[Subscriber], list[Subscriber]]:
        """Three subscribers speaking A and two speaking B."""
        in_a = [self.subscriber(self.format_a, channel, lane) for _ in range(3)]
        in_b = [self.subscriber(self.format_b, channel, lane) for _ in range(2)]
        return in_a, in_b

    def publish(self, channel: str, text: str, lane: Lane, offset: int = 0, key: str = "") -> None:
        publication = Publication(data=Raw(f'"{text}"'.encode()), offset=offset)
        self.hub.broadcast_publication(channel, publication, lane, key or None)


def data(frame: bytes) -> str:
    return frame.split(b'"data":"')[1].split(b'"')[0].decode()


def test_a_publication_is_framed_once_per_encoding_on_the_channel() -> None:
    s = Setup()
    in_a, in_b = s.mixed(CHAT, Lane.CRITICAL)
    s.publish(CHAT, "hello", Lane.CRITICAL, offset=1)
    s.loop.settle()
    assert (s.a.publications, s.b.publications) == (1, 1)
    assert len({sub.transport.writes[0] for sub in in_a}) == 1
    assert [[f[:1] for f in sub.frames()] for sub in in_a + in_b] == [[b"A"]] * 3 + [[b"B"]] * 2
    assert {data(f) for sub in in_a + in_b for f in sub.frames()} == {"hello"}
    assert s.hub.deliveries == 5


def test_an_encoding_nobody_on_the_channel_speaks_costs_nothing() -> None:
    s = Setup()
    only_a = [s.subscriber(s.format_a, CHAT, Lane.STANDARD) for _ in range(4)]
    s.subscriber(s.format_b, "other:room", Lane.STANDARD)
    s.publish(CHAT, "hello", Lane.STANDARD, offset=1)
    s.loop.settle()
    assert (s.a.publications, s.b.publications) == (1, 0)
    assert [len(sub.frames()) for sub in only_a] == [1] * 4


def test_a_tick_batch_per_encoding_reaches_each_subscriber_in_one_write() -> None:
    s = Setup()
    in_a, in_b = s.mixed(CHAT, Lane.STANDARD)
    for n in range(1, 4):
        s.publish(CHAT, f"m{n}", Lane.STANDARD, offset=n)
    s.loop.settle()
    assert (s.a.publications, s.b.publications) == (3, 3)
    for sub, tag in [(sub, b"A") for sub in in_a] + [(sub, b"B") for sub in in_b]:
        assert len(sub.transport.writes) == 1
        assert [(f[:1], data(f)) for f in sub.frames()] == [(tag, "m1"), (tag, "m2"), (tag, "m3")]
    # The next tick starts new batches for both encodings.
    s.publish(CHAT, "m4", Lane.STANDARD, offset=4)
    s.loop.settle()
    assert [len(sub.transport.writes) for sub in in_a + in_b] == [2] * 5


def test_ephemeral_windows_coalesce_newest_per_key_in_each_encoding() -> None:
    s = Setup()
    in_a, in_b = s.mixed(TYPING, Lane.EPHEMERAL)
    s.publish(TYPING, "ann0", Lane.EPHEMERAL, key="ann")
    s.loop.settle()  # leading edge: the first frame goes out at once
    for n in range(1, 4):
        for user in ("ann", "bob"):
            s.publish(TYPING, f"{user}{n}", Lane.EPHEMERAL, key=user)
            s.loop.settle()
    assert [len(sub.transport.writes) for sub in in_a + in_b] == [1] * 5  # held by the window
    s.loop.advance(WINDOW)
    for sub, tag in [(sub, b"A") for sub in in_a] + [(sub, b"B") for sub in in_b]:
        assert [(f[:1], data(f)) for f in sub.frames()] == [
            (tag, "ann0"),
            (tag, "ann3"),
            (tag, "bob3"),
        ]
    assert (s.a.publications, s.b.publications) == (7, 7)  # once per event per encoding
    assert s.hub.stats.ephemeral_coalesced == 4 * 5  # ann1, ann2, bob1, bob2 for each


def test_a_pending_subscriber_of_another_encoding_gets_the_buffered_frame_in_its_own() -> None:
    s = Setup()
    [live] = [s.subscriber(s.format_a, CHAT, Lane.CRITICAL)]
    newcomer = Subscriber(s.limits, s.format_b)
    s.hub.add_pending(CHAT, newcomer)
    s.publish(CHAT, "before", Lane.CRITICAL, offset=1)  # live for A, buffered for B
    s.publish(CHAT, "recovered", Lane.CRITICAL, offset=2)
    s.hub.go_live(CHAT, newcomer, after_offset=1, lane=Lane.CRITICAL)
    s.loop.settle()
    assert [data(f) for f in live.frames()] == ["before", "recovered"]
    assert [(f[:1], data(f)) for f in newcomer.frames()] == [(b"B", "recovered")]
    assert (s.a.publications, s.b.publications) == (2, 2)


def test_a_push_is_framed_once_per_encoding_too() -> None:
    s = Setup()
    in_a, in_b = s.mixed(CHAT, Lane.CRITICAL)
    join = Push(channel=CHAT, join=Join(info=ClientInfo(user="ann", client="c1")))
    s.hub.broadcast_push(CHAT, join, Lane.CRITICAL)
    s.loop.settle()
    assert (s.a.pushes, s.b.pushes) == (1, 1)
    assert [[f[:1] for f in sub.frames()] for sub in in_a + in_b] == [[b"A"]] * 3 + [[b"B"]] * 2


def test_when_the_last_subscriber_of_an_encoding_leaves_it_is_no_longer_encoded() -> None:
    s = Setup()
    in_a, in_b = s.mixed(CHAT, Lane.STANDARD)
    for sub in in_b:
        assert not s.hub.remove(CHAT, sub)
    s.publish(CHAT, "hello", Lane.STANDARD, offset=1)
    s.loop.settle()
    assert (s.a.publications, s.b.publications) == (1, 0)
    assert s.hub.channels() == {CHAT: 3}
    for sub in in_a:
        s.hub.remove(CHAT, sub)
    assert not s.hub.has_local(CHAT)
