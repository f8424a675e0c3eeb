"""``cent``, the real Python server-API client, works unchanged against Tether's HTTP API.

Each method is checked by its effect on what a user sees: the stream (history), the
connected centrifuge-python clients (publications, server-side subscriptions,
disconnects), and the answers ``cent`` gives back. Malformed bodies, which ``cent`` never
sends, are posted with raw aiohttp.
"""

from __future__ import annotations

import base64

import cent
import pytest
from centrifuge import ClientState, SubscriptionState
from sdk_kit import HttpApi, SdkClients, next_event, subscribe

from tether.protocol.codes import DisconnectCode, ErrorCode, UnsubscribeCode
from tether.server import Server
from tether.testing.servers import TEST_API_KEY

pytestmark = pytest.mark.integration


async def test_publish_returns_the_position_of_the_publication_in_the_stream(
    server: Server, api: cent.AsyncClient
) -> None:
    first = await api.publish(cent.PublishRequest(channel="chat:pos", data={"n": 1}))
    second = await api.publish(cent.PublishRequest(channel="chat:pos", data={"n": 2}))

    assert (first.offset, second.offset) == (1, 2)
    assert first.epoch
    assert second.epoch == first.epoch


async def test_publish_retried_with_the_same_idempotency_key_is_stored_and_delivered_once(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    client, _ = await sdk.connect(server.port)
    _, sub_events, _ = await subscribe(client, "chat:orders")
    order = cent.PublishRequest(channel="chat:orders", data={"order": 7}, idempotency_key="o-7")

    first = await api.publish(order)
    retry = await api.publish(order)
    marker = await api.publish(cent.PublishRequest(channel="chat:orders", data={"end": True}))
    history = await api.history(cent.HistoryRequest(channel="chat:orders", limit=100))

    assert (retry.offset, retry.epoch) == (first.offset, first.epoch)
    assert [p.data for p in history.publications] == [{"order": 7}, {"end": True}]
    assert marker.offset == first.offset + 1
    delivered = await sub_events.next_publications(2)
    assert [p.data for p in delivered] == [{"order": 7}, {"end": True}]


async def test_broadcast_publishes_to_every_channel_and_reports_each_outcome(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    client, _ = await sdk.connect(server.port)
    _, a_events, _ = await subscribe(client, "chat:a")
    _, b_events, _ = await subscribe(client, "chat:b")

    result = await api.broadcast(
        cent.BroadcastRequest(channels=["chat:a", "chat:b", "nowhere:c"], data={"all": 1})
    )

    ok_a, ok_b, unknown = result.responses
    assert ok_a.error is None
    assert ok_a.result is not None
    assert ok_a.result.offset == 1
    assert ok_b.result is not None
    assert ok_b.result.offset == 1
    assert unknown.error is not None
    assert unknown.error.code == ErrorCode.UNKNOWN_CHANNEL.code
    assert [p.data for p in await a_events.next_publications(1)] == [{"all": 1}]
    assert [p.data for p in await b_events.next_publications(1)] == [{"all": 1}]


async def test_history_pages_through_the_stream(server: Server, api: cent.AsyncClient) -> None:
    for n in range(1, 6):
        await api.publish(cent.PublishRequest(channel="chat:h", data={"n": n}, tags={"t": "x"}))

    everything = await api.history(cent.HistoryRequest(channel="chat:h", limit=-1))
    newest = await api.history(cent.HistoryRequest(channel="chat:h", limit=2, reverse=True))
    since = cent.StreamPosition(offset=3, epoch=everything.epoch)
    after_three = await api.history(cent.HistoryRequest(channel="chat:h", limit=10, since=since))

    assert [p.data["n"] for p in everything.publications] == [1, 2, 3, 4, 5]
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    assert everything.publications[0].tags == {"t": "x"}
    assert everything.offset == 5
    assert [p.offset for p in newest.publications] == [5, 4]
    assert [p.offset for p in after_three.publications] == [4, 5]


async def test_history_remove_empties_the_stream_but_keeps_its_position(
    server: Server, api: cent.AsyncClient
) -> None:
    for n in range(3):
        await api.publish(cent.PublishRequest(channel="chat:r", data=n))
    before = await api.history(cent.HistoryRequest(channel="chat:r", limit=0))

    await api.history_remove(cent.HistoryRemoveRequest(channel="chat:r"))
    after = await api.history(cent.HistoryRequest(channel="chat:r", limit=-1))
    next_pub = await api.publish(cent.PublishRequest(channel="chat:r", data=3))

    assert after.publications == []
    assert (after.offset, after.epoch) == (before.offset, before.epoch) == (3, before.epoch)
    assert (next_pub.offset, next_pub.epoch) == (4, before.epoch)


async def test_presence_and_presence_stats_list_the_connected_subscribers(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    alice, _ = await sdk.connect(server.port, "alice")
    alice_tablet, _ = await sdk.connect(server.port, "alice")
    bob, _ = await sdk.connect(server.port, "bob")
    for client in (alice, alice_tablet, bob):
        await subscribe(client, "chat:who")

    presence = await api.presence(cent.PresenceRequest(channel="chat:who"))
    stats = await api.presence_stats(cent.PresenceStatsRequest(channel="chat:who"))

    assert set(presence.presence) == {alice.client_id, alice_tablet.client_id, bob.client_id}
    assert presence.presence[bob.client_id].user == "bob"
    assert presence.presence[bob.client_id].client == bob.client_id
    assert (stats.num_clients, stats.num_users) == (3, 2)


async def test_presence_of_a_channel_nobody_is_in_is_empty(
    server: Server, api: cent.AsyncClient
) -> None:
    presence = await api.presence(cent.PresenceRequest(channel="chat:empty"))
    stats = await api.presence_stats(cent.PresenceStatsRequest(channel="chat:empty"))

    assert presence.presence == {}
    assert (stats.num_clients, stats.num_users) == (0, 0)


async def test_api_error_for_a_refused_request_raises_cent_api_response_error(
    server: Server, api: cent.AsyncClient
) -> None:
    with pytest.raises(cent.CentApiResponseError) as unknown:
        await api.publish(cent.PublishRequest(channel="nowhere:x", data={}))
    with pytest.raises(cent.CentApiResponseError) as no_history:
        await api.history(cent.HistoryRequest(channel="nohistory:x"))

    assert unknown.value.code == ErrorCode.UNKNOWN_CHANNEL.code
    assert no_history.value.code == ErrorCode.NOT_AVAILABLE.code


async def test_channels_lists_active_channels_matching_a_pattern(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    alice, _ = await sdk.connect(server.port, "alice")
    bob, _ = await sdk.connect(server.port, "bob")
    await subscribe(alice, "chat:one")
    await subscribe(bob, "chat:one")
    await subscribe(alice, "nohistory:two")

    every = await api.channels(cent.ChannelsRequest())
    chats = await api.channels(cent.ChannelsRequest(pattern="chat:*"))

    assert {name: info.num_clients for name, info in every.channels.items()} == {
        "chat:one": 2,
        "nohistory:two": 1,
    }
    assert set(chats.channels) == {"chat:one"}


async def test_info_describes_the_node(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    client, _ = await sdk.connect(server.port, "alice")
    await subscribe(client, "chat:info")

    info = await api.info(cent.InfoRequest())

    [node] = info.nodes
    assert node.name == server.node.name
    assert node.version
    assert (node.num_clients, node.num_users, node.num_channels, node.num_subs) == (1, 1, 1, 1)


async def test_subscribe_makes_a_server_side_subscription_on_the_connected_client(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    _, events = await sdk.connect(server.port, "alice")
    await api.publish(cent.PublishRequest(channel="chat:pushed", data={"n": 1}))

    await api.subscribe(cent.SubscribeRequest(user="alice", channel="chat:pushed"))
    subscribed = await next_event(events.subscribed)
    await api.publish(cent.PublishRequest(channel="chat:pushed", data={"n": 2}))
    publication = await next_event(events.publications)

    assert subscribed.channel == "chat:pushed"
    assert subscribed.recoverable
    assert subscribed.stream_position is not None
    assert subscribed.stream_position.offset == 1  # positioned after what came before
    assert publication.channel == "chat:pushed"
    assert (publication.pub.offset, publication.pub.data) == (2, {"n": 2})


async def test_unsubscribe_ends_a_server_side_subscription(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    _, events = await sdk.connect(server.port, "alice")
    await api.subscribe(cent.SubscribeRequest(user="alice", channel="chat:pushed"))
    await next_event(events.subscribed)

    await api.unsubscribe(cent.UnsubscribeRequest(user="alice", channel="chat:pushed"))
    unsubscribed = await next_event(events.unsubscribed)

    assert unsubscribed.channel == "chat:pushed"
    channels = await api.channels(cent.ChannelsRequest())
    assert "chat:pushed" not in channels.channels


async def test_unsubscribe_ends_a_client_side_subscription_for_good(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    client, _ = await sdk.connect(server.port, "alice")
    sub, sub_events, _ = await subscribe(client, "chat:kick")

    await api.unsubscribe(cent.UnsubscribeRequest(user="alice", channel="chat:kick"))
    unsubscribed = await next_event(sub_events.unsubscribed)

    assert unsubscribed.code == UnsubscribeCode.SERVER.code == 2000
    assert sub.state is SubscriptionState.UNSUBSCRIBED
    assert client.state is ClientState.CONNECTED


async def test_disconnect_by_default_closes_the_client_for_good(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    alice, alice_events = await sdk.connect(server.port, "alice")
    bob, _ = await sdk.connect(server.port, "bob")

    await api.disconnect(cent.DisconnectRequest(user="alice"))
    disconnected = await next_event(alice_events.disconnected)

    assert disconnected.code == DisconnectCode.FORCE_NO_RECONNECT.code == 3503
    assert alice.state is ClientState.DISCONNECTED
    assert bob.state is ClientState.CONNECTED
    assert {c.user for c in server.node.clients.values()} == {"bob"}


async def test_disconnect_spares_the_whitelisted_connection(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    phone, phone_events = await sdk.connect(server.port, "alice")
    laptop, _ = await sdk.connect(server.port, "alice")

    await api.disconnect(
        cent.DisconnectRequest(
            user="alice",
            whitelist=[laptop.client_id],
            disconnect=cent.Disconnect(code=4501, reason="logged out elsewhere"),
        )
    )
    disconnected = await next_event(phone_events.disconnected)

    assert (disconnected.code, disconnected.reason) == (4501, "logged out elsewhere")
    assert phone.state is ClientState.DISCONNECTED
    assert laptop.state is ClientState.CONNECTED


async def test_wrong_api_key_raises_cent_unauthorized_error(server: Server) -> None:
    async with cent.AsyncClient(f"http://127.0.0.1:{server.http_port}/api", "wrong") as bad:
        with pytest.raises(cent.CentUnauthorizedError):
            await bad.publish(cent.PublishRequest(channel="chat:x", data={}))

    assert (await server.node.history("chat:x")).publications == []


BAD_BODIES: dict[str, tuple[str, bytes]] = {
    "not json": ("publish", b"{not json"),
    "not an object": ("publish", b"[1, 2]"),
    "missing field": ("publish", b'{"channel": "chat:x"}'),
    "wrong type": ("publish", b'{"channel": 5, "data": {}}'),
    "unknown field": ("history", b'{"channel": "chat:x", "limitt": 5}'),
    "bad nested shape": ("disconnect", b'{"user": "u", "disconnect": {"code": "x"}}'),
}


@pytest.mark.parametrize(("method", "body"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_malformed_body_is_answered_400_with_error_107(
    server: Server, http: HttpApi, method: str, body: bytes
) -> None:
    status, answer = await http.post(method, data=body)

    assert status == 400
    assert answer["error"]["code"] == ErrorCode.BAD_REQUEST.code == 107
    assert answer["error"]["message"]
    # Nothing was published on the way.
    assert (await server.node.history("chat:x")).publications == []


async def test_unknown_method_is_answered_404_with_error_104(http: HttpApi) -> None:
    status, answer = await http.post("publsh", {"channel": "chat:x", "data": {}})

    assert status == 404
    assert answer["error"]["code"] == ErrorCode.METHOD_NOT_FOUND.code


async def test_raw_http_api_accepts_the_apikey_authorization_scheme(http: HttpApi) -> None:
    status, answer = await http.post(
        "publish",
        {"channel": "chat:x", "data": {"n": 1}},
        headers={"Authorization": f"apikey {TEST_API_KEY}"},
    )

    assert status == 200, answer
    assert answer["result"]["offset"] == 1


async def test_raw_http_api_without_a_key_is_answered_401_with_error_101(http: HttpApi) -> None:
    status, answer = await http.post("info", {}, headers={})

    assert status == 401
    assert answer["error"]["code"] == ErrorCode.UNAUTHORIZED.code


@pytest.mark.parametrize("code", [1000, 2999, 5000])
async def test_disconnect_with_a_code_outside_3000_4999_is_answered_107_and_closes_nobody(
    server: Server, sdk: SdkClients, http: HttpApi, code: int
) -> None:
    alice, _ = await sdk.connect(server.port, "alice")

    status, answer = await http.post(
        "disconnect", {"user": "alice", "disconnect": {"code": code, "reason": "x"}}
    )

    assert status == 200
    assert answer["error"] == {
        "code": ErrorCode.BAD_REQUEST.code,
        "message": "disconnect code must be 3000-4999",
    }
    assert alice.state is ClientState.CONNECTED


async def test_b64data_reaches_a_protobuf_client_as_its_bytes(
    server: Server, api: cent.AsyncClient
) -> None:
    phone_clients = SdkClients("protobuf")
    try:
        phone, _ = await phone_clients.connect(server.port)
        _, events, _ = await subscribe(phone, "chat:binary")
        payload = bytes(range(256))  # not JSON, not UTF-8

        await api.publish(
            cent.PublishRequest(channel="chat:binary", data=None, b64data=b64(payload))
        )
        await api.broadcast(
            cent.BroadcastRequest(channels=["chat:binary"], data=None, b64data=b64(b"\x00\x01"))
        )

        received = await events.next_publications(2)
    finally:
        await phone_clients.close()
    assert [p.data for p in received] == [payload, b"\x00\x01"]


@pytest.mark.parametrize(
    "body",
    [
        {"channel": "chat:x", "data": {"a": 1}, "b64data": "AAE="},
        {"channel": "chat:x", "b64data": "not base64!"},
        {"channel": "chat:x"},
    ],
    ids=["both", "bad-base64", "neither"],
)
async def test_publish_needs_exactly_one_of_data_and_b64data(
    server: Server, http: HttpApi, body: dict[str, object]
) -> None:
    status, answer = await http.post("publish", body)
    assert status == 400
    assert answer["error"]["code"] == ErrorCode.BAD_REQUEST.code
    assert (await server.node.history("chat:x")).publications == []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
