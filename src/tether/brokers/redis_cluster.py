"""Redis Cluster broker: streams and fan-out over the masters of a Redis Cluster (>= 7),
with sharded pub/sub (redis-py asyncio ``RedisCluster`` + hiredis).

A channel's keys and its pub/sub channel ``tether.ch.{CH}`` carry the hash tag ``{CH}``
(:mod:`tether.brokers.redis_common`), so they all hash to one slot and live on the master
that owns it. Commands and the publish script go to that master (``RedisCluster`` routes
them by key and follows ``MOVED``/``ASK``); the script delivers with ``SPUBLISH``, which
reaches only the subscribers connected to that slot's shard. As in
:mod:`tether.brokers.redis`, commands are never retried on a connection error (a publish
that fails raises :class:`~tether.errors.BrokerUnavailable`; retrying is safe with an
idempotency key).

The subscriber side is ours, not the library's: one dedicated RESP2 connection (a
*link*) per master, each channel ``SSUBSCRIBE``\\ d on the link of the master that owns
its slot. What a link sends is queued in order (``SSUBSCRIBE``, ``SUNSUBSCRIBE``,
``PING``) and each reply, error replies included, is matched against that queue, so the
broker knows which subscriptions Redis confirmed. The PING barrier of the Broker contract
("history never runs ahead of delivery") goes to the link of the channel asked about.

Unlike :mod:`tether.brokers.redis`, nothing is batched per loop iteration here: stream
reads go one by one through ``RedisCluster`` (which routes each by its slot and follows
``MOVED``/``ASK`` per command), and each SSUBSCRIBE and PING is its own write on its
link. A batch would have to be split per master and redone per slot on a redirect.

Topology changes. A channel is *lost* when Redis tells us it is no longer subscribed
(a ``sunsubscribe`` we did not ask for: its slot moved to another master, or the master
became a replica), when its ``SSUBSCRIBE`` was refused (``MOVED``, ``CLUSTERDOWN``), or
when its link broke. Lost channels make the broker unhealthy and wake the repair task,
which refreshes the slot map (``CLUSTER SLOTS`` through ``RedisCluster``), connects a
link to every master, subscribes each lost channel on its owner's link, waits for Redis
to confirm, and only then calls ``handler.on_resync(channels)``: the node makes their
subscribers catch up from the stream (or tells them it cannot). It retries with jittered
backoff until every wanted channel is confirmed, so the broker is never silently deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from typing import Any, Literal

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from tether.brokers.base import (
    BrokerEventHandler,
)
from tether.brokers.redis_common import (
    HISTORY_SCRIPT,
    UNAVAILABLE,
    PresenceCommands,
    StreamCommands,
    StreamKeys,
    dispatch,
    publish_script,
)
from tether.errors import BrokerUnavailable

__all__ = ["RedisClusterBroker", "RedisClusterPresenceStore"]

log = structlog.get_logger("tether.redis_cluster")

# Besides a broken connection (or a node's connection pool exhausted): the cluster is down
# or reconfiguring (CLUSTERDOWN, TRYAGAIN, a slot nobody serves, no node reachable).
_UNAVAILABLE = (*UNAVAILABLE, ClusterDownError, TryAgainError, RedisClusterException)


def _cluster_client(
    url: str, *, command_timeout: float, connect_timeout: float, max_connections: int
) -> RedisCluster:
    """A cluster client that follows MOVED/ASK (the command did not run) but never retries
    after a connection error (the command may have run). ``max_connections`` per node;
    beyond it a command fails as unavailable."""
    return RedisCluster.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        socket_timeout=command_timeout,
        socket_connect_timeout=connect_timeout,
    )


async def _close_cluster_client(client: RedisCluster) -> None:
    """Disconnect every node's connections. ``RedisCluster.aclose`` alone does nothing
    while the client is marked for re-initialization (after a connection error), which
    would leave the surviving nodes' connections open."""
    await client.aclose()
    await client.nodes_manager.aclose()
    await client.nodes_manager.aclose("startup_nodes")


_Sent = tuple[Literal["ssubscribe", "sunsubscribe", "ping"], str, "asyncio.Future[None] | None"]


class _Link:
    """The subscriber connection to one master. Every command it sends is remembered in
    ``sent`` until its reply comes; Redis answers them in order."""

    def __init__(self, name: str, conn: Connection) -> None:
        self.name = name
        self.conn = conn
        self.up = True
        self.sent: deque[_Sent] = deque()
        self.confirmed: set[str] = set()
        """Channels whose SSUBSCRIBE Redis confirmed (and that it has not dropped since)."""
        self.reader: asyncio.Task[None] | None = None

    def fail_pending(self) -> None:
        self.up = False
        while self.sent:
            _, _, fut = self.sent.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(BrokerUnavailable("redis cluster subscriber link lost"))


class RedisClusterBroker(StreamCommands):
    """:class:`~tether.brokers.base.Broker` over a Redis Cluster.

    ``url``: ``redis://host:port`` (or ``rediss://``) of any node, the *seed*: the others
    are discovered from it (credentials and TLS options of the URL apply to every node).
    ``command_timeout``, ``connect_timeout``, ``meta_ttl``: as for
    :class:`~tether.brokers.redis.RedisBroker`. ``max_connections``: command connections
    per node.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tether",
        meta_ttl: float = 86400,
        command_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self._prefix = prefix
        self._keys = StreamKeys(prefix)
        self._meta_ttl_ms = int(meta_ttl * 1000)
        self._timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._redis = _cluster_client(
            url,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
        self._publish_script = self._redis.register_script(publish_script("spublish"))
        self._history_script = self._redis.register_script(HISTORY_SCRIPT)
        self._handler: BrokerEventHandler | None = None
        self._channels: set[str] = set()
        """Channels this node wants to hear."""
        self._assigned: dict[str, str] = {}
        """Channel -> name of the link its SSUBSCRIBE was sent on (and not undone)."""
        self._lost: set[str] = set()
        """Wanted channels that no link holds for sure: the repair task's work."""
        self._links: dict[str, _Link] = {}
        self._wake = asyncio.Event()
        self._attempted = asyncio.Event()
        self._settled = False
        """True once a repair found nothing left to do (and until the next wake)."""
        self._repairer: asyncio.Task[None] | None = None
        self._closing = False

    def _pubsub_channel(self, channel: str) -> str:
        return f"{self._prefix}.ch.{{{channel}}}"

    def _channel_of(self, name: bytes) -> str:
        # "<prefix>.ch.{CH}" -> CH
        return name[len(self._prefix) + 5 : -1].decode()

    def owner(self, channel: str) -> str:
        """``host:port`` of the master that owns ``channel``'s slot, by the slot map this
        broker holds now. Raises ``BrokerUnavailable`` if no master serves the slot."""
        try:
            node = self._redis.get_node_from_key(self._pubsub_channel(channel))
        except RedisClusterException as exc:
            raise BrokerUnavailable(f"redis cluster: no master for {channel!r}: {exc}") from None
        if node is None:
            raise BrokerUnavailable(f"redis cluster: no master for {channel!r}")
        return str(node.name)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while a link to every master is up and every subscribed channel is
        confirmed on its owner's link."""
        return (
            self._settled
            and all(link.up for link in self._links.values())
            and not self._lost
            and not self._wake.is_set()
        )

    async def start(self, handler: BrokerEventHandler) -> None:
        """Discover the cluster and connect a link to every master. Waits for that first
        attempt (at most ``4 * (connect_timeout + command_timeout)`` seconds); a cluster
        that is down does not fail the start (the node reports not ready until it is
        up, and the broker keeps trying)."""
        self._handler = handler
        self._wake.set()
        self._repairer = asyncio.get_running_loop().create_task(
            self._run_repairs(), name="redis-cluster-repair"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._attempted.wait(), 4 * (self._connect_timeout + self._timeout)
            )

    async def close(self) -> None:
        self._closing = True
        if self._repairer is not None:
            self._repairer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repairer
        for name in list(self._links):
            await self._drop_link(name)
        await _close_cluster_client(self._redis)
        self._handler = None

    # -- links ------------------------------------------------------------------------

    async def _connect_link(self, name: str, host: str, port: int) -> _Link:
        # The seed URL's credentials and TLS options, the master's address.
        kwargs: dict[str, Any] = dict(parse_url(self.url))
        connection_class: type[Connection] = kwargs.pop("connection_class", Connection)
        kwargs.pop("db", None)
        kwargs.update(host=host, port=port)
        conn = connection_class(
            **kwargs,
            protocol=2,  # pub/sub messages as plain arrays, read in order with replies
            socket_connect_timeout=self._connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        await conn.connect()  # type: ignore[no-untyped-call]  # redis-py lacks a hint
        link = _Link(name, conn)
        link.reader = asyncio.get_running_loop().create_task(
            self._read_link(link), name=f"redis-cluster-link {name}"
        )
        self._links[name] = link
        return link

    async def _drop_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is None:
            return
        self._link_lost(link)
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.reader
        with contextlib.suppress(Exception):
            await link.conn.disconnect()

    def _link_lost(self, link: _Link) -> None:
        """The link can no longer be trusted: its channels are lost."""
        link.fail_pending()
        link.confirmed.clear()
        lost = {ch for ch, name in self._assigned.items() if name == link.name}
        for ch in lost:
            del self._assigned[ch]
        self._mark_lost(lost)

    def _mark_lost(self, channels: set[str]) -> None:
        self._lost |= channels & self._channels
        self._wake.set()

    async def _read_link(self, link: _Link) -> None:
        try:
            while True:
                try:
                    response: Any = await link.conn.read_response(timeout=math.inf)
                except ResponseError as exc:
                    # An error reply answers the oldest command sent (RESP is in order).
                    self._on_error_reply(link, exc)
                    continue
                self._on_reply(link, response)
        except asyncio.CancelledError:
            raise
        except (*UNAVAILABLE, RedisError) as exc:
            if not self._closing:
                log.error(
                    "redis cluster link lost; its channels are deaf until it is back",
                    node=link.name,
                    error=str(exc),
                )
                self._link_lost(link)

    def _on_reply(self, link: _Link, response: Any) -> None:
        kind = response[0] if isinstance(response, list) else response
        if kind == b"smessage":
            if self._handler is not None:
                dispatch(self._handler, self._channel_of(response[1]), response[2])
            return
        # A PING is answered ["pong", ""] while the connection subscribes to something,
        # and +PONG once it subscribes to nothing.
        if kind in (b"pong", b"PONG"):
            self._pop(link, "ping", "")
            return
        if kind == b"ssubscribe":
            channel = self._channel_of(response[1])
            self._pop(link, "ssubscribe", channel)
            link.confirmed.add(channel)
        elif kind == b"sunsubscribe":
            channel = self._channel_of(response[1])
            link.confirmed.discard(channel)
            if not self._pop(link, "sunsubscribe", channel):
                # Not an answer to us: Redis dropped the subscription because the slot
                # left this master (resharding, failover). Resubscribe on the new owner.
                log.warning("redis cluster dropped a subscription", node=link.name,
                            channel=channel)  # fmt: skip
                if self._assigned.get(channel) == link.name:
                    del self._assigned[channel]
                    self._mark_lost({channel})

    def _on_error_reply(self, link: _Link, exc: ResponseError) -> None:
        if not link.sent:
            log.error("redis cluster link: unexpected error reply", node=link.name,
                      error=str(exc))  # fmt: skip
            return
        kind, channel, fut = link.sent.popleft()
        if kind == "ping":
            if fut is not None and not fut.done():
                fut.set_exception(BrokerUnavailable(f"redis cluster: {exc}"))
        elif kind == "ssubscribe":
            # MOVED (our slot map is stale), CLUSTERDOWN...: not subscribed.
            log.warning("redis cluster refused a subscription", node=link.name,
                        channel=channel, error=str(exc))  # fmt: skip
            if self._assigned.get(channel) == link.name:
                del self._assigned[channel]
                self._mark_lost({channel})

    def _pop(self, link: _Link, kind: str, channel: str) -> bool:
        """Match a reply with the oldest command sent; False if it answers none."""
        if not link.sent or link.sent[0][0] != kind or link.sent[0][1] != channel:
            return False
        _, _, fut = link.sent.popleft()
        if fut is not None and not fut.done():
            fut.set_result(None)
        return True

    async def _send(
        self, link: _Link, kind: Literal["ssubscribe", "sunsubscribe"], channel: str
    ) -> None:
        link.sent.append((kind, channel, None))
        try:
            await link.conn.send_command(kind.upper(), self._pubsub_channel(channel))
        except UNAVAILABLE as exc:
            self._link_lost(link)
            raise BrokerUnavailable(f"redis cluster {kind}: {exc}") from None

    async def _barrier(self, link: _Link) -> None:
        """Wait until ``link`` has handed over everything Redis sent it before now (a PING
        answered in order after every earlier message and reply)."""
        if not link.up:
            raise BrokerUnavailable(f"redis cluster link to {link.name} is down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        link.sent.append(("ping", "", fut))
        try:
            await link.conn.send_command("PING")
            await asyncio.wait_for(asyncio.shield(fut), self._timeout)
        except (*UNAVAILABLE, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis cluster subscriber: {exc}") from None

    def _link_of(self, channel: str) -> _Link:
        link = self._links.get(self.owner(channel))
        if link is None or not link.up:
            self._mark_lost({channel})
            raise BrokerUnavailable(f"redis cluster: no link to the master of {channel!r}")
        return link

    # -- repair -----------------------------------------------------------------------

    async def _run_repairs(self) -> None:
        delay = 0.05
        while not self._closing:
            await self._wake.wait()
            self._settled = False
            self._wake.clear()
            try:
                restored, problem = await self._repair()
            except asyncio.CancelledError:
                raise
            except (*_UNAVAILABLE, RedisError, BrokerUnavailable) as exc:
                restored, problem = set(), f"slot map refresh failed: {exc}"
            self._attempted.set()
            if restored and self._handler is not None:
                # Subscribed again and confirmed: what was published meanwhile is in the
                # stream, so the subscribers can catch up now.
                log.warning("redis cluster channels resubscribed", channels=len(restored))
                self._handler.on_resync(restored)
            if problem:
                log.warning("redis cluster subscriber repair incomplete; retrying",
                            problem=problem, lost=len(self._lost))  # fmt: skip
                self._wake.set()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            if not self._wake.is_set():
                self._settled = True

    async def _repair(self) -> tuple[set[str], str]:
        """Refresh the slot map, link every master, subscribe every lost channel on its
        owner's link and wait for Redis to confirm. Returns the channels restored and what
        is still wrong ("" if nothing: every master linked, no channel lost)."""
        await self._redis.initialize()
        await self._redis.nodes_manager.initialize()
        masters = {str(node.name): node for node in self._redis.get_primaries()}
        for name in [n for n in self._links if n not in masters or not self._links[n].up]:
            await self._drop_link(name)  # a master gone, or a broken link: its channels lost
        problems: list[str] = []
        for name, node in masters.items():
            if name not in self._links:
                try:
                    await self._connect_link(name, node.host, int(node.port))
                except UNAVAILABLE as exc:
                    problems.append(f"{name}: {exc}")
        # A channel held on a link whose master no longer owns its slot (the slot map
        # changed before Redis told the link).
        # If that map is the stale one, the new owner refuses the subscription (MOVED) and
        # the next repair puts it back: a needless resync, never a deaf channel.
        for channel, name in list(self._assigned.items()):
            if self.owner(channel) != name:
                del self._assigned[channel]
                self._lost.add(channel)
                old = self._links.get(name)
                if old is not None and old.up:
                    with contextlib.suppress(BrokerUnavailable):
                        await self._send(old, "sunsubscribe", channel)
        self._lost &= self._channels
        sent: dict[str, set[str]] = {}
        for channel in set(self._lost):
            link = self._links.get(self.owner(channel))
            if link is None or not link.up:
                continue
            self._assigned[channel] = link.name
            try:
                await self._send(link, "ssubscribe", channel)
            except BrokerUnavailable:
                continue
            sent.setdefault(link.name, set()).add(channel)
        restored: set[str] = set()
        for name, channels in sent.items():
            link = self._links[name]
            try:
                await self._barrier(link)
            except BrokerUnavailable as exc:
                problems.append(f"{name}: {exc}")
                continue
            restored |= {
                ch for ch in channels if ch in link.confirmed and self._assigned.get(ch) == name
            }
        restored &= self._lost
        self._lost -= restored
        if self._lost:
            problems.append(f"{len(self._lost)} channels not subscribed yet")
        return restored, "; ".join(problems)

    # -- Broker -----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        link = self._link_of(channel)
        self._assigned[channel] = link.name
        await self._send(link, "ssubscribe", channel)
        await self._barrier(link)
        if channel not in self._channels:
            return  # an unsubscribe came after this subscribe, and won
        if channel not in link.confirmed or self._assigned.get(channel) != link.name:
            # Refused (MOVED: the slot map was stale) or dropped meanwhile: the repair
            # task subscribes it on the right master and then asks for a resync.
            self._mark_lost({channel})
            raise BrokerUnavailable(f"redis cluster: subscription to {channel!r} refused")

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._lost.discard(channel)
        name = self._assigned.pop(channel, None)
        link = self._links.get(name) if name is not None else None
        if link is None or not link.up:
            return  # nothing held: the repair leaves it out
        await self._send(link, "sunsubscribe", channel)

    _label = "redis cluster"
    _unavailable = _UNAVAILABLE

    async def _send_control(self, pubsub_channel: str, message: bytes) -> None:
        await self._redis.spublish(pubsub_channel, message)

    async def _delivery_barrier(self, channel: str) -> None:
        # The barrier goes to the link that holds the channel; a channel no link holds
        # is deaf, so unavailable.
        name = self._assigned.get(channel)
        link = self._links.get(name) if name is not None else None
        if link is None or channel in self._lost:
            raise BrokerUnavailable(f"redis cluster: {channel!r} is being resubscribed")
        await self._barrier(link)

    async def channels(self) -> set[str]:
        """Channels subscribed on any node (``PUBSUB SHARDCHANNELS`` of every master).
        Raises ``BrokerUnavailable`` if a master cannot answer (never a partial list)."""
        try:
            names = await self._redis.pubsub_shardchannels(
                f"{self._prefix}.ch.{{*", target_nodes=RedisCluster.PRIMARIES
            )
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis cluster channels: {exc}") from None
        return {self._channel_of(n if isinstance(n, bytes) else n.encode()) for n in names}


class RedisClusterPresenceStore(PresenceCommands):
    """:class:`~tether.brokers.base.PresenceStore` in a Redis Cluster (see
    :class:`~tether.brokers.redis_common.PresenceCommands`): every call is one script on
    the channel's slot master."""

    _label = "redis cluster"
    _unavailable = _UNAVAILABLE

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tether",
        ttl: float = 60,
        command_timeout: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        self._redis = _cluster_client(
            url,
            command_timeout=command_timeout,
            connect_timeout=command_timeout,
            max_connections=max_connections,
        )
        self._init_presence(prefix, ttl)

    async def close(self) -> None:
        await _close_cluster_client(self._redis)
