"""The node: ties the broker, presence, the hub and the connected clients together.

Everything the server API and the client sessions do to channels goes through here, so the
rules (namespaces, recovery, presence, join/leave) live in one place. The node owns every
background task it starts (:meth:`Node.spawn`) and cancels them on :meth:`Node.close`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import structlog

from tether import __version__
from tether.brokers.base import Broker, PresenceStore, PublishOptions, PublishResult, StreamPosition
from tether.config import Config, NamespaceConfig
from tether.core.admission import Admission
from tether.core.client import FLAG_REJECT_UNRECOVERED, Client, Subscription
from tether.core.hub import Hub
from tether.core.lanes import Lane, LaneGate
from tether.core.outbound import OverflowPolicy, QueueLimits
from tether.core.recovery import RecoveryCache, recover
from tether.core.registry import Registry
from tether.core.transport import (
    Cadence,
    ClientTransport,
    Flusher,
    TransportLimits,
    WireFormat,
)
from tether.errors import BrokerUnavailable, ClientError
from tether.protocol.channels import check_channel_name, namespace_of
from tether.protocol.codes import DisconnectCode, DisconnectInfo, ErrorCode, UnsubscribeCode
from tether.protocol.messages import (
    ClientInfo,
    HistoryResult,
    Join,
    Leave,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    Push,
    Subscribe,
    SubscribeRequest,
    SubscribeResult,
    Unsubscribe,
)
from tether.protocol.messages import StreamPosition as WirePosition
from tether.protocol.session import ConnectionState, SubscriptionEvent

log = structlog.get_logger("tether.node")

COALESCE_TAG = "coalesce_key"
"""Publication tag carrying an ephemeral publication's coalescing key."""


class Node:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        presence: PresenceStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.broker = broker
        self.presence_store = presence
        self.clock = clock
        self.name = config.node_name or f"{socket.gethostname()}-{os.getpid()}"
        self.hub = Hub()
        self.recovery = RecoveryCache(broker, clock)
        self.registry: Registry[Client] = Registry(
            ping_interval=config.ping_interval,
            pong_timeout=config.pong_timeout,
            connect_timeout=config.connect_timeout,
            expired_close_delay=config.expired_close_delay,
            max_per_user=config.max_connections_per_user,
            clock=clock,
        )
        """Every connection of this node, with its pings and expiries."""
        self.started_at = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue_limits: QueueLimits | None = None
        self.admission = Admission(
            max_connections=config.max_connections,
            connects_per_second=config.max_connects_per_second,
            connects_burst=config.max_connects_burst,
            max_per_ip=config.max_connections_per_ip,
            clock=clock,
        )
        self.lanes = LaneGate(config.lane_publish_limits)
        """Publishes in flight per lane; ``lanes.shed``: refused because it was full."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._leaving: dict[tuple[str, str], asyncio.Task[None]] = {}
        """(channel, client id) -> the task finishing that subscription's leave."""
        self.closing = False
        self.started = False
        self._transport_limits = TransportLimits(
            max_message_size=config.max_message_size,
            allowed_origins=frozenset(config.allowed_origins),
        )
        self.loop_lag = 0.0
        """Seconds the last once-a-second housekeeping tick woke up late: how long ready
        callbacks (fan-out, flushes, requests) waited for the event loop."""

    # -- lifecycle --------------------------------------------------------------------

    @property
    def clients(self) -> dict[str, Client]:
        """Connected clients by client ID (the registry's)."""
        return self.registry.clients

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "node not started"
        return self._loop

    @property
    def queue_limits(self) -> QueueLimits:
        """What every client's outbound queue shares (bounds, the flusher, counters)."""
        assert self._queue_limits is not None, "node not started"
        return self._queue_limits

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        flusher = Flusher(loop.call_soon, loop.call_later, max_delay=self.config.flush_max_delay)
        flusher.on_tick_end(self.hub.end_tick)
        cadence = Cadence(
            self.hub.flush_ephemeral,
            loop.call_soon,
            loop.call_later,
            interval=self.config.ephemeral_window,
            clock=loop.time,
        )
        self.hub.use_ephemeral_cadence(cadence.request)
        policy = OverflowPolicy(
            max_bytes=self.config.outbound_queue_bytes,
            max_ephemeral_bytes=self.config.ephemeral_queue_bytes,
            clock=self.clock,
        )
        self._queue_limits = QueueLimits(
            policy=policy,
            flusher=flusher,
            call_soon=loop.call_soon,
            stats=self.hub.stats,
        )
        await self.broker.start(self)
        self.spawn(self._housekeeping(), "housekeeping")
        if self.presence_store.ttl is not None:
            self.spawn(self._refresh_presence(self.presence_store.ttl / 3), "presence-refresh")
        self.started = True

    async def close(self, code: DisconnectInfo = DisconnectCode.SHUTDOWN) -> None:
        """Close every client with ``code`` (reconnect advice), then stop the broker."""
        self.closing = True
        for client in self.registry.everyone():
            client.close(code)
        await asyncio.sleep(0)  # let the last writes and cleanup tasks start
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.broker.close()
        await self.presence_store.close()

    async def drain(self, window: float, code: DisconnectInfo = DisconnectCode.SHUTDOWN) -> None:
        """Graceful drain: stop accepting (``ready`` turns false, upgrades get 503), then
        close every client with ``code`` (3001: reconnect elsewhere), flushing what is
        queued, in equal batches spread over ``window`` seconds so that the clients do not
        all reconnect in the same instant. Cancel it to close the rest at once."""
        self.closing = True
        clients = self.registry.everyone()
        if not clients:
            return
        steps = max(1, min(len(clients), int(window * 20)))  # at most 20 batches a second
        per_step = -(-len(clients) // steps)
        try:
            for start in range(0, len(clients), per_step):
                for client in clients[start : start + per_step]:
                    client.close(code)
                if start + per_step < len(clients):
                    await asyncio.sleep(window / steps)
        finally:
            for client in clients:
                client.close(code)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the node owns: cancelled on close, failures logged with
        their traceback (they end only that task, never the node)."""
        task = self.loop.create_task(coro, name=what)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), exc_info=task.exception())

    # -- the transports' side (core.transport.Gateway) -------------------------------

    @property
    def accepting(self) -> bool:
        return not self.closing

    @property
    def limits(self) -> TransportLimits:
        return self._transport_limits

    def admit(self, ip: str) -> int | None:
        return self.admission.admit(ip)

    def release(self, ip: str) -> None:
        self.admission.release(ip)

    def open_session(self, transport: ClientTransport, wire_format: WireFormat) -> Client:
        """A transport finished its handshake: a new client speaking ``wire_format``,
        awaiting ``connect``."""
        client = Client(self, transport, wire_format)
        self.registry.add_connecting(client)
        return client

    def claim_user(self, client: Client, user: str) -> None:
        self.registry.claim_user(client, user)

    def release_user(self, client: Client) -> None:
        self.registry.release_user(client)

    def register(self, client: Client) -> None:
        self.registry.register(client)

    def forget(self, client: Client) -> None:
        """``client`` is closed: drop it everywhere, leave its channels."""
        self.registry.forget(client)
        subs, client.subs = client.subs, {}
        for sub in subs.values():
            sub.on(SubscriptionEvent.LEFT)
            self.leave_channel(client, sub)

    def track_expiry(self, client: Client) -> None:
        self.registry.track_expiry(client)

    def track_sub_expiry(self, client: Client, channel: str, expire_at: float | None) -> None:
        self.registry.track_sub_expiry(client, channel, expire_at)

    async def _housekeeping(self) -> None:
        """Once a second: pings (one bucket of clients per second, so a node's pings are
        spread over the ping interval), pong deadlines, stale and expired connections.
        How late each tick wakes up is the event loop's lag (:attr:`loop_lag`)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 1
            await asyncio.sleep(1)
            self.loop_lag = max(0.0, loop.time() - due)
            self.registry.tick()

    async def _refresh_presence(self, interval: float) -> None:
        """Re-add this node's presence entries before they expire in a shared store. A
        failed round is logged and retried next interval (entries may lapse meanwhile)."""
        while True:
            await asyncio.sleep(interval)
            try:
                for client in list(self.clients.values()):
                    for sub in list(client.subs.values()):
                        if sub.namespace.presence and client.state is ConnectionState.CONNECTED:
                            await self.presence_store.add(sub.channel, client.id, sub.info)
            except BrokerUnavailable as exc:
                log.warning("presence refresh failed", error=str(exc))

    # -- channels ---------------------------------------------------------------------

    def namespace(self, channel: str) -> NamespaceConfig:
        """Options of the channel's namespace. Raises ClientError (102, 107)."""
        check_channel_name(channel, max_length=self.config.max_channel_length)
        ns = self.config.namespace(namespace_of(channel))
        if ns is None:
            raise ClientError(ErrorCode.UNKNOWN_CHANNEL)
        return ns

    async def _ensure_broker_subscribed(self, channel: str, first: bool) -> None:
        if first:
            waiter = self.loop.create_future()
            self._subscribing[channel] = waiter
            try:
                await self.broker.subscribe(channel)
            finally:
                del self._subscribing[channel]
                waiter.set_result(None)
        elif channel in self._subscribing:
            # Another subscriber is making the broker subscription: reading the stream
            # before it is active could miss a publication.
            await asyncio.shield(self._subscribing[channel])

    async def join_channel(
        self, client: Client, sub: Subscription, request: SubscribeRequest
    ) -> tuple[SubscribeResult, int]:
        """Join ``client`` to ``sub.channel`` as pending and build its subscribe result.

        Returns the result and the offset it brings the client to. The caller sends the
        result, then makes the subscription live with :meth:`Hub.go_live`.
        """
        channel, ns = sub.channel, sub.namespace
        # Delta compression: granted when the namespace allows the type asked for; any
        # other request subscribes without it (the SDK then applies no delta).
        sub.delta = bool(request.delta) and request.delta in ns.allowed_delta_types
        first = self.hub.add_pending(channel, client, delta=sub.delta)
        leaving = self._leaving.get((channel, client.id))
        if leaving is not None:
            # The same client left this channel a moment ago: its presence remove and
            # leave push must land before this join's add and join push, or the late
            # remove deletes the new entry and the old leave follows the new join.
            await asyncio.wait([leaving])
        await self._ensure_broker_subscribed(channel, first)
        has_history = ns.history_size > 0
        recoverable = has_history and (ns.recover or request.recoverable)
        positioned = has_history and (recoverable or request.positioned)
        result = SubscribeResult()
        after = 0
        if positioned:
            if recoverable and request.recover:
                since = StreamPosition(request.offset, request.epoch)
                pubs, position, recovered = await recover(
                    self.recovery,
                    channel,
                    since,
                    cap=self.config.recovery_max_publications,
                    size=ns.history_size,
                    ttl=ns.history_ttl,
                )
                if not recovered and request.flag & FLAG_REJECT_UNRECOVERED:
                    raise ClientError(ErrorCode.UNRECOVERABLE_POSITION)
                if sub.delta:  # recovered publications are full, in the delta form
                    codec = client.wire_format.codec
                    pubs = [codec.delta_publication(p, None) for p in pubs]
                result.publications = pubs
                result.recovered = recovered
                result.was_recovering = True
            else:
                position = (await self.broker.history(channel, limit=0)).position
            result.recoverable = recoverable
            result.positioned = positioned
            result.offset, result.epoch = position.offset, position.epoch
            after = position.offset
        result.delta = sub.delta
        if ns.presence:
            await self.presence_store.add(channel, client.id, sub.info)
        if ns.join_leave:
            await self.broker.publish_join(channel, sub.info)
            sub.joined = True
        return result, after

    def leave_channel(self, client: Client, sub: Subscription) -> None:
        """Remove ``client`` from the channel now; presence, leave push and broker
        unsubscribe follow in a node-owned task."""
        self.hub.remove(sub.channel, client)
        key = (sub.channel, client.id)
        task = self.spawn(self._after_leave(sub, client.id), "leave")
        self._leaving[key] = task
        task.add_done_callback(lambda done: self._leave_done(key, done))

    def _leave_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._leaving.get(key) is task:
            del self._leaving[key]

    async def _after_leave(self, sub: Subscription, client_id: str) -> None:
        channel, ns = sub.channel, sub.namespace
        try:
            if ns.presence:
                await self.presence_store.remove(channel, client_id)
            if sub.joined:  # never a leave for a subscribe that failed before its join
                await self.broker.publish_leave(channel, sub.info)
        except BrokerUnavailable as exc:
            # Expected while the broker is away (no traceback: a storm of them would starve
            # the loop). The presence entry lapses after presence_ttl, since nobody
            # refreshes it; the leave push is lost (pushes are not recoverable). The broker
            # unsubscribe below must still happen.
            log.warning("leave not propagated", channel=channel, error=str(exc))
        # Checked right before the call (same tick): a subscriber that arrived meanwhile
        # keeps the broker subscription.
        if not self.hub.has_local(channel):
            self.recovery.drop(channel)
            await self.broker.unsubscribe(channel)

    # -- broker events (BrokerEventHandler) -------------------------------------------

    def _lane(self, channel: str) -> Lane:
        ns = self.config.namespace(namespace_of(channel))
        return Lane.named(ns.lane) if ns is not None else Lane.STANDARD

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.recovery.on_publication(channel, publication)
        ns = self.config.namespace(namespace_of(channel))
        lane = Lane.named(ns.lane) if ns is not None else Lane.STANDARD
        key = None
        if lane.coalesced and publication.tags:
            key = publication.tags.get(COALESCE_TAG)
        delta = ns is not None and ns.delta_publish
        self.hub.broadcast_publication(channel, publication, lane, key, delta=delta)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        push = Push(channel=channel, join=Join(info=info))
        self.hub.broadcast_push(channel, push, self._lane(channel))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        push = Push(channel=channel, leave=Leave(info=info))
        self.hub.broadcast_push(channel, push, self._lane(channel))

    def on_resync(self, channels: set[str]) -> None:
        """The broker may have missed publications of ``channels``: every local subscriber
        resubscribes and recovers from the stream. A client subscription gets an
        ``unsubscribe`` push with code 2500 (the SDK resubscribes with its position); a
        server-side one cannot be resubscribed by the client, so that connection is closed
        with 3010 (insufficient state) and recovers on reconnect."""
        for channel in channels:
            self.recovery.drop(channel)
            for client in self.hub.subscribers(channel):
                sub = client.subs.get(channel)
                if sub is None:
                    continue
                if sub.server_side:
                    client.close(DisconnectCode.INSUFFICIENT_STATE)
                else:
                    client.resubscribe(channel)
        log.warning("broker resync: subscribers told to recover", channels=len(channels))

    @property
    def ready(self) -> bool:
        """Accepting clients and able to deliver: started, not draining, broker healthy."""
        return self.started and not self.closing and self.broker.healthy

    # -- operations shared by the client protocol and the server API ------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        coalesce_key: str = "",
    ) -> PublishResult:
        """Publish raw JSON ``data``. Raises ClientError, BrokerUnavailable.

        ``skip_history`` delivers without storing (offset 0, not recoverable).
        ``coalesce_key`` (ephemeral lane only): frames with the same key replace each
        other within an ephemeral window and in a slow client's queue (newest wins).
        Refused with error 111 (temporary) before any work when the channel's lane
        already has its limit of publishes in flight (load shedding)."""
        ns = self.namespace(channel)
        lane = Lane.named(ns.lane)
        if not self.lanes.enter(lane):
            raise ClientError(ErrorCode.TOO_MANY_REQUESTS, f"{lane} lane is saturated")
        if coalesce_key and lane.coalesced:
            tags = {**(tags or {}), COALESCE_TAG: coalesce_key}
        publication = Publication(data=msgspec.Raw(data), info=info, tags=tags or None)
        options = PublishOptions(
            history_size=0 if skip_history else ns.history_size,
            history_ttl=ns.history_ttl,
            idempotency_key=idempotency_key,
            idempotency_ttl=self.config.idempotency_ttl,
        )
        try:
            return await self.broker.publish(channel, publication, options)
        finally:
            self.lanes.leave(lane)

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: WirePosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        ns = self.namespace(channel)
        if ns.history_size == 0:
            raise ClientError(ErrorCode.NOT_AVAILABLE, "history is off in this namespace")
        max_limit = self.config.history_max_limit
        limit = max_limit if limit < 0 or limit > max_limit else limit
        position = StreamPosition(since.offset, since.epoch) if since is not None else None
        page = await self.broker.history(channel, since=position, limit=limit, reverse=reverse)
        return HistoryResult(
            publications=page.publications,
            epoch=page.position.epoch,
            offset=page.position.offset,
        )

    async def remove_history(self, channel: str) -> None:
        self.namespace(channel)
        self.recovery.drop(channel)
        await self.broker.remove_history(channel)

    def _check_presence(self, channel: str) -> None:
        if not self.namespace(channel).presence:
            raise ClientError(ErrorCode.NOT_AVAILABLE, "presence is off in this namespace")

    async def presence(self, channel: str) -> PresenceResult:
        self._check_presence(channel)
        entries = await self.presence_store.get(channel)
        if len(entries) > self.config.max_presence_entries:
            raise ClientError(ErrorCode.LIMIT_EXCEEDED, "too many presence entries")
        return PresenceResult(presence=entries)

    async def presence_stats(self, channel: str) -> PresenceStatsResult:
        self._check_presence(channel)
        clients, users = await self.presence_store.stats(channel)
        return PresenceStatsResult(num_clients=clients, num_users=users)

    async def subscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Server-side subscribe every connection of ``user`` (or one client) to
        ``channel``: the client gets a ``subscribe`` push, then the channel's pushes."""
        self.namespace(channel)
        for client in self.registry.targets(user, client_id):
            if channel in client.subs or client.state is not ConnectionState.CONNECTED:
                continue
            result, after = await client.prepare_server_subscription(channel)
            push = Subscribe(
                recoverable=result.recoverable,
                epoch=result.epoch,
                offset=result.offset,
                positioned=result.positioned,
            )
            client.send_push(Push(channel=channel, subscribe=push))
            client.go_live(channel, after)

    async def unsubscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Server-side unsubscribe: the client gets an ``unsubscribe`` push (code 2000)."""
        self.namespace(channel)
        why = UnsubscribeCode.SERVER
        push = Push(channel=channel, unsubscribe=Unsubscribe(code=why.code, reason=why.reason))
        for client in self.registry.targets(user, client_id):
            if channel in client.subs:
                client.unsubscribe(channel)
                client.send_push(push)

    def disconnect_user(
        self,
        user: str,
        disconnect: DisconnectInfo,
        client_id: str = "",
        whitelist: list[str] | None = None,
    ) -> int:
        """Close the connections of ``user`` (or one client) with ``disconnect``. Returns
        how many."""
        keep = set(whitelist or ())
        targets = [c for c in self.registry.targets(user, client_id) if c.id not in keep]
        for client in targets:
            client.close(disconnect)
        return len(targets)

    def stats(self) -> dict[str, int]:
        return {
            "num_clients": len(self.clients),
            "num_users": len(self.registry.users),
            "num_channels": len(self.hub.channels()),
            "num_subs": sum(len(c.subs) for c in self.clients.values()),
            "uptime": int(time.time() - self.started_at),
        }

    @property
    def version(self) -> str:
        return __version__
