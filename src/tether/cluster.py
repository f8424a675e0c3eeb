"""The cluster view: every node announces itself every few seconds, and any node can list
the live ones (``POST /api/info`` answers for all of them, as Centrifugo's does; the admin
page shows them).

How: each node writes one entry about itself into the presence store, under a key no
client channel can have (:data:`NODES_KEY` holds a control character, which channel
names never do), every :data:`ANNOUNCE_INTERVAL` seconds. With the Redis broker the
presence store is Redis, shared by every node, so each node reads everyone's entries
there; with the memory broker there is one node, and it lists itself.

An entry is live while it is younger than :data:`STALE_AFTER` (a node that stops
announcing, because it died or lost Redis, drops out of the list within that time; the
Redis store's own TTL, ``presence_ttl``, removes the entry later). Ages compare the
writer's wall clock with the reader's: nodes' clocks must agree within a few seconds
(NTP). A node that stops cleanly withdraws its entry at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from msgspec import Raw

from tether import saturation
from tether.errors import BrokerUnavailable
from tether.protocol.messages import ClientInfo

if TYPE_CHECKING:
    from tether.core.node import Node

log = structlog.get_logger("tether.cluster")

NODES_KEY = "\x00tether:nodes"
"""The presence-store key of the node entries (never a client channel: unprintable)."""
ANNOUNCE_INTERVAL = 3.0
STALE_AFTER = 10.0


class NodeEntry(msgspec.Struct, forbid_unknown_fields=False):
    """What a node announces about itself (the shape of one ``info`` result node)."""

    uid: str
    name: str
    version: str
    uptime: int
    num_clients: int
    num_users: int
    num_channels: int
    num_subs: int
    saturation: float
    updated: float  # the writer's wall clock, seconds since the epoch


def own_entry(node: Node) -> NodeEntry:
    """``node``'s figures now."""
    stats = node.stats()
    return NodeEntry(
        uid=node.name,
        name=node.name,
        version=node.version,
        uptime=stats["uptime"],
        num_clients=stats["num_clients"],
        num_users=stats["num_users"],
        num_channels=stats["num_channels"],
        num_subs=stats["num_subs"],
        saturation=round(saturation.overall(saturation.of_node(node)), 4),
        updated=time.time(),
    )


class Announcer:
    """Announces ``node`` every :data:`ANNOUNCE_INTERVAL` seconds (:meth:`run`, a task the
    node owns). Counts announcements the presence store refused (``failures``): the next
    one retries, and meanwhile the others see this node's entry age and drop it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.announced = 0
        self.failures = 0

    async def announce(self) -> None:
        """Write this node's entry once. Raises BrokerUnavailable."""
        entry = own_entry(self.node)
        info = ClientInfo(user="", client=entry.uid, conn_info=Raw(msgspec.json.encode(entry)))
        await self.node.presence_store.add(NODES_KEY, entry.uid, info)
        self.announced += 1

    async def run(self) -> None:
        while True:
            try:
                await self.announce()
            except BrokerUnavailable as exc:
                self.failures += 1
                log.warning("node announcement failed", node=self.node.name, error=str(exc))
            await asyncio.sleep(ANNOUNCE_INTERVAL)

    async def withdraw(self) -> None:
        """Remove this node's entry (a clean stop). Raises BrokerUnavailable."""
        await self.node.presence_store.remove(NODES_KEY, self.node.name)


async def live_nodes(node: Node) -> list[dict[str, Any]]:
    """Every live node's entry: ``node``'s own (fresh figures) first, then the others by
    name. Entries older than :data:`STALE_AFTER` or unreadable are left out. Raises
    BrokerUnavailable."""
    own = own_entry(node)
    entries = await node.presence_store.get(NODES_KEY)
    now = time.time()
    others: list[NodeEntry] = []
    for uid, info in entries.items():
        if uid == own.uid or info.conn_info is None:
            continue
        try:
            entry = msgspec.json.decode(info.conn_info, type=NodeEntry)
        except msgspec.DecodeError:
            log.warning("unreadable node entry", uid=uid)
            continue
        if now - entry.updated <= STALE_AFTER:
            others.append(entry)
    others.sort(key=lambda entry: entry.name)
    return [msgspec.structs.asdict(entry) for entry in (own, *others)]
