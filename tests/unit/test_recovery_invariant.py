"""The recovery invariant, at the node: a client that resubscribes with ``recover`` while
publications keep arriving gets every offset after its position exactly once, in order,
from the subscribe reply's publications followed by live pushes.

The danger zone is the window between reading the stream and going live: a publication
that lands there is in neither the history read nor (without care) the live stream, or in
both. The broker below yields to the event loop around every read, so the publisher lands
publications in each part of that window.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tether.auth import mint_connection_token
from tether.brokers.base import (
    BrokerEventHandler,
    HistoryPage,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.core.client import Client
from tether.core.node import Node
from tether.protocol.messages import ClientInfo, Publication
from tether.testing.servers import TEST_SECRET, make_config
from tether.testing.transports import JSON_LINES

CHANNEL = "chat:room"


class InterleavingBroker:
    """A MemoryBroker whose reads and join/leave pushes give the event loop turns before
    and after they happen, as a networked broker's round trips would."""

    def __init__(self, yields_before: int, yields_after: int) -> None:
        self.inner = MemoryBroker()
        self.before = yields_before
        self.after = yields_after

    async def _turns(self, n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    async def start(self, handler: BrokerEventHandler) -> None:
        await self.inner.start(handler)

    async def close(self) -> None:
        await self.inner.close()

    async def subscribe(self, channel: str) -> None:
        await self._turns(self.before)
        await self.inner.subscribe(channel)
        await self._turns(self.after)

    async def unsubscribe(self, channel: str) -> None:
        await self.inner.unsubscribe(channel)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        return await self.inner.publish(channel, publication, options)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._turns(self.before)
        await self.inner.publish_join(channel, info)
        await self._turns(self.after)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._turns(self.before)
        await self.inner.publish_leave(channel, info)
        await self._turns(self.after)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        await self._turns(self.before)
        page = await self.inner.history(channel, since=since, limit=limit, reverse=reverse)
        await self._turns(self.after)
        return page

    async def remove_history(self, channel: str) -> None:
        await self.inner.remove_history(channel)

    async def channels(self) -> set[str]:
        return await self.inner.channels()


class InterleavingPresenceStore(MemoryPresenceStore):
    """Presence writes that take event loop turns (they run after the stream read)."""

    def __init__(self, yields: int) -> None:
        super().__init__()
        self.yields = yields

    async def add(self, channel: str, client_id: str, info: ClientInfo) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)
        await super().add(channel, client_id, info)


class RecordingTransport:
    """A client transport that keeps every message the node writes, in order."""

    remote = "test"

    def __init__(self) -> None:
        self.data = b""
        self.closed: int | None = None
        self._written = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self._written.set()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds after some write; TimeoutError after 5 s."""
        async with asyncio.timeout(5):
            while not done():
                self._written.clear()
                await self._written.wait()

    def close(self, code: int, reason: str) -> None:
        self.closed = code

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.data.split(b"\n") if line]


class Session:
    def __init__(self, node: Node, user: str) -> None:
        self.transport = RecordingTransport()
        self.client: Client = node.open_session(self.transport, JSON_LINES)
        self.user = user
        self.last_id = 0

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one command the way the WebSocket transport hands it over; its reply."""
        self.last_id += 1
        cid = self.last_id
        self.client.on_message(json.dumps({"id": cid, method: params}).encode())
        await self.transport.wait_until(
            lambda: any(m.get("id") == cid for m in self.transport.messages())
        )
        [reply] = [m for m in self.transport.messages() if m.get("id") == cid]
        return reply


@pytest.fixture(
    params=[(0, 0), (1, 0), (0, 1), (2, 2), (5, 1), (1, 5), (20, 20)],
    ids=lambda p: f"yields-{p[0]}-{p[1]}",
)
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    before, after = request.param
    node = Node(
        make_config(),
        InterleavingBroker(before, after),
        InterleavingPresenceStore(after),
    )
    await node.start()
    try:
        yield node
    finally:
        await node.close()


async def connect(node: Node, user: str) -> Session:
    session = Session(node, user)
    reply = await session.call("connect", {"token": mint_connection_token(TEST_SECRET, user)})
    assert "connect" in reply, reply
    return session


def delivered_offsets(session: Session, subscribe_id: int) -> list[int]:
    """Offsets of CHANNEL the session saw: the subscribe reply's, then live pushes."""
    offsets: list[int] = []
    replied = False
    for message in session.transport.messages():
        if message.get("id") == subscribe_id:
            result = message["subscribe"]
            assert result.get("recovered") is True, result
            offsets += [p["offset"] for p in result.get("publications", [])]
            replied = True
        elif "pub" in message.get("push", {}) and message["push"]["channel"] == CHANNEL:
            assert replied, "a publication arrived before the subscribe reply"
            offsets.append(message["push"]["pub"]["offset"])
    return offsets


@pytest.mark.parametrize("others_subscribed", [False, True], ids=["first", "joining"])
async def test_no_publication_lost_or_duplicated_between_history_read_and_live_delivery(
    node: Node, others_subscribed: bool
) -> None:
    if others_subscribed:
        # Another local subscriber: the broker subscription already exists.
        other = await connect(node, "other")
        await other.call("subscribe", {"channel": CHANNEL})
    for n in range(1, 11):
        await node.publish(CHANNEL, b'{"n":%d}' % n)
    epoch = (await node.broker.history(CHANNEL, limit=0)).position.epoch
    session = await connect(node, "alice")

    async def keep_publishing() -> None:
        for n in range(11, 61):
            await node.publish(CHANNEL, b'{"n":%d}' % n)
            await asyncio.sleep(0)

    publisher = asyncio.create_task(keep_publishing())
    await session.call(
        "subscribe", {"channel": CHANNEL, "recover": True, "offset": 5, "epoch": epoch}
    )
    subscribe_id = session.last_id
    await publisher
    await session.transport.wait_until(lambda: len(delivered_offsets(session, subscribe_id)) >= 55)
    for _ in range(3):  # a duplicate delivered late would show now
        await asyncio.sleep(0)

    assert delivered_offsets(session, subscribe_id) == list(range(6, 61))
