"""centrifuge-python recovers across reconnects against Tether, or is told it could not.

The guarantee (docs/explanation/recovery.md): a client that comes back within the
recovery window receives every publication it missed exactly once, in order, with
``recovered: true``; a client whose stream was lost or trimmed gets ``recovered: false``,
never a silent gap. Each test holds the client away while publications are made, in a
way that cannot race with its reconnect: an event handler that the SDK awaits before it
schedules the reconnect, or a :class:`~tether.testing.faults.TcpProxy` refusing
connections.
"""

from __future__ import annotations

import cent
import msgspec
import pytest
from sdk_kit import HttpApi, SdkClients, next_event, subscribe

from tether.auth import mint_connection_token
from tether.protocol.codes import DisconnectCode
from tether.server import Server
from tether.testing.faults import TcpProxy
from tether.testing.servers import OPEN, TEST_SECRET, make_config, running_server

pytestmark = pytest.mark.integration


async def _publish(http: HttpApi, channel: str, *numbers: int) -> None:
    for n in numbers:
        await http.call("publish", {"channel": channel, "data": {"n": n}})


async def test_client_recovers_missed_publications_after_server_disconnect_with_reconnect_code(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    client, events = await sdk.connect(server.port, "alice")
    first_id = client.client_id
    _, sub_events, first = await subscribe(client, "chat:room")
    await _publish(http, "chat:room", 1, 2)
    await sub_events.next_publications(2)

    events.reconnect_gate.clear()  # the SDK waits for on_connecting before reconnecting
    await http.call(
        "disconnect",
        {"user": "alice", "disconnect": {"code": 3011, "reason": "force reconnect"}},
    )
    away = await next_event(events.connecting)
    await _publish(http, "chat:room", 3, 4, 5)  # while the client is away
    events.reconnect_gate.set()
    resubscribed = await next_event(sub_events.subscribed)
    await next_event(events.connected)  # the first connect's event was consumed already
    await sub_events.next_publications(3)
    await _publish(http, "chat:room", 6)  # live again after the recovery
    await sub_events.next_publications(1)

    assert (away.code, away.reason) == (3011, "force reconnect")
    assert client.client_id != first_id  # a new connection, not the old one revived
    assert resubscribed.was_recovering
    assert resubscribed.recovered
    assert first.stream_position is not None
    assert resubscribed.stream_position is not None
    assert resubscribed.stream_position.epoch == first.stream_position.epoch
    assert resubscribed.stream_position.offset == 5
    # No loss, no duplicate, in order: exactly what was published, once.
    assert [p.offset for p in sub_events.received] == [1, 2, 3, 4, 5, 6]
    assert [p.data["n"] for p in sub_events.received] == [1, 2, 3, 4, 5, 6]


async def test_server_side_subscription_from_token_recovers_after_reconnect(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    token = mint_connection_token(TEST_SECRET, "alice", channels=["chat:feed"])
    _, events = await sdk.connect(server.port, "alice", token=token)
    first = await next_event(events.subscribed)
    await _publish(http, "chat:feed", 1)
    live = await next_event(events.publications)

    events.reconnect_gate.clear()
    await http.call("disconnect", {"user": "alice", "disconnect": {"code": 3011}})
    await next_event(events.connecting)
    await _publish(http, "chat:feed", 2, 3)
    events.reconnect_gate.set()
    again = await next_event(events.subscribed)
    missed = [await next_event(events.publications) for _ in range(2)]

    assert first.channel == again.channel == "chat:feed"
    assert again.was_recovering
    assert again.recovered
    assert [(p.channel, p.pub.offset) for p in [live, *missed]] == [
        ("chat:feed", 1),
        ("chat:feed", 2),
        ("chat:feed", 3),
    ]
    assert [p.pub.data["n"] for p in missed] == [2, 3]


async def test_client_recovers_missed_publications_after_tcp_connection_drops(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    async with TcpProxy(server.port) as proxy:
        client, events = await sdk.connect(proxy.port, "alice")
        _, sub_events, first = await subscribe(client, "chat:mobile")
        await api.publish(cent.PublishRequest(channel="chat:mobile", data={"n": 1}))
        await sub_events.next_publications(1)

        proxy.refuse_new = True  # the network stays down until the publications are made
        assert proxy.drop() == 1
        await next_event(sub_events.subscribing)
        await next_event(events.connecting)
        for n in (2, 3, 4):
            await api.publish(cent.PublishRequest(channel="chat:mobile", data={"n": n}))
        proxy.refuse_new = False
        resubscribed = await next_event(sub_events.subscribed)
        await sub_events.next_publications(3)

        assert resubscribed.was_recovering
        assert resubscribed.recovered
        assert first.stream_position is not None
        assert resubscribed.stream_position is not None
        assert resubscribed.stream_position.epoch == first.stream_position.epoch
        assert [p.offset for p in sub_events.received] == [1, 2, 3, 4]
        assert [p.data["n"] for p in sub_events.received] == [1, 2, 3, 4]
        assert proxy.connections == 1  # it came back through the proxy
        await client.disconnect()


async def test_client_gets_every_publication_once_in_order_when_connections_drop_mid_stream(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    """No holding back here: the connection dies at arbitrary points of a stream of
    publications, sometimes while the client is still resubscribing from the last drop.
    Fewer publications than the history keeps (100), so every one is recoverable."""
    total, drops_at = 90, {15, 16, 40, 60, 61, 62, 80}
    async with TcpProxy(server.port) as proxy:
        client, _ = await sdk.connect(proxy.port, "alice")
        _, sub_events, _ = await subscribe(client, "chat:burst")
        for n in range(1, total + 1):
            await _publish(http, "chat:burst", n)
            if n in drops_at:
                proxy.drop()
        await sub_events.until_offset(total)
        await _publish(http, "chat:burst", total + 1)  # a duplicate would show up before it
        await sub_events.until_offset(total + 1)
        await client.disconnect()

    assert [p.offset for p in sub_events.received] == list(range(1, total + 2))
    assert [p.data["n"] for p in sub_events.received] == list(range(1, total + 2))
    assert proxy.accepted > 1  # it did reconnect


async def test_client_is_told_recovery_failed_when_the_server_lost_its_streams(
    sdk: SdkClients,
) -> None:
    """The in-memory broker loses every stream on restart: a client that comes back with
    the old epoch must get ``recovered: false`` and the new position, not a silent gap."""
    async with TcpProxy(0) as proxy:  # pointed at each server in turn
        async with running_server() as before:
            proxy.retarget(before.port)
            client, events = await sdk.connect(proxy.port, "alice")
            _, sub_events, first = await subscribe(client, "chat:restart")
            await before.node.publish("chat:restart", b'{"n":1}')
            await sub_events.next_publications(1)
            proxy.refuse_new = True
        # `before` is stopped: its clients were closed with 3001 (reconnect), and its
        # streams are gone with it.
        away = await next_event(events.connecting)
        async with running_server() as after:
            proxy.retarget(after.port)
            lost = await after.node.publish("chat:restart", b'{"n":"lost in the gap"}')
            proxy.refuse_new = False
            resubscribed = await next_event(sub_events.subscribed)
            await after.node.publish("chat:restart", b'{"n":"live"}')
            [live] = await sub_events.next_publications(1)
            await client.disconnect()

    assert away.code == DisconnectCode.SHUTDOWN.code
    assert first.stream_position is not None
    assert resubscribed.stream_position is not None
    assert resubscribed.was_recovering
    assert not resubscribed.recovered  # the loss is reported ...
    assert resubscribed.stream_position.epoch != first.stream_position.epoch
    assert resubscribed.stream_position.offset == lost.position.offset
    # ... and the client is positioned on the new stream, live from there on.
    assert live.data == {"n": "live"}
    assert [p.data for p in sub_events.received] == [{"n": 1}, {"n": "live"}]


async def test_client_is_told_recovery_failed_when_it_missed_more_than_the_history_keeps(
    sdk: SdkClients,
) -> None:
    short = msgspec.structs.replace(OPEN, history_size=3)
    config = make_config()
    config = msgspec.structs.replace(config, namespaces={**config.namespaces, "short": short})
    async with running_server(config) as server:
        client, events = await sdk.connect(server.port, "alice")
        _, sub_events, first = await subscribe(client, "short:feed")
        await server.node.publish("short:feed", b"1")
        await sub_events.next_publications(1)

        events.reconnect_gate.clear()
        server.node.disconnect_user("alice", DisconnectCode.FORCE_RECONNECT)
        await next_event(events.connecting)
        for n in range(2, 7):  # five missed, three kept: offsets 2 and 3 are gone
            await server.node.publish("short:feed", str(n).encode())
        events.reconnect_gate.set()
        resubscribed = await next_event(sub_events.subscribed)
        await server.node.publish("short:feed", b"7")
        [live] = await sub_events.next_publications(1)
        await client.disconnect()

    assert resubscribed.was_recovering
    assert not resubscribed.recovered
    assert resubscribed.stream_position is not None
    assert first.stream_position is not None
    assert resubscribed.stream_position.epoch == first.stream_position.epoch
    assert resubscribed.stream_position.offset == 6
    assert (live.offset, live.data) == (7, 7)
    assert [p.offset for p in sub_events.received] == [1, 7]


async def test_after_the_standard_lane_is_shed_the_sdk_resubscribes_and_recovers_what_was_dropped(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    # The server side of a shed (tether.core.outbound: a connection over its bound sheds
    # its standard lane, see test_overload_and_drain.py): frames of the channel held for
    # this client are dropped, then it gets an unsubscribe push 2500.
    client, _ = await sdk.connect(server.port, "alice")
    _, sub_events, first = await subscribe(client, "chat:room")
    await _publish(http, "chat:room", 1, 2)
    await sub_events.next_publications(2)
    while not sub_events.subscribing.empty():  # the first subscribe's event
        sub_events.subscribing.get_nowait()
    [conn] = [c for c in server.node.clients.values() if c.user == "alice"]
    conn.pause_writing()  # as when alice's socket buffer is full: her frames are held
    await _publish(http, "chat:room", 3, 4, 5)
    conn.shed_standard()  # what the queue does over its bound: 3-5 dropped for alice
    conn.resume_writing()

    unsubscribed = await next_event(sub_events.subscribing)
    resubscribed = await next_event(sub_events.subscribed)
    await sub_events.next_publications(3)
    await _publish(http, "chat:room", 6)
    await sub_events.next_publications(1)

    assert unsubscribed.code == 2500
    assert resubscribed.was_recovering
    assert resubscribed.recovered
    assert first.stream_position is not None
    assert resubscribed.stream_position is not None
    assert resubscribed.stream_position.epoch == first.stream_position.epoch
    assert [p.offset for p in sub_events.received] == [1, 2, 3, 4, 5, 6]
    assert server.node.queue_limits.stats.standard_resubscribes == 1
    assert server.node.queue_limits.stats.standard_shed_bytes > 0  # 3-5 were dropped
