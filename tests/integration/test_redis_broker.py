"""The Redis broker and presence store keep the Broker/PresenceStore contract, against a
real redis-server; and what only a networked broker can get wrong (a second node, an
outage, presence entries of a dead node)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tether.brokers.base import Broker, PresenceStore, PublishItem, PublishOptions, PublishResult
from tether.brokers.redis import RedisBroker, RedisPresenceStore
from tether.errors import BrokerUnavailable, UnrecoverablePosition
from tether.protocol.messages import ClientInfo, Publication
from tether.testing.broker_contract import (
    BrokerContract,
    Failover,
    RecordingHandler,
    publication,
)
from tether.testing.clock import FakeClock
from tether_bench.failover import RelayedFailover, ReplicatedRedis
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class TestRedisBroker(BrokerContract):
    # Redis expires keys on its own clock: the suite sleeps through real, short TTLs.
    history_ttl = 1.0
    idempotency_ttl = 1.0
    meta_ttl = 2.0
    margin = 0.4

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: RedisServer) -> None:
        self.url = redis_server.url
        self.prefix = _prefix()

    async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
        return RedisBroker(self.url, prefix=self.prefix, meta_ttl=meta_ttl)

    async def create_presence_store(self) -> PresenceStore:
        return RedisPresenceStore(self.url, prefix=self.prefix, ttl=60)

    @asynccontextmanager
    async def failover(self, handler: RecordingHandler) -> AsyncIterator[Failover]:
        async with ReplicatedRedis() as redis:
            broker = await _started(redis.url, self.prefix, handler)
            try:
                yield RelayedFailover(broker, [redis], handler)
            finally:
                await broker.close()

    async def elapse(self, clock: FakeClock, seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(seconds)

    async def settle(self) -> None:
        # A stray pub/sub message would arrive within a round trip or two.
        await asyncio.sleep(0.1)


# -- what only a shared, networked broker can get wrong ------------------------------------


async def _started(url: str, prefix: str, handler: RecordingHandler) -> RedisBroker:
    broker = RedisBroker(url, prefix=prefix, command_timeout=1.0, connect_timeout=0.5)
    await broker.start(handler)
    return broker


@pytest.fixture
def channel() -> Callable[[str], str]:
    run = uuid.uuid4().hex[:12]
    return lambda name: f"redis-{run}-{name}"


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A redis-server this test alone uses, so that it may kill it."""
    server = RedisServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.kill)


async def test_publication_from_a_client_with_connection_info_keeps_it_in_delivery_and_history(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    ch = channel("a")
    handler = RecordingHandler()
    broker = await _started(redis_server.url, _prefix(), handler)
    try:
        await broker.subscribe(ch)
        info = ClientInfo(
            user="alice", client="c1", conn_info=msgspec.Raw(b'{"name":"Alice"}'),
            chan_info=msgspec.Raw(b'{"role":"admin"}'),
        )  # fmt: skip
        await broker.publish(ch, Publication(data=msgspec.Raw(b'"hi"'), info=info), _options())
        async with asyncio.timeout(5):
            await handler.wait_until(lambda: bool(handler.publications.get(ch)))
        [history] = (await broker.history(ch, limit=-1)).publications
        for delivered in (handler.publications[ch][0], history):
            assert delivered.info is not None
            assert bytes(delivered.info.conn_info or b"") == b'{"name":"Alice"}'
            assert bytes(delivered.info.chan_info or b"") == b'{"role":"admin"}'
        assert handler.resyncs == []
    finally:
        await broker.close()


async def test_every_node_receives_every_publication_once_in_order_whoever_publishes(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    ch, prefix = channel("a"), _prefix()
    handlers = [RecordingHandler() for _ in range(3)]
    brokers = [await _started(redis_server.url, prefix, h) for h in handlers]
    try:
        for broker in brokers:
            await broker.subscribe(ch)
        await asyncio.gather(
            *(brokers[i % 3].publish(ch, publication(i), _options()) for i in range(60))
        )
        async with asyncio.timeout(5):
            for handler in handlers:
                await handler.wait_until(partial(_has_offsets, handler, ch, 60))
        await asyncio.sleep(0.1)  # a duplicate delivery would show by now
        assert [h.offsets(ch) for h in handlers] == [list(range(1, 61))] * 3
    finally:
        for broker in brokers:
            await broker.close()


async def test_history_read_on_one_node_shows_what_another_node_published(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    ch, prefix = channel("a"), _prefix()
    a = await _started(redis_server.url, prefix, RecordingHandler())
    b = await _started(redis_server.url, prefix, RecordingHandler())
    try:
        [*_, last] = [await a.publish(ch, publication(i), _options()) for i in range(3)]
        page = await b.history(ch, limit=-1)
        assert page.position == last.position
        assert [p.offset for p in page.publications] == [1, 2, 3]
    finally:
        await a.close()
        await b.close()


async def test_publish_while_redis_is_down_raises_broker_unavailable(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    broker = await _started(own_redis.url, _prefix(), RecordingHandler())
    try:
        await asyncio.to_thread(own_redis.kill)
        with pytest.raises(BrokerUnavailable):
            await broker.publish(channel("a"), publication(1), _options())
        with pytest.raises(BrokerUnavailable):
            await broker.history(channel("a"), limit=-1)
    finally:
        await broker.close()


async def test_broker_is_unhealthy_while_redis_is_down_and_healthy_when_it_is_back(
    own_redis: RedisServer,
) -> None:
    broker = await _started(own_redis.url, _prefix(), RecordingHandler())
    try:
        assert broker.healthy
        await asyncio.to_thread(own_redis.kill)
        async with asyncio.timeout(10):
            await _eventually(lambda: not broker.healthy)
        await asyncio.to_thread(own_redis.start)
        async with asyncio.timeout(10):
            await _eventually(lambda: broker.healthy)
    finally:
        await broker.close()


async def test_after_a_redis_restart_the_broker_resubscribes_and_asks_for_a_resync(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    ch, prefix = channel("a"), _prefix()
    handler = RecordingHandler()
    broker = await _started(own_redis.url, prefix, handler)
    publisher = await _started(own_redis.url, prefix, RecordingHandler())
    try:
        await broker.subscribe(ch)
        await asyncio.to_thread(own_redis.restart)
        async with asyncio.timeout(10):
            await handler.wait_until(lambda: bool(handler.resyncs))
        assert handler.resyncs == [{ch}]
        async with asyncio.timeout(10):
            await _eventually(lambda: publisher.healthy)
        await publisher.publish(ch, publication("after"), _options())
        async with asyncio.timeout(5):
            await handler.wait_until(lambda: bool(handler.publications.get(ch)))
        assert handler.offsets(ch) == [1]
    finally:
        await broker.close()
        await publisher.close()


async def test_commands_right_after_the_resync_do_not_fail_on_connections_from_before(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    # The resync makes every client resubscribe at once, and each resubscribe reads the
    # stream: those reads must not meet pooled connections to the old server.
    ch, prefix = channel("a"), _prefix()
    handler = RecordingHandler()
    broker = await _started(own_redis.url, prefix, handler)
    try:
        await broker.subscribe(ch)
        # Several pooled connections, all open when Redis goes away.
        await asyncio.gather(*(broker.history(ch, limit=-1) for _ in range(8)))
        await asyncio.to_thread(own_redis.restart)
        async with asyncio.timeout(10):
            await handler.wait_until(lambda: bool(handler.resyncs))
        pages = await asyncio.gather(*(broker.history(ch, limit=-1) for _ in range(8)))
        assert [page.publications for page in pages] == [[]] * 8
    finally:
        await broker.close()


async def test_a_position_from_before_a_redis_restart_is_unrecoverable(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    # An in-memory Redis forgets its streams when it restarts: the epoch changes, so a
    # client holding an old position is told it cannot recover, never given a gap.
    ch = channel("a")
    broker = await _started(own_redis.url, _prefix(), RecordingHandler())
    try:
        [*_, before] = [await broker.publish(ch, publication(i), _options()) for i in range(3)]
        await asyncio.to_thread(own_redis.restart)
        async with asyncio.timeout(10):
            after = await _retry_unavailable(
                lambda: broker.publish(ch, publication("x"), _options())
            )
        assert after.position.epoch != before.position.epoch
        with pytest.raises(UnrecoverablePosition):
            await broker.history(ch, since=before.position, limit=-1)
    finally:
        await broker.close()


async def test_publishes_sent_together_to_a_server_without_the_script_are_all_stored_in_order(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    # A restarted or promoted server's script cache is empty: the pipelined EVALSHAs are
    # refused (NOSCRIPT) and sent again whole, in order.
    ch = channel("a")
    handler = RecordingHandler()
    broker = await _started(own_redis.url, _prefix(), handler)
    try:
        await broker.subscribe(ch)
        await broker.publish(ch, publication(0), _options())
        admin = Redis.from_url(own_redis.url)
        await admin.script_flush()  # what a restart does to the script cache
        await admin.aclose()
        items = [PublishItem(ch, publication(i), _options()) for i in range(1, 6)]
        results = await broker.publish_many(items)
        assert [r.position.offset for r in results] == [2, 3, 4, 5, 6]
        async with asyncio.timeout(5):
            await handler.wait_until(lambda: len(handler.publications.get(ch, [])) >= 6)
        assert handler.offsets(ch) == [1, 2, 3, 4, 5, 6]
        page = await broker.history(ch, limit=-1)
        assert [msgspec.json.decode(p.data) for p in page.publications] == [0, 1, 2, 3, 4, 5]
    finally:
        await broker.close()


async def test_publishes_sent_together_while_redis_is_down_raise_broker_unavailable(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    broker = await _started(own_redis.url, _prefix(), RecordingHandler())
    try:
        await asyncio.to_thread(own_redis.kill)
        items = [PublishItem(channel("a"), publication(i), _options()) for i in range(3)]
        with pytest.raises(BrokerUnavailable):
            await broker.publish_many(items)
    finally:
        await broker.close()


async def test_stream_reads_made_together_each_get_their_own_stream(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    # Reads of one loop iteration share a pipeline: each still gets its own channel's
    # publications and top, in whatever order they were asked.
    broker = await _started(redis_server.url, _prefix(), RecordingHandler())
    try:
        channels = [channel(f"c{i}") for i in range(12)]
        for i, ch in enumerate(channels):
            for j in range(i):
                await broker.publish(ch, publication(f"{i}-{j}"), _options())
        pages = await asyncio.gather(*(broker.history(ch, limit=-1) for ch in reversed(channels)))
        for i, page in zip(reversed(range(12)), pages, strict=True):
            assert page.position.offset == i
            assert [msgspec.json.decode(p.data) for p in page.publications] == [
                f"{i}-{j}" for j in range(i)
            ]
    finally:
        await broker.close()


async def test_stream_reads_made_together_on_a_server_without_the_script_all_succeed(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    broker = await _started(own_redis.url, _prefix(), RecordingHandler())
    try:
        channels = [channel(f"c{i}") for i in range(5)]
        for ch in channels:
            await broker.publish(ch, publication(ch), _options())
        admin = Redis.from_url(own_redis.url)
        await admin.script_flush()  # what a restart does to the script cache
        await admin.aclose()
        pages = await asyncio.gather(*(broker.history(ch, limit=-1) for ch in channels))
        assert [[msgspec.json.decode(p.data) for p in page.publications] for page in pages] == [
            [ch] for ch in channels
        ]
    finally:
        await broker.close()


async def test_a_stream_read_refused_by_redis_fails_alone_among_reads_made_together(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    prefix = _prefix()
    broker = await _started(redis_server.url, prefix, RecordingHandler())
    try:
        good, broken = channel("good"), channel("broken")
        await broker.publish(good, publication("g"), _options())
        admin = Redis.from_url(redis_server.url)
        await admin.set(f"{prefix}.meta.{{{broken}}}", "not a hash")  # WRONGTYPE on read
        await admin.aclose()
        results = await asyncio.gather(
            broker.history(good, limit=-1),
            broker.history(broken, limit=-1),
            broker.history(good, limit=0),
            return_exceptions=True,
        )
        first, failed, last = results
        assert not isinstance(first, BaseException)
        assert first.position.offset == 1
        assert isinstance(failed, ResponseError)
        assert "WRONGTYPE" in str(failed)
        assert not isinstance(last, BaseException)
        assert last.position.offset == 1
    finally:
        await broker.close()


async def test_stream_reads_made_together_on_a_replica_are_each_refused_as_unavailable(
    own_redis: RedisServer,
) -> None:
    # A server demoted in a failover refuses the reads' first write (READONLY): each read
    # is unavailable for now (the guard retries, the client gets error 100), none a bug.
    replica = RedisServer()
    await asyncio.to_thread(replica.start)
    admin = Redis.from_url(replica.url)
    try:
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(own_redis.port))
        broker = await _started(replica.url, _prefix(), RecordingHandler())
        try:
            results = await asyncio.gather(
                broker.history("a", limit=-1), broker.history("b", limit=0), return_exceptions=True
            )
            assert all(isinstance(r, BrokerUnavailable) for r in results), results
            assert all("READONLY" in str(r) for r in results)
        finally:
            await broker.close()
    finally:
        await admin.aclose()
        await asyncio.to_thread(replica.kill)


async def test_subscribes_made_together_each_deliver_their_channel(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    handler = RecordingHandler()
    broker = await _started(redis_server.url, _prefix(), handler)
    try:
        channels = [channel(f"c{i}") for i in range(20)]
        await asyncio.gather(*(broker.subscribe(ch) for ch in channels))
        for ch in channels:  # subscribed when subscribe returned: nothing to wait for
            await broker.publish(ch, publication(ch), _options())
        async with asyncio.timeout(5):
            await handler.wait_until(lambda: all(handler.offsets(ch) == [1] for ch in channels))
    finally:
        await broker.close()


async def test_subscribes_and_barriers_fail_as_unavailable_when_redis_goes_away(
    own_redis: RedisServer, channel: Callable[[str], str]
) -> None:
    broker = await _started(own_redis.url, _prefix(), RecordingHandler())
    try:
        ch = channel("a")
        await broker.subscribe(ch)
        await broker.publish(ch, publication(1), _options())
        await asyncio.to_thread(own_redis.kill)
        results = await asyncio.gather(
            broker.subscribe(channel("b")),
            broker.subscribe(channel("c")),
            broker.history(ch, limit=0),
            return_exceptions=True,
        )
        assert all(isinstance(r, BrokerUnavailable) for r in results), results
    finally:
        await broker.close()


async def test_presence_entry_that_is_not_refreshed_disappears_after_the_ttl(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    # The clients of a node that died vanish from presence once their entries lapse.
    ch = channel("a")
    store = RedisPresenceStore(redis_server.url, prefix=_prefix(), ttl=0.5)
    try:
        await store.add(ch, "c1", ClientInfo(user="alice", client="c1"))
        await store.add(ch, "c2", ClientInfo(user="bob", client="c2"))
        await asyncio.sleep(0.3)
        await store.add(ch, "c2", ClientInfo(user="bob", client="c2"))  # c2's node refreshes
        await asyncio.sleep(0.35)
        assert list(await store.get(ch)) == ["c2"]
        assert await store.stats(ch) == (1, 1)
    finally:
        await store.close()


async def test_presence_entry_keeps_connection_and_channel_info(
    redis_server: RedisServer, channel: Callable[[str], str]
) -> None:
    ch = channel("a")
    store = RedisPresenceStore(redis_server.url, prefix=_prefix())
    info = ClientInfo(user="alice", client="c1", conn_info=msgspec.Raw(b'{"name":"Alice"}'))
    try:
        await store.add(ch, "c1", info)
        assert await store.get(ch) == {"c1": info}
    finally:
        await store.close()


def _has_offsets(handler: RecordingHandler, channel: str, count: int) -> bool:
    return len(handler.offsets(channel)) >= count


def _options() -> PublishOptions:
    return PublishOptions(history_size=100, history_ttl=60)


async def _eventually(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds; the caller bounds the wait."""
    # broker.healthy is a property with no event to await: poll it.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _retry_unavailable(call: Callable[[], Awaitable[PublishResult]]) -> PublishResult:
    """Retry ``call`` while Redis is coming back; the caller bounds the wait."""
    while True:
        try:
            return await call()
        except BrokerUnavailable:
            await asyncio.sleep(0.05)
