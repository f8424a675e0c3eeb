"""What the single-server and the Redis Cluster brokers share: the Lua scripts, the key
layout, how publications and client infos are stored, and how a pub/sub message becomes a
handler call. Both brokers store a channel identically; only how commands reach a server
and how the subscriber side listens differ (:mod:`tether.brokers.redis`,
:mod:`tether.brokers.redis_cluster`).

Every key of a channel ``CH`` carries the hash tag ``{CH}``, so in a Redis Cluster they all
live in one slot, and the publish script (whose keys all name that slot) runs on the
slot's master.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tether.brokers.base import (
    BrokerEventHandler,
    HistoryPage,
    PublishOptions,
    PublishResult,
    StreamPosition,
    select_history,
)
from tether.errors import BrokerUnavailable
from tether.protocol.messages import ClientInfo, Publication
from tether.randomness import random_hex

log = structlog.get_logger("tether.redis")

_T = TypeVar("_T")

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors that mean "Redis cannot be reached now" (raised as BrokerUnavailable)."""

_REFUSALS = ("READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING")


def refused_for_now(exc: ResponseError) -> bool:
    """A reply meaning "this server cannot take the command now", so unavailable rather
    than a bug: a server that became a replica in a failover (``READONLY``), too few
    replicas for ``min-replicas-to-write`` (``NOREPLICAS``), a replica cut off from its
    primary (``MASTERDOWN``), a restart still loading its data (``LOADING``). Nothing
    was written: a script stops at its first refused write, before it changed anything
    (the fence and the stream's writes come after the first write is allowed)."""
    return isinstance(exc, ReadOnlyError) or str(exc).startswith(_REFUSALS)


_STREAM_EPOCH = """
-- The fence (docs/explanation/recovery.md, "Fencing"). A stream's meta hash records in
-- "r" the replication ID of the server that wrote it. Redis draws a new replication ID
-- whenever a server may have a history its replicas never had, or lack one they had: a
-- replica promoted to primary (REPLICAOF NO ONE, Sentinel, CLUSTER FAILOVER) and a
-- restart both change it, before the server takes its first write. A stream last written
-- under another ID may have lost acknowledged publications, so before anything is stored
-- it gets a new epoch ("e"), and keeps the epoch it had ("pe") with the top offset this
-- server holds of it ("pb"): up to there both epochs hold the same publications.
-- Every script that reads or writes a stream runs this first, so the first touch of a
-- stream on a promoted server fences it, whichever node sends it.
local function stream_epoch(meta, new_epoch)
  local info = redis.call("info", "replication")
  local run = string.match(info, "master_replid:(%x+)")
  local stored = redis.call("hmget", meta, "e", "r")
  local epoch = stored[1]
  if not epoch then
    redis.call("hset", meta, "e", new_epoch, "r", run)
    return new_epoch, true
  end
  if stored[2] ~= run then
    local top = redis.call("hget", meta, "s") or "0"
    redis.call("hset", meta, "e", new_epoch, "r", run, "pe", epoch, "pb", top)
    return new_epoch, false
  end
  return epoch, false
end
"""

_PUBLISH = (
    _STREAM_EPOCH
    + """
-- KEYS: 1 history list, 2 meta hash, 3 idempotency key (or the meta key when unused)
-- ARGV: 1 pubsub channel, 2 publication json, 3 history size, 4 history ttl ms,
--       5 meta ttl ms, 6 epoch for a new stream, 7 idempotency ttl ms, 8 "1" if idempotent,
--       9 "d" to deliver it as a delta (the pub/sub message only; the stream never has it)
if ARGV[8] == "1" then
  local seen = redis.call("get", KEYS[3])
  if seen then return {seen, 1} end
end
local size = tonumber(ARGV[3])
local offset = 0
local epoch = ""
if size > 0 then
  epoch = stream_epoch(KEYS[2], ARGV[6])
  offset = redis.call("hincrby", KEYS[2], "s", 1)
  redis.call("rpush", KEYS[1], offset .. " " .. ARGV[2])
  redis.call("ltrim", KEYS[1], -size, -1)
  redis.call("pexpire", KEYS[1], ARGV[4])
  redis.call("pexpire", KEYS[2], ARGV[5])
end
redis.call("publish", ARGV[1], "p" .. offset .. ARGV[9] .. " " .. ARGV[2])
local result = offset .. " " .. epoch
if ARGV[8] == "1" then redis.call("set", KEYS[3], result, "px", ARGV[7]) end
return {result, 0}
"""
)


def publish_script(command: Literal["publish", "spublish"]) -> str:
    """The publish script, delivering with ``command``: ``publish`` for one server,
    ``spublish`` for a Redis Cluster (sharded pub/sub: the message reaches only the
    subscribers of the slot's shard, and the channel must hash to the keys' slot)."""
    return _PUBLISH.replace('redis.call("publish",', f'redis.call("{command}",')


HISTORY_SCRIPT = (
    _STREAM_EPOCH
    + """
-- KEYS: 1 history list, 2 meta hash.  ARGV: 1 epoch for a new stream, 2 meta ttl ms
local epoch, created = stream_epoch(KEYS[2], ARGV[1])
if created then redis.call("pexpire", KEYS[2], ARGV[2]) end
local meta = redis.call("hmget", KEYS[2], "s", "pe", "pb")
return {meta[1] or "0", epoch, redis.call("lrange", KEYS[1], 0, -1), meta[2] or "", meta[3] or "0"}
"""
)

HISTORY_MANY_SCRIPT = (
    _STREAM_EPOCH
    + """
-- What HISTORY_SCRIPT returns, for many streams of one server in one call (the stream
-- reads of a connect storm: one command instead of one per stream).
-- KEYS: per stream, its history list then its meta hash.
-- ARGV: 1 meta ttl ms, then per stream the epoch for it if it is new.
-- Returns one reply per stream, in order; a stream whose read failed gets its error
-- reply in its place, and the others are read all the same.
local function read(history, meta, new_epoch)
  local epoch, created = stream_epoch(meta, new_epoch)
  if created then redis.call("pexpire", meta, ARGV[1]) end
  local m = redis.call("hmget", meta, "s", "pe", "pb")
  return {m[1] or "0", epoch, redis.call("lrange", history, 0, -1), m[2] or "", m[3] or "0"}
end
local out = {}
for i = 1, #KEYS / 2 do
  local ok, reply = pcall(read, KEYS[2 * i - 1], KEYS[2 * i], ARGV[i + 1])
  if ok then
    out[i] = reply
  elseif type(reply) == "table" and reply.err then
    out[i] = reply
  else
    out[i] = redis.error_reply("ERR " .. tostring(reply))
  end
end
return out
"""
)

encoder = msgspec.json.Encoder()


class StreamKeys:
    """Key names of a channel's stream under ``prefix`` (see :mod:`tether.brokers.redis`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.meta.{{{channel}}}"

    def history(self, channel: str) -> str:
        return f"{self.prefix}.history.{{{channel}}}"

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.prefix}.idem.{{{channel}}}.{key}"

    def presence(self, channel: str) -> tuple[str, str]:
        """The presence entries hash and their expiry sorted set."""
        return (
            f"{self.prefix}.presence.{{{channel}}}",
            f"{self.prefix}.presence.exp.{{{channel}}}",
        )


def publish_call(
    keys: StreamKeys,
    channel: str,
    pubsub_channel: str,
    publication: Publication,
    options: PublishOptions,
    meta_ttl_ms: int,
) -> tuple[list[str], list[bytes | str | int]]:
    """KEYS and ARGV of the publish script for one publish."""
    idempotent = bool(options.idempotency_key)
    meta = keys.meta(channel)
    script_keys = [
        keys.history(channel),
        meta,
        keys.idempotency(channel, options.idempotency_key) if idempotent else meta,
    ]
    args: list[bytes | str | int] = [
        pubsub_channel,
        encoder.encode(publication),
        options.history_size,
        max(1, int(options.history_ttl * 1000)),
        max(meta_ttl_ms, int(options.history_ttl * 1000)),
        random_hex(4),
        max(1, int(options.idempotency_ttl * 1000)),
        "1" if idempotent else "0",
        "d" if options.delta else "",
    ]
    return script_keys, args


def publish_result(reply: Any) -> PublishResult:
    """The publish script's reply (``[b"<offset> <epoch>", duplicate]``) as a result."""
    result, duplicate = reply
    offset, _, epoch = result.decode().partition(" ")
    return PublishResult(StreamPosition(int(offset), epoch), duplicate=bool(duplicate))


def history_call(
    keys: StreamKeys, channel: str, meta_ttl_ms: int
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the history script."""
    return [keys.history(channel), keys.meta(channel)], [random_hex(4), meta_ttl_ms]


def history_page(
    reply: Any,
    *,
    since: StreamPosition | None,
    limit: int,
    reverse: bool,
) -> HistoryPage:
    """The history script's reply, with the history rules applied (may raise
    UnrecoverablePosition)."""
    top_raw, epoch_raw, items, fence_epoch, fence_top = reply
    top = StreamPosition(int(top_raw), epoch_raw.decode())
    fence = StreamPosition(int(fence_top), fence_epoch.decode()) if fence_epoch else None
    publications = []
    for item in items:
        space = item.index(b" ")
        publications.append(decode_publication(item[space + 1 :], int(item[:space])))
    return select_history(publications, top, since=since, limit=limit, reverse=reverse, fence=fence)


# msgspec cannot decode into ``Raw | None`` (ClientInfo.conn_info/chan_info), so what comes
# back from Redis is decoded into these mirrors, where an absent field is an empty Raw.
class _StoredInfo(msgspec.Struct):
    user: str = ""
    client: str = ""
    conn_info: msgspec.Raw = msgspec.Raw()
    chan_info: msgspec.Raw = msgspec.Raw()

    def to_info(self) -> ClientInfo:
        return ClientInfo(
            user=self.user,
            client=self.client,
            conn_info=self.conn_info or None,
            chan_info=self.chan_info or None,
        )


class _StoredPublication(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw(b"null")
    info: _StoredInfo | None = None
    tags: dict[str, str] | None = None
    time: int = 0


_pub_decoder = msgspec.json.Decoder(_StoredPublication)
_info_decoder = msgspec.json.Decoder(_StoredInfo)


def decode_publication(raw: bytes, offset: int) -> Publication:
    stored = _pub_decoder.decode(raw)
    info = stored.info.to_info() if stored.info is not None else None
    return Publication(
        data=stored.data, info=info, offset=offset, tags=stored.tags, time=stored.time
    )


def decode_info(raw: bytes) -> ClientInfo:
    return _info_decoder.decode(raw).to_info()


def dispatch(handler: BrokerEventHandler, channel: str, message: bytes) -> None:
    """Hand one pub/sub message of ``channel`` (``p<offset> <json>``, or ``p<offset>d
    <json>`` for a publication to deliver as a delta; ``j<json>``, ``l<json>``) to
    ``handler``. A node of an older version reads the ``d`` form as a message it cannot
    take: its subscribers resync from the stream, nothing is lost silently."""
    kind = message[:1]
    try:
        if kind == b"p":
            space = message.index(b" ")
            head = message[1:space]
            delta = head.endswith(b"d")
            publication = decode_publication(
                message[space + 1 :], int(head[:-1] if delta else head)
            )
            if delta:
                publication.delta = True
            handler.on_publication(channel, publication)
        elif kind == b"j":
            handler.on_join(channel, decode_info(message[1:]))
        elif kind == b"l":
            handler.on_leave(channel, decode_info(message[1:]))
    except Exception:
        # A message this node cannot take (a bug, or a node of another version on the
        # same prefix) must neither kill the subscriber loop nor vanish: the channel's
        # subscribers are told to recover from the stream.
        log.exception("redis message not delivered; channel resyncs", channel=channel)
        handler.on_resync({channel})


class StreamCommands:
    """The Broker methods whose Redis commands are the same on one server and on a Cluster.

    A subclass provides the client (``_redis``), the registered scripts, the keys, its
    error label and the exceptions that mean "unavailable", and two hooks: how a
    join/leave message is published (PUBLISH or SPUBLISH) and the delivery barrier that
    keeps ``history`` from running ahead of delivery (Broker contract).
    """

    _label: str
    _unavailable: tuple[type[BaseException], ...]
    _keys: StreamKeys
    _meta_ttl_ms: int
    _channels: set[str]
    _redis: Any
    _publish_script: Any
    _history_script: Any

    def _pubsub_channel(self, channel: str) -> str:
        raise NotImplementedError

    async def _send_control(self, pubsub_channel: str, message: bytes) -> None:
        raise NotImplementedError

    async def _delivery_barrier(self, channel: str) -> None:
        """Return once everything Redis sent for ``channel`` before now was handed over."""
        raise NotImplementedError

    async def _publish_and_wait(
        self, keys: list[str], args: list[bytes | str | int], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """Run the publish script and ``WAIT replicas timeout_ms`` on one connection (WAIT
        counts the replicas that have that connection's writes). Returns the script's
        reply and how many replicas acknowledged."""
        raise NotImplementedError

    def _unavailable_error(self, what: str, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"{self._label} {what}: {exc}")

    async def _call_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script. redis-py loads a script a server does not know and
        runs it again, but a master promoted a moment ago (its script cache is empty:
        Redis does not replicate it) may still miss it if the load went by an older slot
        map; then the script is sent whole (EVAL), which also caches it there."""
        try:
            return await script(keys=keys, args=args)
        except NoScriptError:
            return await self._redis.eval(script.script, len(keys), *keys, *args)

    async def _read_stream(self, keys: list[str], args: list[str | int]) -> Any:
        """The history script's reply for one stream (a subclass may batch the reads of
        many streams: :class:`tether.brokers.redis.RedisBroker` does)."""
        return await self._call_script(self._history_script, keys, args)

    async def _run(self, what: str, command: Awaitable[_T]) -> _T:
        """Await a command; what means "unavailable" (a lost connection, a refusal for
        now, see :func:`refused_for_now`) raises BrokerUnavailable."""
        try:
            return await command
        except self._unavailable as exc:
            raise self._unavailable_error(what, exc) from None
        except ResponseError as exc:
            if refused_for_now(exc):
                raise self._unavailable_error(what, exc) from None
            raise

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        keys, args = publish_call(
            self._keys,
            channel,
            self._pubsub_channel(channel),
            publication,
            options,
            self._meta_ttl_ms,
        )
        if options.wait_replicas <= 0:
            reply = await self._run("publish", self._call_script(self._publish_script, keys, args))
            return publish_result(reply)
        reply, acked = await self._run(
            "publish",
            self._publish_and_wait(
                keys, args, options.wait_replicas, max(1, int(options.wait_timeout * 1000))
            ),
        )
        result = publish_result(reply)
        if acked < options.wait_replicas:
            raise BrokerUnavailable(
                f"{self._label} publish: stored at {result.position.offset} but held by "
                f"{acked} of {options.wait_replicas} replicas after {options.wait_timeout}s "
                "(a failover may lose it; retry with the same idempotency key)"
            )
        return result

    async def _publish_control(self, channel: str, kind: bytes, info: ClientInfo) -> None:
        await self._run(
            "publish",
            self._send_control(self._pubsub_channel(channel), kind + encoder.encode(info)),
        )

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_control(channel, b"j", info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_control(channel, b"l", info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        keys, args = history_call(self._keys, channel, self._meta_ttl_ms)
        reply = await self._run("history", self._read_stream(keys, args))
        # Never run ahead of delivery: every publication up to the top read here must have
        # been handed over first. A stream at offset 0 has none (a new channel: half the
        # barriers of a connect storm), so there is nothing to wait for.
        if channel in self._channels and reply[0] not in (b"0", 0):
            await self._delivery_barrier(channel)
        return history_page(reply, since=since, limit=limit, reverse=reverse)

    async def remove_history(self, channel: str) -> None:
        await self._run("history_remove", self._redis.delete(self._keys.history(channel)))


class PresenceCommands:
    """The PresenceStore over Redis, on one server or a Cluster: per channel a hash of
    entries and a sorted set of their expiry times (both in the channel's slot). Every call
    is one script, timed by the Redis server's own clock (``TIME`` in the script), so
    nodes' and masters' clocks need not agree. Entries not re-added within ``ttl`` seconds
    vanish, so a dead node's clients disappear from presence.

    A subclass sets ``_redis`` (a client or a cluster client), ``_label``, ``_unavailable``
    and calls :meth:`_init_presence`.
    """

    _NOW = """
    local t = redis.call("time")
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    """
    _ADD = (
        _NOW
        + """
    -- KEYS: 1 entries hash, 2 expiry zset.  ARGV: 1 client id, 2 info json, 3 ttl ms
    redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
    redis.call("zadd", KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
    redis.call("pexpire", KEYS[1], ARGV[3])
    redis.call("pexpire", KEYS[2], ARGV[3])
    return 1
    """
    )
    _REMOVE = """
    -- KEYS: 1 entries hash, 2 expiry zset.  ARGV: 1 client id
    redis.call("hdel", KEYS[1], ARGV[1])
    redis.call("zrem", KEYS[2], ARGV[1])
    return 1
    """
    _GET = (
        _NOW
        + """
    -- KEYS: 1 entries hash, 2 expiry zset
    local expired = redis.call("zrangebyscore", KEYS[2], "-inf", now)
    if #expired > 0 then
      redis.call("zremrangebyscore", KEYS[2], "-inf", now)
      redis.call("hdel", KEYS[1], unpack(expired))
    end
    return redis.call("hgetall", KEYS[1])
    """
    )

    _label: str
    _unavailable: tuple[type[BaseException], ...]
    _redis: Any
    ttl: float | None

    def _init_presence(self, prefix: str, ttl: float) -> None:
        self.ttl = ttl
        self._ttl_ms = int(ttl * 1000)
        self._presence_keys = StreamKeys(prefix)
        self._add_script = self._redis.register_script(self._ADD)
        self._remove_script = self._redis.register_script(self._REMOVE)
        self._get_script = self._redis.register_script(self._GET)

    @property
    def _failures(self) -> tuple[type[BaseException], ...]:
        return (*self._unavailable, ResponseError)

    def _unavailable_presence(self, exc: BaseException) -> BaseException:
        """BrokerUnavailable for what means unavailable; any other error reply as is."""
        if isinstance(exc, ResponseError) and not refused_for_now(exc):
            return exc
        return BrokerUnavailable(f"{self._label} presence: {exc}")

    async def add(self, channel: str, client_id: str, info: ClientInfo) -> None:
        try:
            await self._add_script(
                keys=self._presence_keys.presence(channel),
                args=[client_id, encoder.encode(info), self._ttl_ms],
            )
        except self._failures as exc:
            raise self._unavailable_presence(exc) from None

    async def remove(self, channel: str, client_id: str) -> None:
        try:
            await self._remove_script(keys=self._presence_keys.presence(channel), args=[client_id])
        except self._failures as exc:
            raise self._unavailable_presence(exc) from None

    async def get(self, channel: str) -> dict[str, ClientInfo]:
        try:
            raw = await self._get_script(keys=self._presence_keys.presence(channel), args=[])
        except self._failures as exc:
            raise self._unavailable_presence(exc) from None
        pairs = iter(raw)
        return {k.decode(): decode_info(v) for k, v in zip(pairs, pairs, strict=True)}

    async def stats(self, channel: str) -> tuple[int, int]:
        entries = await self.get(channel)
        return len(entries), len({info.user for info in entries.values()})
