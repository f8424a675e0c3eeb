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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog

from tether import __version__
from tether.brokers.base import Broker, PresenceStore, PublishResult
from tether.config import Config
from tether.core.admission import Admission
from tether.core.channels import Channels, PublishRequest
from tether.core.client import Client, SessionContext
from tether.core.hooks import Backend, Events
from tether.core.hub import Hub
from tether.core.lanes import LaneGate
from tether.core.outbound import OverflowPolicy, QueueLimits
from tether.core.recovery import RecoveryCache
from tether.core.registry import Registry
from tether.core.transport import (
    Cadence,
    ClientTransport,
    Flusher,
    TransportLimits,
    WireFormat,
)
from tether.errors import BrokerUnavailable, ClientError
from tether.protocol.codes import DisconnectCode, DisconnectInfo, UnsubscribeCode
from tether.protocol.messages import (
    ClientInfo,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    Push,
    Subscribe,
    Unsubscribe,
)
from tether.protocol.messages import StreamPosition as WirePosition
from tether.protocol.session import ConnectionState

log = structlog.get_logger("tether.node")


class Node:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        presence: PresenceStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        backend: Backend | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.presence_store = presence
        self.backend = backend
        """The app's backend hooks (:mod:`tether.core.hooks`), or None."""
        self.events = events
        """Where connect/disconnect/subscribe/unsubscribe/publication events go, or None
        (set before :meth:`start`)."""
        self.clock = clock
        self.name = config.node_name or f"{socket.gethostname()}-{os.getpid()}"
        self.hub: Hub[Client] = Hub()
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
        self._session: SessionContext
        """What every client session gets of this node (built by :meth:`start`)."""
        self.admission = Admission(
            max_connections=config.max_connections,
            connects_per_second=config.max_connects_per_second,
            connects_burst=config.max_connects_burst,
            max_per_ip=config.max_connections_per_ip,
            clock=clock,
        )
        self.channels: Channels[Client] = Channels(
            config, broker, presence, self.hub, self.recovery, self.spawn
        )
        """The channel operations (namespaces, join/leave, recovery, publish, history,
        presence) the client sessions and the server API share."""
        self._tasks: set[asyncio.Task[Any]] = set()
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
        self._session = SessionContext(
            config=self.config,
            registry=self.registry,
            channels=self.channels,
            queue_limits=self._queue_limits,
            loop=loop,
            clock=self.clock,
            node_name=self.name,
            spawn=self.spawn,
            backend=self.backend,
            events=self.events,
            forwarded_headers=_forwarded_header_names(self.config),
        )
        self.channels.events = self.events
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

    def open_session(
        self,
        transport: ClientTransport,
        wire_format: WireFormat,
        headers: Mapping[str, str] | None = None,
    ) -> Client:
        """A transport finished its handshake: a new client speaking ``wire_format``,
        awaiting ``connect``. ``headers``: the upgrade's (lower-case), for the hooks."""
        client = Client(self._session, transport, wire_format, headers)
        self.registry.add_connecting(client)
        return client

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
            entries = (
                (client.id, sub)
                for client in list(self.clients.values())
                for sub in list(client.subs.values())
                if client.state is ConnectionState.CONNECTED
            )
            try:
                await self.channels.refresh_presence(entries)
            except BrokerUnavailable as exc:
                log.warning("presence refresh failed", error=str(exc))

    # -- broker events (BrokerEventHandler) -------------------------------------------

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.channels.deliver(channel, publication)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.channels.deliver_join(channel, info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.channels.deliver_leave(channel, info)

    def on_resync(self, channels: set[str]) -> None:
        """The broker may have missed publications of ``channels``: every local subscriber
        resubscribes and recovers from the stream. A client subscription gets an
        ``unsubscribe`` push with code 2500 (the SDK resubscribes with its position); a
        server-side one cannot be resubscribed by the client, so that connection is closed
        with 3010 (insufficient state) and recovers on reconnect."""
        for channel in channels:
            for client in self.channels.resync(channel):
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

    # -- the server API's facade (and the client sessions' channel operations) -------

    @property
    def lanes(self) -> LaneGate:
        """Publishes in flight per lane; ``lanes.shed``: refused because it was full."""
        return self.channels.lanes

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
        delta: bool = False,
    ) -> PublishResult:
        """:meth:`Channels.publish <tether.core.channels.Channels.publish>`."""
        return await self.channels.publish(
            channel,
            data,
            info=info,
            idempotency_key=idempotency_key,
            tags=tags,
            skip_history=skip_history,
            coalesce_key=coalesce_key,
            delta=delta,
        )

    async def publish_many(
        self, requests: Sequence[PublishRequest]
    ) -> list[PublishResult | ClientError]:
        """:meth:`Channels.publish_many <tether.core.channels.Channels.publish_many>`."""
        return await self.channels.publish_many(requests)

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: WirePosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        return await self.channels.history(channel, limit=limit, since=since, reverse=reverse)

    async def remove_history(self, channel: str) -> None:
        await self.channels.remove_history(channel)

    async def presence(self, channel: str) -> PresenceResult:
        return await self.channels.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStatsResult:
        return await self.channels.presence_stats(channel)

    async def subscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Server-side subscribe every connection of ``user`` (or one client) to
        ``channel``: the client gets a ``subscribe`` push, then the channel's pushes."""
        self.channels.namespace(channel)
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
        self.channels.namespace(channel)
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


def _forwarded_header_names(config: Config) -> frozenset[str]:
    """Upgrade headers (lower-case) some backend hook forwards (see ``[proxies.NAME]``)."""
    names = {name.lower() for proxy in config.proxies.values() for name in proxy.headers}
    if any(proxy.cookies for proxy in config.proxies.values()):
        names.add("cookie")
    return frozenset(names)
