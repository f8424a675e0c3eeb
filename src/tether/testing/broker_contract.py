"""The Broker and PresenceStore contract (:mod:`tether.brokers.base`) as a test suite.

Every implementation runs the same suite. Subclass :class:`BrokerContract` in a test module
(the subclass name starts with ``Test`` so that pytest collects it) and say how to build
the implementation::

    class TestMemoryBroker(BrokerContract):
        async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
            return MemoryBroker(meta_ttl=meta_ttl, clock=clock)

        async def create_presence_store(self) -> PresenceStore:
            return MemoryPresenceStore()

Each test states one point of the contract; its name says the outcome. The suite needs
pytest and pytest-asyncio (``asyncio_mode = "auto"``).

Time. TTL tests never sleep on their own: they call :meth:`BrokerContract.elapse`, which
advances the :class:`~tether.testing.clock.FakeClock` handed to ``create_broker``. An
implementation whose TTLs run on a clock the test cannot move (Redis expires keys on its
own time) overrides ``elapse`` to sleep, and lowers :attr:`~BrokerContract.history_ttl`,
:attr:`~BrokerContract.idempotency_ttl`, :attr:`~BrokerContract.meta_ttl` and
:attr:`~BrokerContract.margin` so that the suite stays quick.

Delivery. A broker may hand publications to the handler after ``publish`` returns (over
pub/sub). Tests that expect a delivery wait for it, up to
:attr:`~BrokerContract.delivery_timeout`; tests that expect *no* delivery first call
:meth:`BrokerContract.settle`, which a networked implementation overrides to wait long
enough for a stray message to arrive.

Channels. Every test uses channel names unique to the test (the ``channel`` fixture), so a
shared backend needs no cleanup between tests.

Fencing. The points under "fencing" need a broker whose store can lose acknowledged
writes: :meth:`BrokerContract.failover` yields a :class:`Failover` (for Redis: a primary
with a replica that stops replicating, then is promoted; for the memory broker: a restart,
which loses everything).

Not covered here: a presence store's TTL (entries that are not refreshed disappear). The
embedded store has none (``ttl is None``); a store with one tests it on its own clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import msgspec
import pytest

from tether.brokers.base import (
    Broker,
    PresenceStore,
    PublishItem,
    PublishOptions,
    PublishResult,
    StreamPosition,
    publish_all,
)
from tether.core.recovery import RecoveryCache, recover
from tether.errors import UnrecoverablePosition
from tether.protocol.messages import ClientInfo, Publication
from tether.testing.clock import FakeClock
from tether.testing.recovery import (
    RECOVERY_PATHS,
    RECOVERY_SCENARIOS,
    BrokerStream,
    RecoveryScenario,
)

__all__ = [
    "BrokerContract",
    "Failover",
    "RecordingHandler",
    "Restart",
    "payloads",
    "publication",
    "restarted",
]


class RecordingHandler:
    """A :class:`~tether.brokers.base.BrokerEventHandler` that records what it is given."""

    def __init__(self) -> None:
        self.publications: dict[str, list[Publication]] = {}
        self.joins: dict[str, list[ClientInfo]] = {}
        self.leaves: dict[str, list[ClientInfo]] = {}
        self.resyncs: list[set[str]] = []
        self._changed = asyncio.Event()

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.publications.setdefault(channel, []).append(publication)
        self._changed.set()

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.setdefault(channel, []).append(info)
        self._changed.set()

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.setdefault(channel, []).append(info)
        self._changed.set()

    def on_resync(self, channels: set[str]) -> None:
        self.resyncs.append(set(channels))
        self._changed.set()

    def offsets(self, channel: str) -> list[int]:
        """Offsets of the publications delivered on ``channel``, in delivery order."""
        return [p.offset for p in self.publications.get(channel, [])]

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds (the caller bounds the wait with a timeout)."""
        while not done():
            self._changed.clear()
            await self._changed.wait()


class Failover(Protocol):
    """A started broker whose store can lose acknowledged writes, as a Redis failover to
    a lagging replica (or a restart without persistence) does."""

    broker: Broker

    async def lose_next_writes(self) -> None:
        """From now on, what the store acknowledges is lost at :meth:`fail_over` (the
        replica stopped replicating)."""

    async def fail_over(self) -> Broker:
        """The store loses what it acknowledged since :meth:`lose_next_writes`. Returns
        the broker to go on with (started with the same handler), once it can serve."""


class Restart:
    """The :class:`Failover` of a broker that keeps its streams in the process (the
    memory broker): the only way it loses acknowledged writes is a restart, which loses
    everything. ``factory`` builds the broker (again, at each restart)."""

    def __init__(self, factory: Callable[[], Broker], handler: RecordingHandler) -> None:
        self._factory = factory
        self._handler = handler
        self.broker = factory()

    async def lose_next_writes(self) -> None:
        """Nothing to do: a restart loses these writes with all the others."""

    async def fail_over(self) -> Broker:
        await self.broker.close()
        self.broker = self._factory()
        await self.broker.start(self._handler)
        return self.broker


@asynccontextmanager
async def restarted(
    factory: Callable[[], Broker], handler: RecordingHandler
) -> AsyncIterator[Restart]:
    """A started :class:`Restart` (for :meth:`BrokerContract.failover`)."""
    store = Restart(factory, handler)
    await store.broker.start(handler)
    try:
        yield store
    finally:
        await store.broker.close()


def publication(data: Any, *, user: str = "", tags: dict[str, str] | None = None) -> Publication:
    """A fresh publication (brokers assign its offset, so never reuse one)."""
    info = ClientInfo(user=user, client=f"client-{user}") if user else None
    return Publication(data=msgspec.Raw(msgspec.json.encode(data)), info=info, tags=tags)


def payloads(publications: list[Publication]) -> list[Any]:
    return [msgspec.json.decode(p.data) for p in publications]


class BrokerContract:
    """Base class of the contract suite; see the module docstring for how to use it."""

    history_ttl: float = 10.0
    """``history_ttl`` of the streams the suite publishes to (seconds)."""
    idempotency_ttl: float = 10.0
    """``idempotency_ttl`` of the suite's idempotent publishes (seconds)."""
    meta_ttl: float = 60.0
    """``meta_ttl`` the broker is created with; larger than ``history_ttl``."""
    margin: float = 1.0
    """How far the suite keeps away from every TTL boundary (seconds)."""
    delivery_timeout: float = 5.0
    """How long a test waits for an expected delivery (seconds)."""
    history_size: int = 100
    """``history_size`` of the suite's streams, unless a test sets its own."""

    # -- what an implementation provides ---------------------------------------------

    async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
        """A new, not yet started broker whose TTLs run on ``clock``."""
        raise NotImplementedError

    async def create_presence_store(self) -> PresenceStore:
        raise NotImplementedError

    def failover(self, handler: RecordingHandler) -> AbstractAsyncContextManager[Failover]:
        """A :class:`Failover` whose broker is started with ``handler``."""
        raise NotImplementedError

    async def elapse(self, clock: FakeClock, seconds: float) -> None:
        """Let ``seconds`` pass for the broker's TTLs."""
        clock.advance(seconds)

    async def settle(self) -> None:
        """Give a stray delivery the chance to arrive before asserting there is none."""
        for _ in range(3):
            await asyncio.sleep(0)

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def handler(self) -> RecordingHandler:
        return RecordingHandler()

    @pytest.fixture
    async def broker(self, clock: FakeClock, handler: RecordingHandler) -> AsyncIterator[Broker]:
        broker = await self.create_broker(clock, self.meta_ttl)
        await broker.start(handler)
        try:
            yield broker
        finally:
            await broker.close()

    @pytest.fixture
    async def presence(self) -> AsyncIterator[PresenceStore]:
        store = await self.create_presence_store()
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def channel(self) -> Callable[[str], str]:
        """``channel("name")``: a channel name no other test uses."""
        run = uuid.uuid4().hex[:12]
        return lambda name: f"contract-{run}-{name}"

    # -- helpers ----------------------------------------------------------------------

    def options(self, **overrides: Any) -> PublishOptions:
        """Options of a stream with history; idempotency off unless a key is given."""
        values: dict[str, Any] = {
            "history_size": self.history_size,
            "history_ttl": self.history_ttl,
            "idempotency_ttl": self.idempotency_ttl,
        }
        values.update(overrides)
        return PublishOptions(**values)

    async def publish_many(
        self, broker: Broker, channel: str, count: int, **overrides: Any
    ) -> list[PublishResult]:
        options = self.options(**overrides)
        return [await broker.publish(channel, publication(i), options) for i in range(count)]

    async def wait_for_offsets(
        self, handler: RecordingHandler, channel: str, count: int
    ) -> list[int]:
        """Wait for ``count`` deliveries on ``channel`` (then settle, so that a surplus
        delivery shows); return the delivered offsets."""
        async with asyncio.timeout(self.delivery_timeout):
            await handler.wait_until(lambda: len(handler.publications.get(channel, [])) >= count)
        await self.settle()
        return handler.offsets(channel)

    # -- lifecycle --------------------------------------------------------------------

    async def test_started_broker_is_healthy(self, broker: Broker) -> None:
        assert broker.healthy

    # -- streams: offsets and epochs ---------------------------------------------------

    async def test_publications_get_offsets_one_two_three_per_channel(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        a, b = channel("a"), channel("b")
        offsets_a = [r.position.offset for r in await self.publish_many(broker, a, 3)]
        offsets_b = [r.position.offset for r in await self.publish_many(broker, b, 2)]
        assert (offsets_a, offsets_b) == ([1, 2, 3], [1, 2])

    async def test_publish_returns_the_position_the_stream_reports(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        result = await broker.publish(ch, publication("x"), self.options())
        page = await broker.history(ch, limit=-1)
        assert result.duplicate is False
        assert result.position == page.position
        assert page.publications[0].offset == result.position.offset

    async def test_concurrent_publishes_get_distinct_consecutive_offsets(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        options = self.options()
        results = await asyncio.gather(
            *(broker.publish(ch, publication(i), options) for i in range(50))
        )
        assert sorted(r.position.offset for r in results) == list(range(1, 51))
        assert len({r.position.epoch for r in results}) == 1

    # -- several publishes at once (publish_all: publish_many where the broker has it) ---

    async def test_publishes_sent_together_get_offsets_in_the_order_given_per_channel(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        a, b = channel("a"), channel("b")
        await broker.subscribe(a)
        await broker.subscribe(b)
        options = self.options()
        items = [PublishItem(a if i % 3 else b, publication(i), options) for i in range(12)]
        results = await publish_all(broker, items)
        assert [r.position.offset for r in results] == [1, 1, 2, 2, 3, 4, 3, 5, 6, 4, 7, 8]
        assert not any(r.duplicate for r in results)
        assert await self.wait_for_offsets(handler, a, 8) == list(range(1, 9))
        assert payloads(handler.publications[a]) == [i for i in range(12) if i % 3]
        assert await self.wait_for_offsets(handler, b, 4) == [1, 2, 3, 4]
        page = await broker.history(a, limit=-1)
        assert payloads(page.publications) == [i for i in range(12) if i % 3]
        assert page.position == results[-1].position

    async def test_publishes_sent_together_keep_each_ones_idempotency_and_history(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch, plain = channel("a"), channel("plain")
        await broker.subscribe(ch)
        first = await broker.publish(ch, publication("x"), self.options(idempotency_key="k1"))
        results = await publish_all(
            broker,
            [
                PublishItem(ch, publication("x"), self.options(idempotency_key="k1")),
                PublishItem(ch, publication("y"), self.options(idempotency_key="k2")),
                PublishItem(ch, publication("y"), self.options(idempotency_key="k2")),
                PublishItem(plain, publication("z"), PublishOptions(history_size=0)),
            ],
        )
        assert results[0] == PublishResult(first.position, duplicate=True)
        assert results[1].position.offset == 2
        assert not results[1].duplicate
        assert results[2] == PublishResult(results[1].position, duplicate=True)
        assert results[3].position.offset == 0
        assert await self.wait_for_offsets(handler, ch, 2) == [1, 2]
        assert payloads((await broker.history(ch, limit=-1)).publications) == ["x", "y"]
        assert (await broker.history(plain, limit=-1)).publications == []

    async def test_channel_without_history_gives_offset_zero_and_stores_nothing(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        result = await broker.publish(ch, publication("x"), PublishOptions(history_size=0))
        page = await broker.history(ch, limit=-1)
        assert result.position.offset == 0
        assert page.publications == []
        assert page.position.offset == 0

    async def test_epoch_is_stable_while_the_stream_lives(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        # Each publish keeps the stream alive for another meta_ttl, so the stream outlives
        # a single meta_ttl without ever losing continuity.
        ch = channel("a")
        first = await broker.publish(ch, publication(1), self.options())
        await self.elapse(clock, self.meta_ttl - self.margin)
        second = await broker.publish(ch, publication(2), self.options())
        await self.elapse(clock, self.meta_ttl - self.margin)
        third = await broker.publish(ch, publication(3), self.options())
        page = await broker.history(ch, limit=0)
        assert [first.position.offset, second.position.offset, third.position.offset] == [1, 2, 3]
        assert {first.position.epoch, second.position.epoch, third.position.epoch} == {
            page.position.epoch
        }

    async def test_first_publish_keeps_the_epoch_history_reported_for_an_empty_stream(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        # A subscriber positioned on an empty channel holds (0, epoch); its later recovery
        # must find the publications it missed in that same epoch.
        ch = channel("a")
        empty = await broker.history(ch, limit=0)
        result = await broker.publish(ch, publication("x"), self.options())
        assert empty.position.offset == 0
        assert result.position == StreamPosition(1, empty.position.epoch)

    async def test_stream_restarts_at_offset_one_with_a_new_epoch_after_meta_ttl(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, before] = await self.publish_many(broker, ch, 3)
        await self.elapse(clock, self.meta_ttl + self.margin)
        after = await broker.publish(ch, publication("x"), self.options())
        assert after.position.offset == 1
        assert after.position.epoch != before.position.epoch

    async def test_position_survives_history_ttl_expiry(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, last] = await self.publish_many(broker, ch, 3)
        await self.elapse(clock, self.history_ttl + self.margin)
        page = await broker.history(ch, limit=-1)
        following = await broker.publish(ch, publication("x"), self.options())
        assert page.publications == []
        assert page.position == last.position
        assert following.position == StreamPosition(4, last.position.epoch)

    # -- idempotent publish -------------------------------------------------------------

    async def test_publish_with_a_seen_idempotency_key_returns_the_first_position(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        options = self.options(idempotency_key="k1")
        first = await broker.publish(ch, publication("x"), options)
        again = await broker.publish(ch, publication("x"), options)
        assert first == PublishResult(first.position, duplicate=False)
        assert again == PublishResult(first.position, duplicate=True)

    async def test_publish_with_a_seen_idempotency_key_is_stored_once(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        options = self.options(idempotency_key="k1")
        for _ in range(3):
            await broker.publish(ch, publication("x"), options)
        page = await broker.history(ch, limit=-1)
        assert [p.offset for p in page.publications] == [1]
        assert page.position.offset == 1

    async def test_publish_with_a_seen_idempotency_key_is_delivered_once(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        options = self.options(idempotency_key="k1")
        for _ in range(3):
            await broker.publish(ch, publication("x"), options)
        assert await self.wait_for_offsets(handler, ch, 1) == [1]

    async def test_a_publication_asked_as_a_delta_is_delivered_flagged_and_stored_plain(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        await broker.publish(ch, publication("x"), self.options())
        await broker.publish(ch, publication("y"), self.options(delta=True))
        assert await self.wait_for_offsets(handler, ch, 2) == [1, 2]
        assert [p.delta for p in handler.publications[ch]] == [False, True]
        page = await broker.history(ch, limit=-1)
        assert [(bytes(p.data), p.delta) for p in page.publications] == [
            (b'"x"', False),
            (b'"y"', False),
        ]

    async def test_concurrent_publishes_with_one_idempotency_key_store_exactly_one(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        options = self.options(idempotency_key="k1")
        results = await asyncio.gather(
            *(broker.publish(ch, publication(i), options) for i in range(10))
        )
        assert [r.duplicate for r in results].count(False) == 1
        assert {r.position.offset for r in results} == {1}
        assert len((await broker.history(ch, limit=-1)).publications) == 1

    async def test_idempotency_keys_of_different_channels_are_independent(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        options = self.options(idempotency_key="k1")
        first = await broker.publish(channel("a"), publication("x"), options)
        other = await broker.publish(channel("b"), publication("x"), options)
        assert first.duplicate is False
        assert other.duplicate is False

    async def test_idempotent_publish_without_history_is_deduplicated(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        options = PublishOptions(idempotency_key="k1", idempotency_ttl=self.idempotency_ttl)
        first = await broker.publish(ch, publication("x"), options)
        again = await broker.publish(ch, publication("x"), options)
        assert (first.duplicate, again.duplicate) == (False, True)
        assert await self.wait_for_offsets(handler, ch, 1) == [0]

    async def test_same_idempotency_key_after_its_ttl_is_a_new_publish(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        options = self.options(idempotency_key="k1")
        await broker.publish(ch, publication("x"), options)
        await self.elapse(clock, self.idempotency_ttl + self.margin)
        later = await broker.publish(ch, publication("x"), options)
        assert later.duplicate is False
        assert later.position.offset == 2

    async def test_same_idempotency_key_within_its_ttl_is_still_a_duplicate(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        options = self.options(idempotency_key="k1")
        await broker.publish(ch, publication("x"), options)
        await self.elapse(clock, self.idempotency_ttl - self.margin)
        later = await broker.publish(ch, publication("x"), options)
        assert later.duplicate is True

    # -- history ------------------------------------------------------------------------

    async def test_history_returns_publications_oldest_first_with_their_content(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        pub = publication({"text": "hi"}, user="alice", tags={"kind": "chat"})
        await broker.publish(ch, pub, self.options())
        await broker.publish(ch, publication({"text": "there"}), self.options())
        page = await broker.history(ch, limit=-1)
        assert [p.offset for p in page.publications] == [1, 2]
        assert payloads(page.publications) == [{"text": "hi"}, {"text": "there"}]
        stored = page.publications[0]
        assert stored.info is not None
        assert (stored.info.user, stored.info.client) == ("alice", "client-alice")
        assert stored.tags == {"kind": "chat"}

    async def test_history_limit_returns_the_oldest_publications(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 5)
        page = await broker.history(ch, limit=2)
        assert [p.offset for p in page.publications] == [1, 2]
        assert page.position.offset == 5

    async def test_history_reverse_returns_the_newest_publications_first(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 5)
        page = await broker.history(ch, limit=2, reverse=True)
        assert [p.offset for p in page.publications] == [5, 4]

    async def test_history_limit_zero_returns_only_the_position(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, last] = await self.publish_many(broker, ch, 3)
        page = await broker.history(ch, limit=0)
        assert page.publications == []
        assert page.position == last.position

    async def test_history_limit_minus_one_returns_every_publication(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 7)
        page = await broker.history(ch, limit=-1)
        assert [p.offset for p in page.publications] == list(range(1, 8))

    async def test_history_since_returns_the_publications_after_the_position(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        results = await self.publish_many(broker, ch, 5)
        page = await broker.history(ch, since=results[1].position, limit=-1)
        assert [p.offset for p in page.publications] == [3, 4, 5]
        assert page.position == results[-1].position

    async def test_history_since_with_a_limit_returns_the_first_ones_after_the_position(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        results = await self.publish_many(broker, ch, 5)
        page = await broker.history(ch, since=results[0].position, limit=2)
        assert [p.offset for p in page.publications] == [2, 3]

    async def test_history_since_the_top_returns_nothing(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, last] = await self.publish_many(broker, ch, 3)
        page = await broker.history(ch, since=last.position, limit=-1)
        assert page.publications == []
        assert page.position == last.position

    async def test_history_since_offset_zero_of_the_stream_epoch_returns_everything(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, last] = await self.publish_many(broker, ch, 3)
        page = await broker.history(ch, since=StreamPosition(0, last.position.epoch), limit=-1)
        assert [p.offset for p in page.publications] == [1, 2, 3]

    async def test_history_since_an_empty_epoch_means_any_epoch(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        # Centrifugo v6: the SDKs' getState flow sends offset 0 and no epoch.
        ch = channel("a")
        await self.publish_many(broker, ch, 3)
        page = await broker.history(ch, since=StreamPosition(0, ""), limit=-1)
        assert [p.offset for p in page.publications] == [1, 2, 3]
        page = await broker.history(ch, since=StreamPosition(2, ""), limit=-1)
        assert [p.offset for p in page.publications] == [3]

    async def test_history_since_an_empty_epoch_still_refuses_a_trimmed_offset(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 5, history_size=2)
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=StreamPosition(0, ""), limit=-1)

    async def test_history_since_a_position_of_another_epoch_raises_unrecoverable(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 3)
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=StreamPosition(1, "another-epoch"), limit=-1)

    async def test_history_since_a_trimmed_offset_raises_unrecoverable(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        results = await self.publish_many(broker, ch, 5, history_size=2)
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=results[1].position, limit=-1)

    async def test_history_since_the_last_offset_before_the_kept_ones_succeeds(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        # With offsets 4 and 5 kept, a client at 3 has missed nothing that is gone.
        ch = channel("a")
        results = await self.publish_many(broker, ch, 5, history_size=2)
        page = await broker.history(ch, since=results[2].position, limit=-1)
        assert [p.offset for p in page.publications] == [4, 5]

    async def test_history_since_expired_publications_raises_unrecoverable(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        results = await self.publish_many(broker, ch, 3)
        await self.elapse(clock, self.history_ttl + self.margin)
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=results[0].position, limit=-1)

    async def test_history_since_a_position_from_before_a_stream_restart_raises_unrecoverable(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, old] = await self.publish_many(broker, ch, 3)
        await self.elapse(clock, self.meta_ttl + self.margin)
        await self.publish_many(broker, ch, 5)
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=old.position, limit=-1)

    async def test_history_since_an_offset_ahead_of_the_top_raises_unrecoverable(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, last] = await self.publish_many(broker, ch, 3)
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=StreamPosition(9, last.position.epoch), limit=-1)

    async def test_history_keeps_only_the_latest_history_size_publications(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 5, history_size=3)
        page = await broker.history(ch, limit=-1)
        assert [p.offset for p in page.publications] == [3, 4, 5]
        assert page.position.offset == 5

    async def test_history_is_empty_after_history_ttl(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await self.publish_many(broker, ch, 3)
        await self.elapse(clock, self.history_ttl + self.margin)
        assert (await broker.history(ch, limit=-1)).publications == []

    async def test_history_ttl_counts_from_the_latest_publish(
        self, broker: Broker, clock: FakeClock, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.publish(ch, publication(1), self.options())
        await self.elapse(clock, self.history_ttl - self.margin)
        await broker.publish(ch, publication(2), self.options())
        await self.elapse(clock, self.history_ttl - self.margin)
        page = await broker.history(ch, limit=-1)
        assert [p.offset for p in page.publications] == [1, 2]

    async def test_remove_history_drops_publications_but_keeps_offset_and_epoch(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        [*_, last] = await self.publish_many(broker, ch, 3)
        await broker.remove_history(ch)
        page = await broker.history(ch, limit=-1)
        following = await broker.publish(ch, publication("x"), self.options())
        assert page.publications == []
        assert page.position == last.position
        assert following.position == StreamPosition(4, last.position.epoch)

    async def test_remove_history_of_an_unknown_channel_is_not_an_error(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        await broker.remove_history(channel("never-published"))

    # -- delivery to the node -------------------------------------------------------------

    async def test_subscribed_channel_receives_every_publication_once_in_offset_order(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        options = self.options()
        await asyncio.gather(*(broker.publish(ch, publication(i), options) for i in range(50)))
        assert await self.wait_for_offsets(handler, ch, 50) == list(range(1, 51))

    async def test_delivered_publication_carries_its_offset_data_info_and_tags(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        pub = publication({"text": "hi"}, user="alice", tags={"kind": "chat"})
        await broker.publish(ch, pub, self.options())
        await self.wait_for_offsets(handler, ch, 1)
        [delivered] = handler.publications[ch]
        assert delivered.offset == 1
        assert payloads([delivered]) == [{"text": "hi"}]
        assert delivered.info is not None
        assert delivered.info.user == "alice"
        assert delivered.tags == {"kind": "chat"}

    async def test_publications_of_a_channel_without_history_are_delivered(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        for i in range(3):
            await broker.publish(ch, publication(i), PublishOptions(history_size=0))
        assert await self.wait_for_offsets(handler, ch, 3) == [0, 0, 0]
        assert payloads(handler.publications[ch]) == [0, 1, 2]

    async def test_channel_never_subscribed_receives_nothing(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        subscribed, other = channel("subscribed"), channel("other")
        await broker.subscribe(subscribed)
        await broker.publish(other, publication("x"), self.options())
        await broker.publish(subscribed, publication("y"), self.options())
        await self.wait_for_offsets(handler, subscribed, 1)
        assert other not in handler.publications

    async def test_nothing_is_delivered_after_unsubscribe(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        await broker.publish(ch, publication(1), self.options())
        await self.wait_for_offsets(handler, ch, 1)
        await broker.unsubscribe(ch)
        await broker.publish(ch, publication(2), self.options())
        await self.settle()
        assert handler.offsets(ch) == [1]

    async def test_delivery_resumes_after_subscribing_again(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await broker.subscribe(ch)
        await broker.unsubscribe(ch)
        await broker.publish(ch, publication(1), self.options())
        await broker.subscribe(ch)
        await broker.publish(ch, publication(2), self.options())
        assert await self.wait_for_offsets(handler, ch, 1) == [2]

    async def test_subscribe_and_unsubscribe_take_effect_in_call_order(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ended, resumed = channel("ended"), channel("resumed")
        await asyncio.gather(broker.subscribe(ended), broker.unsubscribe(ended))
        await asyncio.gather(
            broker.subscribe(resumed), broker.unsubscribe(resumed), broker.subscribe(resumed)
        )
        await broker.publish(ended, publication("x"), self.options())
        await broker.publish(resumed, publication("y"), self.options())
        assert await self.wait_for_offsets(handler, resumed, 1) == [1]
        assert ended not in handler.publications

    async def test_history_top_never_runs_ahead_of_delivery(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        # The recovery invariant rests on this: a top offset N read from the stream means
        # publications up to N already reached the handler.
        ch = channel("a")
        await broker.subscribe(ch)
        options = self.options()
        for i in range(20):
            await broker.publish(ch, publication(i), options)
            top = (await broker.history(ch, limit=0)).position.offset
            assert handler.offsets(ch) == list(range(1, top + 1))

    async def test_join_and_leave_reach_a_subscribed_channel(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        alice = ClientInfo(user="alice", client="c1")
        await broker.subscribe(ch)
        await broker.publish_join(ch, alice)
        await broker.publish_leave(ch, alice)
        async with asyncio.timeout(self.delivery_timeout):
            await handler.wait_until(lambda: ch in handler.joins and ch in handler.leaves)
        await self.settle()
        assert handler.joins[ch] == [alice]
        assert handler.leaves[ch] == [alice]

    async def test_join_and_leave_of_an_unsubscribed_channel_are_not_delivered(
        self, broker: Broker, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        alice = ClientInfo(user="alice", client="c1")
        await broker.publish_join(ch, alice)
        await broker.publish_leave(ch, alice)
        await self.settle()
        assert ch not in handler.joins
        assert ch not in handler.leaves

    async def test_channels_lists_the_subscribed_channels(
        self, broker: Broker, channel: Callable[[str], str]
    ) -> None:
        kept, dropped = channel("kept"), channel("dropped")
        await broker.subscribe(kept)
        await broker.subscribe(dropped)
        await broker.unsubscribe(dropped)
        channels = await broker.channels()
        assert kept in channels
        assert dropped not in channels

    # -- recovery: one table (tether.testing.recovery), every read path -------------------

    @pytest.mark.parametrize("path", RECOVERY_PATHS)
    @pytest.mark.parametrize("scenario", RECOVERY_SCENARIOS, ids=lambda s: s.name)
    async def test_recovery_gives_the_client_what_the_scenario_says(
        self,
        broker: Broker,
        handler: RecordingHandler,
        clock: FakeClock,
        channel: Callable[[str], str],
        scenario: RecoveryScenario,
        path: str,
    ) -> None:
        ch = channel("recover")
        size, ttl = scenario.history_size, self.history_ttl
        options = self.options(history_size=size)
        cache = RecoveryCache(broker, clock) if path == "cache" else None
        fed = 0

        async def publish_and_deliver(count: int, data: Any) -> None:
            # As on a node: each delivery reaches the cache before time moves on.
            nonlocal fed
            for _ in range(count):
                await broker.publish(ch, publication(data), options)
            await self.wait_for_offsets(handler, ch, fed + count)
            if cache is not None:
                for pub in handler.publications.get(ch, [])[fed:]:
                    cache.on_publication(ch, pub)
            fed += count

        await broker.subscribe(ch)
        await publish_and_deliver(scenario.published // 2, "before")
        if cache is not None:
            await cache.position(ch, size=size, ttl=ttl)  # the tail loads halfway
        await publish_and_deliver(scenario.published - scenario.published // 2, "before")
        seen_epoch = (await broker.history(ch, limit=0)).position.epoch
        if scenario.remove_history:
            await broker.remove_history(ch)
            if cache is not None:
                cache.drop(ch)  # as the node does when it removes history
        if scenario.expire:
            await self.elapse(clock, self.history_ttl + self.margin)
        if scenario.restart:
            await self.elapse(clock, self.meta_ttl + self.margin)
            await publish_and_deliver(2, "after the restart")

        since = StreamPosition(
            scenario.since, seen_epoch if scenario.epoch is None else scenario.epoch
        )
        reader = cache if cache is not None else BrokerStream(broker)
        pubs, position, recovered = await recover(
            reader, ch, since, cap=scenario.cap, size=size, ttl=ttl
        )

        assert (recovered, [p.offset for p in pubs]) == (scenario.recovered, list(scenario.missed))
        assert payloads(pubs) == ["before"] * len(scenario.missed)
        assert position == (await broker.history(ch, limit=0)).position

    # -- fencing: a store that lost acknowledged writes ----------------------------------

    async def _fail_over_losing_writes(
        self, store: Failover, ch: str
    ) -> tuple[list[PublishResult], list[PublishResult], Broker]:
        kept = await self.publish_many(store.broker, ch, 3)
        await store.lose_next_writes()
        lost = await self.publish_many(store.broker, ch, 2)
        return kept, lost, await store.fail_over()

    async def test_after_a_failover_that_lost_writes_no_position_is_handed_out_twice(
        self, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        # A position must name one publication, ever: a client that saw a lost one must
        # never find another under the same (offset, epoch).
        ch = channel("a")
        async with self.failover(handler) as store:
            kept, lost, broker = await self._fail_over_losing_writes(store, ch)
            after = await self.publish_many(broker, ch, 3)
        handed_out = {r.position for r in kept + lost}
        assert not handed_out & {r.position for r in after}
        assert len({r.position.epoch for r in after}) == 1
        first = after[0].position.offset
        assert [r.position.offset for r in after] == [first, first + 1, first + 2]

    async def test_after_a_failover_a_position_in_the_lost_writes_is_unrecoverable(
        self, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        async with self.failover(handler) as store:
            _, lost, broker = await self._fail_over_losing_writes(store, ch)
            await self.publish_many(broker, ch, 3)
            with pytest.raises(UnrecoverablePosition):
                await broker.history(ch, since=lost[-1].position, limit=-1)

    async def test_after_a_failover_the_first_read_reports_the_epoch_the_next_publish_gets(
        self, handler: RecordingHandler, channel: Callable[[str], str]
    ) -> None:
        # A subscriber positioned by a read right after the failover holds the new epoch.
        ch = channel("a")
        async with self.failover(handler) as store:
            kept, lost, broker = await self._fail_over_losing_writes(store, ch)
            read = await broker.history(ch, limit=0)
            following = await broker.publish(ch, publication("x"), self.options())
        assert read.position not in {r.position for r in kept + lost}
        assert following.position == StreamPosition(read.position.offset + 1, read.position.epoch)

    # -- presence -------------------------------------------------------------------------

    async def test_presence_lists_added_clients(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        alice = ClientInfo(user="alice", client="c1")
        bob = ClientInfo(user="bob", client="c2")
        await presence.add(ch, "c1", alice)
        await presence.add(ch, "c2", bob)
        assert await presence.get(ch) == {"c1": alice, "c2": bob}

    async def test_presence_add_twice_keeps_one_entry_with_the_latest_info(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await presence.add(ch, "c1", ClientInfo(user="alice", client="c1"))
        newer = ClientInfo(user="alice", client="c1", conn_info=msgspec.Raw(b'{"v":2}'))
        await presence.add(ch, "c1", newer)
        assert await presence.get(ch) == {"c1": newer}
        assert await presence.stats(ch) == (1, 1)

    async def test_presence_remove_drops_the_entry(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        bob = ClientInfo(user="bob", client="c2")
        await presence.add(ch, "c1", ClientInfo(user="alice", client="c1"))
        await presence.add(ch, "c2", bob)
        await presence.remove(ch, "c1")
        assert await presence.get(ch) == {"c2": bob}

    async def test_presence_remove_of_an_absent_client_is_not_an_error(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await presence.remove(ch, "nobody")
        await presence.add(ch, "c1", ClientInfo(user="alice", client="c1"))
        await presence.remove(ch, "nobody")
        assert list(await presence.get(ch)) == ["c1"]

    async def test_presence_stats_count_clients_and_unique_users(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        await presence.add(ch, "c1", ClientInfo(user="alice", client="c1"))
        await presence.add(ch, "c2", ClientInfo(user="alice", client="c2"))
        await presence.add(ch, "c3", ClientInfo(user="bob", client="c3"))
        assert await presence.stats(ch) == (3, 2)

    async def test_presence_of_an_empty_channel_is_empty(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        ch = channel("a")
        assert await presence.get(ch) == {}
        assert await presence.stats(ch) == (0, 0)

    async def test_presence_is_kept_per_channel(
        self, presence: PresenceStore, channel: Callable[[str], str]
    ) -> None:
        a, b = channel("a"), channel("b")
        alice = ClientInfo(user="alice", client="c1")
        await presence.add(a, "c1", alice)
        assert await presence.get(a) == {"c1": alice}
        assert await presence.get(b) == {}
        assert await presence.stats(b) == (0, 0)
