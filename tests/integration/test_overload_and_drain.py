"""Resilience under bursts, on real sockets: what users see when things go wrong.

* a slow consumer is cut off with 3008 while everyone else keeps every publication;
* a typing storm never drops, delays or reorders a chat message;
* admission control refuses connects politely (HTTP 503 + Retry-After, error 111);
* a saturated lane answers 429 + Retry-After (error 111) instead of piling up work;
* a drain spreads its 3001 disconnects, turns readiness off first, and the real SDK
  recovers on another node sharing the same Redis.

See docs/explanation/resilience.md for the failure modes these tests guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from sdk_kit import SdkClients, next_event, subscribe

from tether.auth import mint_connection_token
from tether.brokers.base import Broker
from tether.brokers.memory import MemoryPresenceStore
from tether.config import Config
from tether.core.lanes import Lane
from tether.core.node import Node
from tether.server import Server, run
from tether.testing.brokers import FaultyBroker
from tether.testing.faults import TcpProxy
from tether.testing.servers import OPEN, TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether.testing.wsclient import (
    OP_CLOSE,
    OP_TEXT,
    Closed,
    HandshakeRejected,
    WSClient,
    http_exchange,
    upgrade_request,
)
from tether.transports.http.app import build_app
from tether.transports.websocket import server as websocket
from tether.transports.websocket.server import WebSocketConnection
from tether_bench.redisserver import RedisServer, free_port

pytestmark = pytest.mark.integration

WAIT = 10.0
"""Seconds any single awaited outcome may take (a bound, never a delay)."""


# -- helpers ----------------------------------------------------------------------------------


@dataclass
class LocalServer:
    """A node with the broker a test chose, on real WebSocket and HTTP ports."""

    node: Node
    port: int
    http_port: int


@contextlib.asynccontextmanager
async def serving(config: Config, broker: Broker) -> AsyncIterator[LocalServer]:
    """Like :func:`~tether.testing.servers.running_server`, with ``broker`` injected
    (a :class:`~tether.testing.brokers.FaultyBroker`)."""
    node = Node(config, broker, MemoryPresenceStore())
    await node.start()
    listener = await websocket.serve(node, "127.0.0.1", 0)
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield LocalServer(node, listener.sockets[0].getsockname()[1], runner.addresses[0][1])
    finally:
        listener.close()
        await node.close()
        await runner.cleanup()
        await listener.wait_closed()


def _token(user: str) -> str:
    return mint_connection_token(TEST_SECRET, user)


async def _connected(port: int, user: str, *channels: str) -> WSClient:
    ws = await WSClient.open(port)
    reply = await ws.call("connect", {"token": _token(user)})
    assert "connect" in reply, reply
    for channel in channels:
        reply = await ws.call("subscribe", {"channel": channel})
        assert "subscribe" in reply, reply
    return ws


async def _slow_reader(port: int, user: str, *channels: str) -> WSClient:
    """A client whose socket takes almost nothing in (4 KiB receive buffer, 2 KiB read
    buffer): once the test stops reading it, the server's writes back up at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(upgrade_request())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"101", head
    ws = WSClient(reader, writer)
    await ws.call("connect", {"token": _token(user)})
    for channel in channels:
        await ws.call("subscribe", {"channel": channel})
    return ws


def _shrink_server_send_buffer(node: Node, user: str) -> None:
    """Give the server's side of ``user``'s connection a small, fixed send buffer, as on
    a slow mobile link. (On loopback Linux autotunes it to megabytes, which the node would
    fill for a long while before its own queue bound is reached.)"""
    [client] = [c for c in node.clients.values() if c.user == user]
    transport = client.transport
    assert isinstance(transport, WebSocketConnection)
    sock: Any = transport.get_extra_info("socket")  # asyncio's TransportSocket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


async def _frames_until_close(ws: WSClient) -> tuple[list[dict[str, Any]], int | None]:
    """Every message the server sent until its close frame, and the close code."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while True:
            try:
                frame = await ws.recv_frame()
            except Closed as exc:
                return messages, exc.code
            if frame.opcode == OP_CLOSE:
                return messages, frame.close_code
            if frame.opcode == OP_TEXT:
                messages += [json.loads(line) for line in frame.payload.split(b"\n") if line]


async def _eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition the server reaches on its own."""
    async with asyncio.timeout(WAIT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)  # the server changes it; nothing to wait on here


async def _close_all(clients: list[WSClient]) -> None:
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


def _lanes_config(**overrides: Any) -> Config:
    chat = msgspec.structs.replace(OPEN, lane="critical", join_leave=False, presence=False)
    typing = msgspec.structs.replace(
        OPEN,
        lane="ephemeral",
        history_size=0,
        history_ttl=0,
        recover=False,
        join_leave=False,
        presence=False,
    )
    feed = msgspec.structs.replace(OPEN, lane="standard", join_leave=False, presence=False)
    return make_config(namespaces={"chat": chat, "typing": typing, "feed": feed}, **overrides)


# -- slow consumers ---------------------------------------------------------------------------


async def test_slow_consumer_is_cut_off_with_3008_while_500_others_get_every_publication() -> None:
    config = _lanes_config(outbound_queue_bytes=64 * 1024)
    payload = json.dumps({"text": "x" * 2000}).encode()
    async with running_server(config) as server:
        node = server.node
        others = list(
            await asyncio.gather(
                *(_connected(server.port, f"u{i}", "feed:big") for i in range(500))
            )
        )
        slow = await _slow_reader(server.port, "slow", "feed:big")
        _shrink_server_send_buffer(node, "slow")
        try:
            received: list[list[int]] = [[] for _ in others]

            async def publish_round(count: int) -> None:
                for _ in range(count):
                    await node.publish("feed:big", payload)
                # Everyone but the slow client reads what the round carried.
                for i, ws in enumerate(others):
                    for _ in range(count):
                        push = await ws.next_push()
                        received[i].append(push["pub"]["offset"])

            rounds = 0
            while node.queue_limits.stats.slow_disconnects == 0:
                rounds += 1
                assert rounds < 400, "the slow client was never cut off"
                await publish_round(5)
            await publish_round(5)  # and delivery goes on for everyone else
            total = rounds * 5 + 5

            seen_by_slow, code = await _frames_until_close(slow)
        finally:
            await _close_all([*others, slow])

    assert code == 3008
    assert node.queue_limits.stats.slow_disconnects == 1
    expected = list(range(1, total + 1))
    # None lost, none duplicated, in order: for each of the 500 others.
    assert all(offsets == expected for offsets in received)
    # What the slow client got before the cut-off is a prefix: no silent gap to recover.
    slow_offsets = [m["push"]["pub"]["offset"] for m in seen_by_slow if "push" in m]
    assert slow_offsets == list(range(1, len(slow_offsets) + 1))
    assert len(slow_offsets) < total


async def test_feed_flood_is_shed_and_recovered_while_the_chat_on_that_connection_flows() -> None:
    config = _lanes_config(outbound_queue_bytes=64 * 1024)
    feed_payload = json.dumps({"text": "f" * 2000}).encode()
    async with running_server(config) as server:
        node = server.node
        ws = await _slow_reader(server.port, "reader", "chat:room", "feed:news")
        _shrink_server_send_buffer(node, "reader")
        try:
            chats = 0
            while node.queue_limits.stats.standard_resubscribes == 0:  # the reader is away
                assert chats < 400, "the standard lane was never shed"
                for _ in range(5):
                    await node.publish("feed:news", feed_payload)
                chats += 1
                await node.publish("chat:room", json.dumps({"n": chats}).encode())
                await asyncio.sleep(0)  # a loop tick: the node flushes what it can
            for _ in range(3):  # the chat goes on after the shed
                chats += 1
                await node.publish("chat:room", json.dumps({"n": chats}).encode())
            await asyncio.sleep(0)
            feed_total = node.hub.publications - chats

            # The reader is back: read until the last chat message.
            pushes: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT):
                while not pushes or pushes[-1].get("pub", {}).get("data") != {"n": chats}:
                    pushes.append(await ws.next_push())
            feed_seen = [
                p["pub"]["offset"] for p in pushes if p["channel"] == "feed:news" and "pub" in p
            ]
            unsubscribed = [p["unsubscribe"] for p in pushes if "unsubscribe" in p]
            # What the SDK does on unsubscribe 2500: subscribe again from its position.
            position = {
                "recover": True,
                "offset": feed_seen[-1],
                "epoch": (await node.broker.history("feed:news", limit=0)).position.epoch,
            }
            again = await ws.call("subscribe", {"channel": "feed:news", **position})
        finally:
            await ws.close()

    chat = [p["pub"]["offset"] for p in pushes if p["channel"] == "chat:room" and "pub" in p]
    assert chat == list(range(1, chats + 1))  # every chat message, once, in order
    assert node.queue_limits.stats.slow_disconnects == 0  # the connection stayed up
    assert unsubscribed == [{"code": 2500, "reason": "insufficient state"}]
    # The feed frames written before the shed are a prefix; recovery returns the rest.
    assert feed_seen == list(range(1, len(feed_seen) + 1))
    assert len(feed_seen) < feed_total
    result = again["subscribe"]
    assert result["recovered"] is True
    recovered = [p["offset"] for p in result["publications"]]
    assert recovered == list(range(len(feed_seen) + 1, feed_total + 1))


async def test_a_client_without_a_chat_to_protect_is_cut_off_as_slow_not_shed() -> None:
    config = _lanes_config(outbound_queue_bytes=64 * 1024)
    payload = json.dumps({"text": "f" * 2000}).encode()
    async with running_server(config) as server:
        node = server.node
        ws = await _slow_reader(server.port, "reader", "feed:news")
        _shrink_server_send_buffer(node, "reader")
        try:
            for _ in range(400):
                if node.queue_limits.stats.slow_disconnects:
                    break
                await node.publish("feed:news", payload)
                await asyncio.sleep(0)
            _, code = await _frames_until_close(ws)
        finally:
            await ws.close()
    assert code == 3008
    assert node.queue_limits.stats.standard_resubscribes == 0


# -- lanes: a typing storm --------------------------------------------------------------------


async def test_typing_storm_at_ten_times_the_chat_rate_never_drops_or_reorders_chat() -> None:
    config = _lanes_config(outbound_queue_bytes=8 << 20, ephemeral_queue_bytes=2048)
    chat_payload = json.dumps({"text": "y" * 8000}).encode()  # fills the socket quickly
    async with running_server(config) as server:
        node = server.node
        ws = await _slow_reader(server.port, "reader", "chat:room", "typing:room")
        _shrink_server_send_buffer(node, "reader")
        try:
            for n in range(1, 51):  # the reader does not read during the storm
                await node.publish("chat:room", chat_payload)
                for i in range(10):
                    data = json.dumps({"round": n, "typist": i % 5}).encode()
                    await node.publish("typing:room", data, coalesce_key=f"typist-{i % 5}")
                await asyncio.sleep(0)  # a loop tick: the node flushes what it can
            await node.publish("typing:room", b'{"end": true}', coalesce_key="end")

            messages: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT):
                while not messages or messages[-1]["push"]["pub"]["data"] != {"end": True}:
                    messages += [m for m in await ws.recv_messages() if "push" in m]
        finally:
            await ws.close()

    stats = node.queue_limits.stats
    chat = [m["push"]["pub"]["offset"] for m in messages if m["push"]["channel"] == "chat:room"]
    typing = [m["push"]["pub"]["data"] for m in messages if m["push"]["channel"] == "typing:room"]
    assert chat == list(range(1, 51))  # every chat message, once, in order
    assert stats.slow_disconnects == 0
    # Typing frames are the ones coalesced or dropped; each one is accounted for.
    assert stats.ephemeral_coalesced + stats.ephemeral_dropped > 0
    assert len(typing) + stats.ephemeral_coalesced + stats.ephemeral_dropped == 501
    # While the socket was full they coalesced across ticks: fewer than one frame per
    # typist per round went out.
    assert len(typing) < 50 * 5
    # Coalescing keeps the newest: the last word of each typist is from the last round.
    last = {d["typist"]: d["round"] for d in typing if "typist" in d}
    assert last == dict.fromkeys(range(5), 50)
    # A chat message is never behind a typing frame published after it.
    chat_seen = 0
    for m in messages:
        if m["push"]["channel"] == "chat:room":
            chat_seen += 1
        elif "round" in m["push"]["pub"]["data"]:
            assert chat_seen >= m["push"]["pub"]["data"]["round"]


# -- admission control --------------------------------------------------------------------------


async def test_connects_above_the_rate_get_503_with_retry_after_then_are_accepted() -> None:
    config = make_config(max_connects_per_second=1, max_connects_burst=2)
    async with running_server(config) as server:
        admitted = [await WSClient.open(server.port) for _ in range(2)]
        status, head = await http_exchange(server.port, upgrade_request())
        retry_after = int(head.split(b"Retry-After: ")[1].split(b"\r\n")[0])
        await asyncio.sleep(retry_after)  # what the SDK does: back off as told
        again = await WSClient.open(server.port)
        await _close_all([*admitted, again])

    assert status == 503
    assert retry_after == 1


async def test_connects_beyond_max_connections_per_ip_get_503_until_one_closes() -> None:
    config = make_config(max_connections_per_ip=2)
    async with running_server(config) as server:
        first = await WSClient.open(server.port)
        second = await WSClient.open(server.port)
        with pytest.raises(HandshakeRejected) as refused:
            await WSClient.open(server.port)
        await first.close()
        await _eventually(lambda: server.node.admission.connections == 1)
        third = await WSClient.open(server.port)
        await _close_all([second, third])

    assert refused.value.status == 503
    assert b"Retry-After: 1" in refused.value.head


async def test_connect_beyond_max_connections_per_user_gets_temporary_error_111() -> None:
    config = make_config(max_connections_per_user=1)
    async with running_server(config) as server:
        first = await _connected(server.port, "alice")
        second = await WSClient.open(server.port)
        refused = await second.call("connect", {"token": _token("alice")})
        other = await _connected(server.port, "bob")
        await _close_all([first, second, other])

    assert refused["error"]["code"] == 111
    assert refused["error"]["temporary"] is True


# -- lane saturation and publish limits ---------------------------------------------------------


async def _api(
    session: aiohttp.ClientSession, port: int, method: str, body: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with session.post(
        f"http://127.0.0.1:{port}/api/{method}", json=body, headers={"X-API-Key": TEST_API_KEY}
    ) as response:
        return response.status, dict(response.headers), await response.json()


async def test_api_answers_429_with_retry_after_while_the_lane_is_saturated() -> None:
    broker = FaultyBroker()
    limits = {"critical": 100, "standard": 1, "ephemeral": 100}
    async with (
        serving(_lanes_config(lane_publish_limits=limits), broker) as server,
        aiohttp.ClientSession() as session,
    ):
        broker.hold("publish")  # the broker stalls: publishes stay in flight
        hanging = asyncio.create_task(
            _api(session, server.http_port, "publish", {"channel": "feed:a", "data": {"n": 1}})
        )
        await broker.wait_held("publish")
        shed = await _api(
            session, server.http_port, "publish", {"channel": "feed:a", "data": {"n": 2}}
        )
        other_lane = asyncio.create_task(
            _api(session, server.http_port, "publish", {"channel": "chat:a", "data": {"n": 1}})
        )
        await broker.wait_held("publish", 2)  # admitted: another lane is not starved
        broker.release("publish")
        first, chat = await hanging, await other_lane
        after = await _api(
            session, server.http_port, "publish", {"channel": "feed:a", "data": {"n": 3}}
        )
        history = await server.node.history("feed:a", limit=-1)

    status, headers, answer = shed
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert answer["error"]["code"] == 111
    assert answer["error"]["temporary"] is True
    assert first[0] == chat[0] == after[0] == 200
    assert server.node.lanes.shed[Lane.STANDARD] == 1
    # The refused publish did no work: only the accepted ones are in the stream.
    assert [msgspec.json.decode(bytes(p.data))["n"] for p in history.publications] == [1, 3]


async def test_client_publishes_beyond_the_rate_limit_get_temporary_error_111() -> None:
    config = make_config(client_publish_rate=0.01, client_publish_burst=2)
    async with running_server(config) as server:
        ws = await _connected(server.port, "alice", "chat:room")
        replies = [
            await ws.call("publish", {"channel": "chat:room", "data": {"n": n}}) for n in range(3)
        ]
        await ws.close()

    assert ["publish" in r for r in replies] == [True, True, False]
    assert replies[2]["error"]["code"] == 111
    assert replies[2]["error"]["temporary"] is True


# -- drain ----------------------------------------------------------------------------------------


async def test_drain_turns_readiness_off_while_clients_are_still_connected() -> None:
    config = make_config(drain_window=2)
    server = Server(config)
    await server.start()
    clients = [await _connected(server.port, f"u{i}") for i in range(40)]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.http_port}/ready") as before:
            assert before.status == 200
        stopping = asyncio.create_task(server.stop(drain=True))
        await asyncio.sleep(0)
        async with session.get(f"http://127.0.0.1:{server.http_port}/ready") as during:
            status = during.status
        still_connected = len(server.node.clients)
    codes = await asyncio.gather(*(ws.wait_closed() for ws in clients))
    await stopping
    await _close_all(clients)

    assert status == 503
    assert still_connected > 0
    assert codes == [3001] * 40


async def test_drain_closes_clients_with_3001_in_batches_spread_over_the_window() -> None:
    config = make_config(drain_window=1)
    server = Server(config)
    await server.start()
    clients = [await _connected(server.port, f"u{i}") for i in range(40)]
    stopping = asyncio.create_task(server.stop(drain=True))
    remaining: list[int] = []
    async with asyncio.timeout(WAIT):
        while not remaining or remaining[-1] > 0:
            count = len(server.node.clients)
            if not remaining or count != remaining[-1]:
                remaining.append(count)
            await asyncio.sleep(0.005)
    codes = await asyncio.gather(*(ws.wait_closed() for ws in clients))
    await stopping
    await _close_all(clients)

    assert codes == [3001] * 40
    # Not all at once: the connected count went down through several intermediate steps.
    assert len([c for c in remaining if 0 < c < 40]) >= 4
    assert remaining == sorted(remaining, reverse=True)


async def test_sdk_recovers_exactly_on_a_second_node_after_its_node_drains(
    sdk: SdkClients, redis_server: RedisServer
) -> None:
    config = make_config(
        broker="redis",
        redis_url=redis_server.url,
        redis_prefix=f"drain{uuid.uuid4().hex[:8]}",
        drain_window=0.5,
    )
    node_a = Server(config)
    await node_a.start()
    stopped_a = False
    try:
        async with running_server(config) as node_b, TcpProxy(node_a.port) as proxy:
            client, events = await sdk.connect(proxy.port, "alice")
            _, sub_events, first = await subscribe(client, "chat:drain")
            for n in (1, 2):
                await node_a.node.publish("chat:drain", b'{"n":%d}' % n)
            await sub_events.next_publications(2)

            events.reconnect_gate.clear()  # hold the SDK away until the test lets it go
            await node_a.stop(drain=True)
            stopped_a = True
            away = await next_event(events.connecting)
            for n in (3, 4, 5):  # published on B while the client is away
                await node_b.node.publish("chat:drain", b'{"n":%d}' % n)
            proxy.retarget(node_b.port)
            events.reconnect_gate.set()
            resubscribed = await next_event(sub_events.subscribed)
            await sub_events.next_publications(3)
            await node_b.node.publish("chat:drain", b'{"n":6}')
            await sub_events.next_publications(1)
            connected = await next_event(events.connected)
            await client.disconnect()
    finally:
        if not stopped_a:
            await node_a.stop()

    assert (away.code, away.reason) == (3001, "shutdown")
    assert resubscribed.was_recovering
    assert resubscribed.recovered
    assert first.stream_position is not None
    assert resubscribed.stream_position is not None
    assert resubscribed.stream_position.epoch == first.stream_position.epoch
    assert connected.client != ""  # a new connection, on B
    assert [p.offset for p in sub_events.received] == [1, 2, 3, 4, 5, 6]
    assert [p.data["n"] for p in sub_events.received] == [1, 2, 3, 4, 5, 6]


async def test_sigterm_drains_and_a_second_signal_closes_the_rest_at_once() -> None:
    port, http_port = free_port(), free_port()
    # A long window: without the second signal the drain would take a minute.
    config = make_config(port=port, http_port=http_port, drain_window=60, drain_timeout=120)
    previous = signal.getsignal(signal.SIGTERM)
    running = asyncio.create_task(run(config))
    clients: list[WSClient] = []
    try:
        async with asyncio.timeout(WAIT):
            while signal.getsignal(signal.SIGTERM) is previous:  # run() owns SIGTERM now
                assert not running.done()
                await asyncio.sleep(0.01)
        clients = [await _connected(port, f"u{i}") for i in range(4)]

        os.kill(os.getpid(), signal.SIGTERM)
        closed = await asyncio.wait(
            [asyncio.ensure_future(ws.wait_closed()) for ws in clients],
            return_when=asyncio.FIRST_COMPLETED,
            timeout=WAIT,
        )
        first_batch = {task.result() for task in closed[0]}
        still_open = len(closed[1])

        os.kill(os.getpid(), signal.SIGTERM)
        rest = await asyncio.gather(*closed[1])
        async with asyncio.timeout(WAIT):
            await running
    finally:
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await _close_all(clients)

    assert first_batch == {3001}
    assert still_open > 0  # the drain was spreading the disconnects...
    assert set(rest) == {3001}  # ...and the second signal closed the rest with 3001
