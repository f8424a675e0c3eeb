"""Helpers to drive the real third-party Python clients against a real Tether node.

``centrifuge-python`` (the client SDK) reports everything through event handlers; the
recorders below turn those callbacks into queues a test can wait on, always with a
generous bound, never with a sleep. ``cent`` (the server-API client) and raw aiohttp
requests talk to the node's HTTP API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

import aiohttp
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)
from centrifuge.types import Publication

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET

T = TypeVar("T")

WAIT = 10.0
"""Seconds any single awaited outcome may take before the test fails (a bound, not a delay)."""

ENCODINGS = ("json", "protobuf")
"""The encodings the SDK tests run in: centrifuge-python speaks both (``use_protobuf``)."""


def data_of(value: Any) -> Any:
    """A payload as an app that sends JSON documents reads it: the JSON protocol hands
    it over decoded, the Protobuf protocol as the bytes that were published (bytes that
    are no JSON document stay bytes)."""
    if not isinstance(value, bytes):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


async def next_event(queue: asyncio.Queue[T]) -> T:
    """The next item of ``queue``; fails the test if none comes within :data:`WAIT`."""
    async with asyncio.timeout(WAIT):
        return await queue.get()


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/connection/websocket"


def api_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}/api"


class ClientEvents(ClientEventHandler):
    """Records client-level events of centrifuge-python (connection, server-side subs).

    Clear :attr:`reconnect_gate` to hold the client away after it lost its connection:
    the SDK awaits ``on_connecting`` before it schedules the reconnect.
    """

    def __init__(self) -> None:
        self.connected: asyncio.Queue[ConnectedContext] = asyncio.Queue()
        self.connecting: asyncio.Queue[ConnectingContext] = asyncio.Queue()
        self.disconnected: asyncio.Queue[DisconnectedContext] = asyncio.Queue()
        self.subscribed: asyncio.Queue[ServerSubscribedContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[ServerUnsubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[ServerPublicationContext] = asyncio.Queue()
        self.errors: list[ErrorContext] = []
        self.reconnect_gate = asyncio.Event()
        self.reconnect_gate.set()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.put_nowait(ctx)

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting.put_nowait(ctx)
        await self.reconnect_gate.wait()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.put_nowait(ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.errors.append(ctx)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.unsubscribed.put_nowait(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        ctx.pub.data = data_of(ctx.pub.data)
        self.publications.put_nowait(ctx)


class SubEvents(SubscriptionEventHandler):
    """Records the events of one centrifuge-python subscription.

    :attr:`received` keeps every publication delivered, in delivery order, over the whole
    life of the subscription (across reconnects): the list a user's app would have seen.

    Clear :attr:`resubscribe_gate` to hold a resubscribe back (after an ``unsubscribe``
    push 2500): the SDK awaits ``on_subscribing`` before it sends the subscribe again.
    """

    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[SubscribedContext] = asyncio.Queue()
        self.subscribing: asyncio.Queue[SubscribingContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[UnsubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[Publication] = asyncio.Queue()
        self.joins: asyncio.Queue[JoinContext] = asyncio.Queue()
        self.leaves: asyncio.Queue[LeaveContext] = asyncio.Queue()
        self.received: list[Publication] = []
        self.errors: list[SubscriptionErrorContext] = []
        self.resubscribe_gate = asyncio.Event()
        self.resubscribe_gate.set()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self.subscribing.put_nowait(ctx)
        await self.resubscribe_gate.wait()

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.put_nowait(ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        ctx.pub.data = data_of(ctx.pub.data)
        self.received.append(ctx.pub)
        self.publications.put_nowait(ctx.pub)

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.put_nowait(ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.put_nowait(ctx)

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self.errors.append(ctx)

    async def until_offset(self, offset: int) -> None:
        """Wait (within :data:`WAIT`) until a publication at ``offset`` or later arrives."""
        async with asyncio.timeout(WAIT):
            while (await self.publications.get()).offset < offset:
                pass

    async def next_publications(self, count: int) -> list[Publication]:
        """The next ``count`` publications delivered (within :data:`WAIT`)."""
        async with asyncio.timeout(WAIT):
            return [await self.publications.get() for _ in range(count)]


class SdkClients:
    """Makes centrifuge-python clients of one encoding (``json`` or ``protobuf``) and
    disconnects every one of them at the end."""

    def __init__(self, encoding: str = "json") -> None:
        self.encoding = encoding
        self._clients: list[tuple[Client, ClientEvents]] = []

    def payload(self, value: Any) -> Any:
        """``value`` as this encoding's clients publish it (JSON bytes for Protobuf)."""
        return json.dumps(value).encode() if self.encoding == "protobuf" else value

    def new(
        self, port: int, user: str = "alice", *, token: str | None = None, **options: Any
    ) -> tuple[Client, ClientEvents]:
        """A client of ``ws://127.0.0.1:port`` for ``user`` (a fresh JWT unless ``token``
        is given), not connected yet. Reconnect delays are small so tests stay fast."""
        events = ClientEvents()
        options.setdefault("min_reconnect_delay", 0.05)
        options.setdefault("max_reconnect_delay", 0.5)
        options.setdefault("use_protobuf", self.encoding == "protobuf")
        client = Client(
            ws_url(port),
            events=events,
            token=mint_connection_token(TEST_SECRET, user) if token is None else token,
            proxy=None,  # never route loopback through a proxy from the environment
            **options,
        )
        self._clients.append((client, events))
        return client, events

    async def connect(
        self, port: int, user: str = "alice", **options: Any
    ) -> tuple[Client, ClientEvents]:
        """A connected client (``connect()`` returned and ``on_connected`` came)."""
        client, events = self.new(port, user, **options)
        await client.connect()
        await next_event(events.connected)
        # on_connecting of connect() itself: the queue then holds only what comes later.
        initial = await next_event(events.connecting)
        assert initial.code == 0, initial
        return client, events

    async def close(self) -> None:
        for client, events in self._clients:
            events.reconnect_gate.set()  # a test that failed may have left it closed
            await client.disconnect()
            # The SDK closes its socket in a background task it keeps no public handle
            # on; waiting for it keeps sockets from outliving the test (ResourceWarning).
            await asyncio.gather(*client._background_tasks, return_exceptions=True)


async def subscribe(
    client: Client, channel: str, **options: Any
) -> tuple[Subscription, SubEvents, SubscribedContext]:
    """Subscribe and wait until subscribed; returns the subscribed context too."""
    events = SubEvents()
    sub = client.new_subscription(channel, events=events, **options)
    await sub.subscribe()
    ctx = await next_event(events.subscribed)
    return sub, events, ctx


class HttpApi:
    """Raw ``POST /api/<method>`` calls with aiohttp, for what ``cent`` cannot send."""

    def __init__(self, session: aiohttp.ClientSession, server: Server) -> None:
        self._session = session
        self._base = api_url(server)

    async def post(
        self,
        method: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Returns the HTTP status and the decoded JSON answer. ``data`` sends raw bytes;
        ``headers`` replace the default ``X-API-Key`` header."""
        if headers is None:
            headers = {"X-API-Key": TEST_API_KEY}
        headers = {"Content-Type": "application/json", **headers}
        kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body or {}}
        async with self._session.post(
            f"{self._base}/{method}", headers=headers, **kwargs
        ) as response:
            return response.status, await response.json()

    async def call(self, method: str, body: Any = None) -> dict[str, Any]:
        """A call that must succeed: returns its ``result``."""
        status, answer = await self.post(method, body)
        assert status == 200, answer
        assert "error" not in answer, answer
        result: dict[str, Any] = answer["result"]
        return result
