"""Webhooks and offline push: :class:`Notifier` implements :class:`tether.core.hooks.Events`.

Webhook events (``[webhook]``), each ``{"id", "type", "time", "node", ...}``:

* ``connect``: ``client``, ``user``, ``transport``, ``protocol``, ``encoding``;
* ``disconnect``: ``client``, ``user``, ``code``, ``reason``;
* ``subscribe`` / ``unsubscribe``: ``client``, ``user``, ``channel`` (an ``unsubscribe``
  is sent for explicit and server unsubscribes; a ``disconnect`` ends the rest);
* ``publication`` (namespaces in ``webhook.namespaces``): ``channel``, ``data``, ``info``,
  ``offset``, ``epoch``, sent by the node that accepted the publish, once.

Offline push (``[push]``, namespaces with ``push = true``): for a publication to a channel
that names users (``#alice``, ``dm:42#alice,bob``), one ``push`` event per named user with
no live subscription to the channel anywhere in the cluster, by the channel's presence:
``user``, ``channel``, ``data``, ``info``, ``offset``, ``epoch``. When presence cannot be
read (broker down), every named user gets the push: a duplicate notification is better
than a lost message. The presence checks wait in a bounded queue (``push.max_buffered``);
beyond it they are dropped and counted with the push outbox's drops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import structlog

from tether.config import Config, OutboxConfig
from tether.core.hooks import Connection
from tether.errors import BrokerUnavailable
from tether.protocol.channels import channel_users, namespace_of
from tether.protocol.messages import ClientInfo
from tether.proxy.outbox import MemoryStore, Outbox, OutboxStore
from tether.proxy.tasks import stop_task

log = structlog.get_logger("tether.outbox")

Presence = Callable[[str], Awaitable[Mapping[str, ClientInfo]]]


def make_store(config: Config, name: str, outbox: OutboxConfig, node: str) -> OutboxStore:
    """A Redis stream shared by the nodes with a Redis broker (one server, the first
    shard, or the Cluster), else memory."""
    if config.broker == "redis":
        from tether.proxy.redis_outbox import RedisStore

        url = config.redis_urls[0] if config.redis_urls else config.redis_url
        return RedisStore(
            url,
            f"{config.redis_prefix}:outbox:{name}",
            node,
            max_buffered=outbox.max_buffered,
            claim_idle=max(30.0, 2 * outbox.timeout),
            cluster=config.redis_cluster,
        )
    return MemoryStore(outbox.max_buffered)


class Notifier:
    """The node's outbound events. Create, :meth:`start` in the running loop, :meth:`close`."""

    def __init__(self, config: Config, *, node: str, presence: Presence) -> None:
        self.webhook: Outbox | None = None
        self.push: Outbox | None = None
        if config.webhook.url:
            store = make_store(config, "webhook", config.webhook, node)
            self.webhook = Outbox("webhook", config.webhook, store, node=node)
        if config.push.url:
            store = make_store(config, "push", config.push, node)
            self.push = Outbox("push", config.push, store, node=node)
        self._events = frozenset(config.webhook.events) if self.webhook else frozenset()
        self._publication_namespaces = frozenset(config.webhook.namespaces)
        self._push_namespaces = frozenset(n for n, ns in config.namespaces.items() if ns.push)
        self._presence = presence
        self._checks: deque[tuple[str, dict[str, Any]]] = deque()
        self._max_checks = config.push.max_buffered
        self.checks_dropped = 0
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.webhook is not None or self.push is not None

    def outboxes(self) -> list[Outbox]:
        return [o for o in (self.webhook, self.push) if o is not None]

    async def start(self) -> None:
        for outbox in self.outboxes():
            await outbox.start()
        if self.push is not None:
            self._worker = asyncio.get_running_loop().create_task(self._check_presence())

    async def close(self) -> None:
        if self._worker is not None:
            await stop_task(self._worker)
            self._worker = None
        for outbox in self.outboxes():
            await outbox.close()

    # -- tether.core.hooks.Events -----------------------------------------------------

    def _webhook(self, kind: str, fields: dict[str, Any]) -> None:
        if self.webhook is not None and kind in self._events:
            self.webhook.put(kind, fields)

    def connected(self, conn: Connection) -> None:
        self._webhook(
            "connect",
            {
                "client": conn.client,
                "user": conn.user,
                "transport": conn.transport,
                "protocol": conn.protocol,
                "encoding": conn.encoding,
            },
        )

    def disconnected(self, conn: Connection, code: int, reason: str) -> None:
        fields = {"client": conn.client, "user": conn.user, "code": code, "reason": reason}
        self._webhook("disconnect", fields)

    def subscribed(self, conn: Connection, channel: str) -> None:
        self._webhook("subscribe", {"client": conn.client, "user": conn.user, "channel": channel})

    def unsubscribed(self, conn: Connection, channel: str) -> None:
        fields = {"client": conn.client, "user": conn.user, "channel": channel}
        self._webhook("unsubscribe", fields)

    def published(
        self, channel: str, data: bytes, info: ClientInfo | None, offset: int, epoch: str
    ) -> None:
        namespace = namespace_of(channel)
        fields: dict[str, Any] | None = None
        if "publication" in self._events and namespace in self._publication_namespaces:
            fields = _publication(channel, data, info, offset, epoch)
            self._webhook("publication", fields)
        if self.push is None or namespace not in self._push_namespaces:
            return
        if not channel_users(channel):
            return
        if len(self._checks) >= self._max_checks:
            self.checks_dropped += 1
            return
        self._checks.append((channel, fields or _publication(channel, data, info, offset, epoch)))
        self._wake.set()

    # -- offline push -----------------------------------------------------------------

    async def _check_presence(self) -> None:
        assert self.push is not None
        while True:
            while not self._checks:
                self._wake.clear()
                await self._wake.wait()
            channel, fields = self._checks.popleft()
            try:
                entries = await self._presence(channel)
                online = {info.user for info in entries.values()}
            except BrokerUnavailable as exc:
                log.warning("push: presence unknown, pushing to every named user", error=str(exc))
                online = set()
            for user in sorted(channel_users(channel) or ()):
                if user not in online:
                    self.push.put("push", {"user": user, **fields})


def _publication(
    channel: str, data: bytes, info: ClientInfo | None, offset: int, epoch: str
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "channel": channel,
        "data": msgspec.Raw(data),
        "offset": offset,
        "epoch": epoch,
    }
    if info is not None:
        fields["info"] = info
    return fields
