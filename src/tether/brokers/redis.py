"""Redis broker: streams and fan-out shared by many nodes (redis-py asyncio + hiredis).

Keys, per channel ``CH`` (prefix ``tether`` by default):

* ``tether.meta.{CH}``: hash ``e`` (epoch), ``s`` (top offset); lives ``meta_ttl`` after the
  latest publish. When it is gone the stream restarts with a new epoch.
* ``tether.history.{CH}``: list of ``"<offset> <publication json>"``, trimmed to
  ``history_size``, expiring ``history_ttl`` after the latest publish.
* ``tether.idem.{CH}.<key>``: ``"<offset> <epoch>"`` of an idempotent publish.
* Pub/sub channel ``tether.ch.{CH}``: messages ``p<offset> <json>``, ``j<json>``, ``l<json>``.

The braces make every key of a channel hash to one Redis Cluster slot. The scripts, the
key layout and the stored encoding live in :mod:`tether.brokers.redis_common`, shared with
the Redis Cluster broker (:mod:`tether.brokers.redis_cluster`).

A publish is one Lua script: dedup, offset increment, append, trim, expire and PUBLISH run
atomically, so the stream and the fan-out can never disagree. Commands are never retried
by the client library: a publish that fails raises
:class:`~tether.errors.BrokerUnavailable` and the caller decides (with an idempotency key,
retrying is safe). Several publishes at once (:meth:`RedisBroker.publish_many`, the
server API's batch) go as one pipeline of script calls: one round trip, run by Redis in
the order given, and their pub/sub messages reach every node together, so a node
delivers them in one loop iteration and writes them to each subscriber at once.

Per-tick batching (:class:`~tether.brokers.batching.TickBatcher`). What a connect storm
asks of Redis comes in thousands of small calls; those made during one event-loop
iteration go together: the stream reads as one pipeline on one pooled connection, of
one call of the many-streams history script per 64 streams (``HISTORY_MANY_SCRIPT``:
the history script's steps for each stream, each failing alone), and the subscriber
connection's SUBSCRIBEs, UNSUBSCRIBEs and delivery barriers as one write (runs of
(UN)SUBSCRIBE merged into one command of many channels, in call order, and one PING for
every subscribe and barrier of the batch). One batch of each kind is out at a time, and
the next one fills meanwhile, so under load a batch carries tens of reads. Each caller
gets exactly the reply it would have had alone, and its own errors; a broken connection
fails every call of the batch as unavailable.

The subscriber side is a dedicated connection this module drives itself (no silent
reconnects inside the library): when it breaks, the broker is *deaf*, says so
(:attr:`RedisBroker.healthy`, logs), reconnects with jittered backoff, resubscribes every
channel, and then calls ``handler.on_resync(channels)`` so the node makes every local
subscriber catch up from the stream (or be told that it cannot).

With Redis Sentinel (:class:`Sentinels`), every connection, the subscriber's included,
asks the Sentinels where the master is when it connects (redis-py's Sentinel support for
the command pool; ``discover_master`` plus a ``ROLE`` check for the subscriber), so a
failover is followed without a virtual IP: Sentinel closes the clients of the old and the
new master when it reconfigures them, the subscriber reconnects to the new master and
resyncs, and a command that still reaches the demoted master is refused (``READONLY``)
as unavailable. Streams the new master holds from before are fenced
(:mod:`tether.brokers.redis_common`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import BlockingConnectionPool, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tether.brokers.base import (
    BrokerEventHandler,
    PublishItem,
    PublishResult,
)
from tether.brokers.batching import TickBatcher
from tether.brokers.redis_common import (
    HISTORY_MANY_SCRIPT,
    UNAVAILABLE,
    PresenceCommands,
    StreamCommands,
    StreamKeys,
    dispatch,
    publish_call,
    publish_result,
    publish_script,
    refused_for_now,
)
from tether.errors import BrokerUnavailable

log = structlog.get_logger("tether.redis")

_UNAVAILABLE = UNAVAILABLE

_SUBSCRIBE, _UNSUBSCRIBE, _PING = "SUBSCRIBE", "UNSUBSCRIBE", "PING"
_Control = tuple[str, str]
"""What the subscriber connection is asked to send: (SUBSCRIBE, channel), (UNSUBSCRIBE,
channel), or (PING, "") for a delivery barrier."""
_Script = tuple[list[str], list[Any]]
"""KEYS and ARGV of one script call."""
_READS_PER_SCRIPT = 64
"""Streams one call of the many-streams history script reads at most: a script holds the
server while it runs (each stream is an LRANGE of up to its history size), so a batch of
thousands goes as several calls, still in one pipeline."""


class Sentinels(NamedTuple):
    """Where to ask for the master: the Sentinels' ``(host, port)`` and the master's name
    (``sentinel monitor <name> ...``)."""

    addresses: Sequence[tuple[str, int]]
    master: str


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (connections ask the Sentinels for the master) with the
    queueing of :class:`BlockingConnectionPool` (see :func:`_client`)."""


def _master_kwargs(url: str) -> dict[str, Any]:
    """What of ``url`` applies to a master found through Sentinel: credentials, database,
    TLS; its host and port are the Sentinels' to say."""
    kwargs: dict[str, Any] = dict(parse_url(url))
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    connection_class = kwargs.pop("connection_class", Connection)
    if connection_class is not Connection:
        kwargs["ssl"] = True
    return kwargs


def _client(
    url: str,
    *,
    command_timeout: float,
    connect_timeout: float,
    max_connections: int,
    sentinel: Sentinel | None = None,
    master: str = "",
) -> Redis:
    """A client with a bounded pool that queues: a reconnection storm of thousands of
    subscribes waits its turn for one of ``max_connections`` connections (up to
    ``command_timeout``) instead of failing. Commands are never retried by the library.
    With ``sentinel``, each connection goes to the master the Sentinels name."""
    options: dict[str, Any] = dict(
        max_connections=max_connections,
        timeout=command_timeout,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=command_timeout,
        socket_connect_timeout=connect_timeout,
    )
    if sentinel is not None:
        pool: BlockingConnectionPool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]  # redis-py lacks a hint
            master, sentinel, **options, **_master_kwargs(url)
        )
    else:
        pool = BlockingConnectionPool.from_url(url, **options)
    return Redis.from_pool(pool)


def _sentinel(sentinels: Sentinels, *, command_timeout: float, connect_timeout: float) -> Sentinel:
    return Sentinel(  # type: ignore[no-untyped-call]  # redis-py lacks a hint
        list(sentinels.addresses),
        sentinel_kwargs={
            "socket_timeout": command_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        },
    )


class RedisBroker(StreamCommands):
    """:class:`~tether.brokers.base.Broker` over one Redis server.

    ``url``: ``redis://host:port/db``. ``command_timeout``: seconds before a command is
    failed as unavailable. ``meta_ttl``: seconds a stream's offset and epoch outlive its
    latest publish. ``max_connections``: command connections (the subscriber has its own);
    when all are busy a command waits for one, up to ``command_timeout``.
    ``sentinels``: find the master through Redis Sentinel (``url`` then gives only the
    credentials, database and TLS).
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
        sentinels: Sentinels | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        """Of every key and pub/sub channel (see the module docstring)."""
        self._prefix = prefix
        self._meta_ttl_ms = int(meta_ttl * 1000)
        self._timeout = command_timeout
        self._connect_timeout = connect_timeout
        self.sentinels = sentinels
        """Where the master is found (None: at ``url``)."""
        self._sentinel = (
            _sentinel(sentinels, command_timeout=command_timeout, connect_timeout=connect_timeout)
            if sentinels is not None
            else None
        )
        self._redis = _client(
            url,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            sentinel=self._sentinel,
            master=sentinels.master if sentinels is not None else "",
        )
        self._keys = StreamKeys(prefix)
        self._publish_script = self._redis.register_script(publish_script("publish"))
        self._history_many_script = self._redis.register_script(HISTORY_MANY_SCRIPT)
        self._handler: BrokerEventHandler | None = None
        self._channels: set[str] = set()
        self._conn: Connection | None = None
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._control: TickBatcher[_Control, None] = TickBatcher(
            self._send_controls, "redis-subscriber-commands"
        )
        self._reads: TickBatcher[_Script, Any] = TickBatcher(
            self._read_streams, "redis-history-reads"
        )

    # -- keys -------------------------------------------------------------------------

    def _pubsub_channel(self, channel: str) -> str:
        return f"{self._prefix}.ch.{channel}"

    # -- lifecycle --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while the subscriber connection is up (the node can hear publications)."""
        return self._connected.is_set()

    async def start(self, handler: BrokerEventHandler) -> None:
        """Start the subscriber connection. Waits up to the connect timeout for it; a Redis
        that is down does not fail the start (the node reports not ready until it is up)."""
        self._handler = handler
        self._reader = asyncio.get_running_loop().create_task(
            self._run_subscriber(), name="redis-subscriber"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout * 2)

    async def close(self) -> None:
        self._closing = True
        await self._control.close()
        await self._reads.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._drop_connection()
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()
        self._handler = None

    async def _subscriber_connection(self) -> Connection:
        """A connected subscriber connection to the master: ``url``'s server, or the one
        the Sentinels name (checked with ``ROLE``: a Sentinel's view may lag a failover,
        and a replica's pub/sub would not order with the master's writes)."""
        if self._sentinel is None or self.sentinels is None:
            conn = Connection(
                **parse_url(self.url),
                protocol=2,  # pub/sub messages as plain arrays, read in order with replies
                socket_connect_timeout=self._connect_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py lacks a hint
            return conn
        host, port = await self._sentinel.discover_master(self.sentinels.master)
        kwargs: dict[str, Any] = dict(parse_url(self.url))
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        # TLS (rediss://): parse_url names SSLConnection.
        connection_class: type[Connection] = kwargs.pop("connection_class", Connection)
        master = connection_class(
            **kwargs,
            host=host,
            port=port,
            protocol=2,
            socket_connect_timeout=self._connect_timeout,
            socket_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        await master.connect()  # type: ignore[no-untyped-call]  # redis-py lacks a hint
        await master.send_command("ROLE")
        role: Any = await master.read_response()
        if not role or role[0] != b"master":
            await master.disconnect()
            raise RedisConnectionError(f"{host}:{port} is not the master (yet)")
        return master

    async def _drop_connection(self) -> None:
        self._connected.clear()
        conn, self._conn = self._conn, None
        while self._pongs:
            fut = self._pongs.popleft()
            if not fut.done():
                fut.set_exception(BrokerUnavailable("redis subscriber connection lost"))
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _run_subscriber(self) -> None:
        delay = 0.05
        first = True
        while not self._closing:
            try:
                conn = await self._subscriber_connection()
                self._conn = conn
                channels = set(self._channels)
                if channels:
                    await conn.send_command(
                        "SUBSCRIBE", *(self._pubsub_channel(c) for c in channels)
                    )
                self._connected.set()
                if not first:
                    log.warning(
                        "redis subscriber reconnected", url=self.url, channels=len(channels)
                    )
                    # Idle pooled connections may be to the server that went away: drop
                    # them, or the resubscribes the resync triggers fail on them one by one.
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
                    if self._handler is not None:
                        self._handler.on_resync(channels)
                first = False
                delay = 0.05
                await self._read_loop(conn)
            except asyncio.CancelledError:
                raise
            except (*_UNAVAILABLE, RedisError) as exc:
                if self._connected.is_set() or first:
                    log.error(
                        "redis subscriber connection lost; node is deaf until it is back",
                        url=self.url,
                        error=str(exc),
                    )
                first = False
                await self._drop_connection()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async def _read_loop(self, conn: Connection) -> None:
        prefix = f"{self._prefix}.ch."
        cut = len(prefix)
        while True:
            response: Any = await conn.read_response(timeout=math.inf)
            # A PING is answered ["pong", ""] while the connection subscribes to something,
            # and +PONG once it subscribes to nothing (after the last UNSUBSCRIBE).
            kind = response[0] if isinstance(response, list) else response
            if kind == b"message":
                self._dispatch(response[1][cut:].decode(), response[2])
            elif kind in (b"pong", b"PONG") and self._pongs:
                fut = self._pongs.popleft()
                if not fut.done():
                    fut.set_result(None)
            # subscribe / unsubscribe confirmations need no action

    def _dispatch(self, channel: str, message: bytes) -> None:
        if self._handler is not None:
            dispatch(self._handler, channel, message)

    async def _barrier(self) -> None:
        """Wait until the subscriber connection has handed over everything Redis sent it
        before now (a PING answered in order after all earlier messages; the barriers
        and subscribes of one loop iteration share one PING, see :meth:`_send_controls`)."""
        if self._conn is None:
            raise BrokerUnavailable("redis subscriber connection is down")
        await self._control.call((_PING, ""))

    async def _send_controls(self, controls: list[_Control]) -> list[BaseException | None]:
        """Send what the subscriber connection was asked for during one loop iteration,
        in call order, as one write: runs of SUBSCRIBE (or UNSUBSCRIBE) merged into one
        command of many channels, then one PING if anyone waits for a barrier. A
        subscribe returns once that PING is answered: Redis answers it after confirming
        every SUBSCRIBE before it, and after sending every message published before it
        (which is also what a barrier waits for). An unsubscribe returns once written,
        as it did alone. Raises BrokerUnavailable (for the whole batch) if it cannot be
        sent; a PING that is not answered in time fails the subscribes and barriers."""
        conn = self._conn
        if conn is None:
            raise BrokerUnavailable("redis subscriber connection is down")
        commands: list[list[str]] = []
        for kind, channel in controls:
            if kind == _PING:
                continue
            name = self._pubsub_channel(channel)
            if commands and commands[-1][0] == kind:
                commands[-1].append(name)
            else:
                commands.append([kind, name])
        pong: asyncio.Future[None] | None = None
        if any(kind != _UNSUBSCRIBE for kind, _ in controls):
            commands.append([_PING])
            pong = asyncio.get_running_loop().create_future()
            # Appended in the same step as the write below (nothing awaits in between on
            # a connected connection), so the pongs stay in the order of the PINGs.
            self._pongs.append(pong)
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis subscriber: {exc}") from None
        results: list[BaseException | None] = [None] * len(controls)
        if pong is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pong), self._timeout)
            except (*_UNAVAILABLE, TimeoutError, BrokerUnavailable) as exc:
                error = (
                    exc
                    if isinstance(exc, BrokerUnavailable)
                    else BrokerUnavailable(f"redis subscriber: {exc}")
                )
                results = [None if kind == _UNSUBSCRIBE else error for kind, _ in controls]
        return results

    async def _read_stream(self, keys: list[str], args: list[str | int]) -> Any:
        return await self._reads.call((keys, args))

    async def _read_streams(self, calls: list[_Script]) -> list[Any]:
        """Every stream read of one batch (each a history script call, KEYS ``[history,
        meta]``, ARGV ``[new epoch, meta ttl ms]``), as calls of the many-streams script
        of up to ``_READS_PER_SCRIPT`` streams each, in one pipeline: a connect storm
        reads thousands of streams, and each command costs redis-py a round of packing,
        parsing and timeouts. Each stream's reply is exactly what the history script
        alone returns (the same steps, fence included); a stream whose read failed gets
        its own error, and a call that failed whole fails the reads it carried."""
        chunks = [calls[i : i + _READS_PER_SCRIPT] for i in range(0, len(calls), _READS_PER_SCRIPT)]
        scripts: list[_Script] = []
        for chunk in chunks:
            keys = [key for stream_keys, _ in chunk for key in stream_keys]
            meta_ttl_ms = chunk[0][1][1]
            scripts.append((keys, [meta_ttl_ms, *(args[0] for _, args in chunk)]))
        replies = await self._run_scripts(self._history_many_script, scripts)
        out: list[Any] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, BaseException):
                out.extend([reply] * len(chunk))
            elif len(reply) != len(chunk):
                error = ResponseError(f"history: {len(reply)} replies for {len(chunk)} reads")
                out.extend([error] * len(chunk))
            else:
                out.extend(reply)
        return out

    # -- Broker -----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if self._conn is None:
            raise BrokerUnavailable("redis subscriber connection is down")
        await self._control.call((_SUBSCRIBE, channel))

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._conn is None:
            return  # resubscription after the reconnect leaves it out
        await self._control.call((_UNSUBSCRIBE, channel))

    _label = "redis"
    _unavailable = _UNAVAILABLE

    async def _send_control(self, pubsub_channel: str, message: bytes) -> None:
        await self._redis.publish(pubsub_channel, message)

    async def _delivery_barrier(self, channel: str) -> None:
        await self._barrier()

    async def _publish_and_wait(
        self, keys: list[str], args: list[bytes | str | int], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._publish_script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            reply, acked = await pipe.execute()
        return reply, int(acked)

    async def publish_many(self, items: Sequence[PublishItem]) -> list[PublishResult]:
        """The publish script for every item, pipelined on one connection (see the module
        docstring). With ``wait_replicas``, one by one (each waits for its replicas)."""
        if len(items) < 2 or any(item.options.wait_replicas > 0 for item in items):
            return [await self.publish(*item) for item in items]
        calls = [
            publish_call(
                self._keys,
                item.channel,
                self._pubsub_channel(item.channel),
                item.publication,
                item.options,
                self._meta_ttl_ms,
            )
            for item in items
        ]
        replies = await self._run("publish", self._run_scripts(self._publish_script, calls))
        for reply in replies:
            if isinstance(reply, ResponseError):
                if refused_for_now(reply):
                    raise BrokerUnavailable(f"redis publish: {reply}")
                raise reply
        return [publish_result(reply) for reply in replies]

    async def _run_scripts(self, script: Any, calls: Sequence[_Script]) -> list[Any]:
        """Run ``script`` once per call, in order, in one pipeline (EVALSHA: a Script
        object in a pipeline costs a SCRIPT EXISTS round trip per execute). Calls the
        server did not run for want of the script (a restarted or promoted server's
        cache is empty) are sent again whole (EVAL), in order. An error reply is left in
        its call's place; a lost connection raises."""
        replies = await self._pipeline_evals(
            [(script.sha, keys, args) for keys, args in calls], command="EVALSHA"
        )
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            again = await self._pipeline_evals(
                [(script.script, *calls[i]) for i in missing], command="EVAL"
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline_evals(
        self, evals: list[tuple[Any, list[str], list[Any]]], *, command: str
    ) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script, keys, args in evals:
                pipe.execute_command(command, script, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def channels(self) -> set[str]:
        prefix = f"{self._prefix}.ch."
        try:
            names = await self._redis.pubsub_channels(f"{prefix}*")
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis channels: {exc}") from None
        return {(n.decode() if isinstance(n, bytes) else n)[len(prefix) :] for n in names}


class RedisPresenceStore(PresenceCommands):
    """:class:`~tether.brokers.base.PresenceStore` on one Redis server (see
    :class:`~tether.brokers.redis_common.PresenceCommands`)."""

    _label = "redis"
    _unavailable = _UNAVAILABLE

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tether",
        ttl: float = 60,
        command_timeout: float = 2.0,
        max_connections: int = 64,
        sentinels: Sentinels | None = None,
    ) -> None:
        self._sentinel = (
            _sentinel(sentinels, command_timeout=command_timeout, connect_timeout=command_timeout)
            if sentinels is not None
            else None
        )
        self._redis = _client(
            url,
            command_timeout=command_timeout,
            connect_timeout=command_timeout,
            max_connections=max_connections,
            sentinel=self._sentinel,
            master=sentinels.master if sentinels is not None else "",
        )
        self._init_presence(prefix, ttl)

    async def close(self) -> None:
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()
