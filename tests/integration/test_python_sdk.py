"""centrifuge-python, the real Python client SDK, works unchanged against Tether, in both
encodings (every test runs with JSON and with ``use_protobuf=True``).

Connect with a JWT, subscribe, receive what the backend publishes through the HTTP API
(raw HTTP and the ``cent`` client), publish from the client where the namespace allows it,
read presence and history, and subscribe to a channel that needs a subscription token.
Recovery across reconnects is in ``test_python_sdk_recovery.py``.
"""

from __future__ import annotations

import asyncio
import uuid

import cent
import msgspec
import pytest
from centrifuge import (
    ReplyError,
    StreamPosition,
    SubscriptionState,
    SubscriptionUnsubscribedError,
)
from sdk_kit import WAIT, HttpApi, SdkClients, SubEvents, data_of, next_event, subscribe

from tether.auth import mint_connection_token, mint_subscription_token
from tether.protocol.codes import ErrorCode
from tether.server import Server
from tether.testing.servers import OPEN, TEST_SECRET, make_config, running_server

pytestmark = pytest.mark.integration


async def test_client_connects_with_jwt_and_receives_publications_sent_over_http_api(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    client, _ = await sdk.connect(server.port, "alice")
    _, sub_events, subscribed = await subscribe(client, "chat:lobby")

    assert subscribed.channel == "chat:lobby"
    assert subscribed.recoverable  # the chat namespace has recovery on
    for text in ("hello", "world"):
        await http.call("publish", {"channel": "chat:lobby", "data": {"text": text}})

    pubs = await sub_events.next_publications(2)
    assert [p.data for p in pubs] == [{"text": "hello"}, {"text": "world"}]
    assert [p.offset for p in pubs] == [1, 2]
    assert client.client_id in server.node.clients
    assert server.node.clients[client.client_id].user == "alice"


async def test_each_connection_gets_its_own_random_uuid_as_client_id(
    server: Server, sdk: SdkClients
) -> None:
    ids = [(await sdk.connect(server.port, "alice"))[0].client_id for _ in range(3)]

    assert len(set(ids)) == 3
    for client_id in ids:
        parsed = uuid.UUID(client_id)
        assert (str(parsed), parsed.version, parsed.variant) == (client_id, 4, uuid.RFC_4122)


async def test_client_receives_publications_sent_with_cent(
    server: Server, sdk: SdkClients, api: cent.AsyncClient
) -> None:
    client, _ = await sdk.connect(server.port)
    _, sub_events, _ = await subscribe(client, "chat:news")

    result = await api.publish(
        cent.PublishRequest(channel="chat:news", data={"n": 1}, tags={"kind": "news"})
    )
    await api.broadcast(cent.BroadcastRequest(channels=["chat:news", "chat:other"], data={"n": 2}))

    pubs = await sub_events.next_publications(2)
    assert [p.data for p in pubs] == [{"n": 1}, {"n": 2}]
    assert pubs[0].offset == result.offset == 1
    assert pubs[0].tags == {"kind": "news"}


async def test_client_publication_reaches_every_subscriber_with_publisher_info(
    server: Server, sdk: SdkClients
) -> None:
    alice, _ = await sdk.connect(server.port, "alice")
    bob, _ = await sdk.connect(server.port, "bob")
    alice_sub, alice_events, _ = await subscribe(alice, "chat:room")
    _, bob_events, _ = await subscribe(bob, "chat:room")

    await alice_sub.publish(sdk.payload({"text": "hi bob"}))

    [to_bob] = await bob_events.next_publications(1)
    [to_alice] = await alice_events.next_publications(1)
    assert to_bob.data == to_alice.data == {"text": "hi bob"}
    assert to_bob.info is not None
    assert to_bob.info.user == "alice"
    assert to_bob.info.client == alice.client_id


async def test_subscribers_see_others_join_and_leave(server: Server, sdk: SdkClients) -> None:
    alice, _ = await sdk.connect(server.port, "alice")
    bob, _ = await sdk.connect(server.port, "bob")
    _, alice_events, _ = await subscribe(alice, "chat:hall", join_leave=True)
    bob_sub, _, _ = await subscribe(bob, "chat:hall")

    own_join = await next_event(alice_events.joins)  # as in Centrifugo, her own join too
    bob_join = await next_event(alice_events.joins)
    await bob_sub.unsubscribe()
    bob_leave = await next_event(alice_events.leaves)

    assert (own_join.info.user, own_join.info.client) == ("alice", alice.client_id)
    assert (bob_join.info.user, bob_join.info.client) == ("bob", bob.client_id)
    assert (bob_leave.info.user, bob_leave.info.client) == ("bob", bob.client_id)


async def test_client_publish_is_denied_with_103_where_namespace_forbids_it(
    sdk: SdkClients,
) -> None:
    readonly = msgspec.structs.replace(OPEN, allow_publish=False)
    config = make_config()
    config = msgspec.structs.replace(config, namespaces={**config.namespaces, "feed": readonly})
    async with running_server(config) as server:
        client, _ = await sdk.connect(server.port)
        sub, sub_events, _ = await subscribe(client, "feed:prices")

        with pytest.raises(ReplyError) as denied:
            await sub.publish(sdk.payload({"price": 1}))

        assert denied.value.code == ErrorCode.PERMISSION_DENIED.code == 103
        # The connection and the subscription survive the refusal.
        history = await sub.history(limit=10)
        assert history.publications == []
        assert sub.state is SubscriptionState.SUBSCRIBED
        assert sub_events.received == []
        await client.disconnect()


async def test_client_reads_presence_and_presence_stats(server: Server, sdk: SdkClients) -> None:
    alice, _ = await sdk.connect(server.port, "alice")
    alice_phone, _ = await sdk.connect(server.port, "alice")
    bob, _ = await sdk.connect(server.port, "bob")
    sub, _, _ = await subscribe(alice, "chat:team")
    await subscribe(alice_phone, "chat:team")
    await subscribe(bob, "chat:team")

    presence = await sub.presence()
    stats = await sub.presence_stats()

    assert set(presence.clients) == {alice.client_id, alice_phone.client_id, bob.client_id}
    assert {info.user for info in presence.clients.values()} == {"alice", "bob"}
    assert presence.clients[bob.client_id].client == bob.client_id
    assert (stats.num_clients, stats.num_users) == (3, 2)


async def test_client_reads_history_forwards_backwards_and_since_a_position(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    client, _ = await sdk.connect(server.port)
    sub, sub_events, _ = await subscribe(client, "chat:log")
    for n in range(1, 6):
        await http.call("publish", {"channel": "chat:log", "data": {"n": n}})
    await sub_events.next_publications(5)

    everything = await sub.history(limit=-1)
    newest_two = await sub.history(limit=2, reverse=True)
    top = await sub.history(limit=0)
    after_three = await sub.history(limit=10, since=StreamPosition(offset=3, epoch=top.epoch))

    assert [data_of(p.data)["n"] for p in everything.publications] == [1, 2, 3, 4, 5]
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    assert [data_of(p.data)["n"] for p in newest_two.publications] == [5, 4]
    assert top.publications == []
    assert (top.offset, top.epoch) == (5, everything.epoch)
    assert [p.offset for p in after_three.publications] == [4, 5]


async def test_client_history_of_a_namespace_without_history_is_not_available(
    server: Server, sdk: SdkClients
) -> None:
    client, _ = await sdk.connect(server.port)
    sub, _, _ = await subscribe(client, "nohistory:typing")

    with pytest.raises(ReplyError) as refused:
        await sub.history(limit=10)

    assert refused.value.code == ErrorCode.NOT_AVAILABLE.code


async def test_private_channel_subscription_without_token_is_denied_with_103(
    server: Server, sdk: SdkClients
) -> None:
    client, _ = await sdk.connect(server.port, "alice")
    events = SubEvents()
    sub = client.new_subscription("private:alice", events=events)

    await sub.subscribe()
    unsubscribed = await next_event(events.unsubscribed)

    assert unsubscribed.code == ErrorCode.PERMISSION_DENIED.code == 103
    assert sub.state is SubscriptionState.UNSUBSCRIBED
    with pytest.raises(SubscriptionUnsubscribedError):
        await sub.ready()


async def test_private_channel_subscription_with_token_succeeds(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    client, _ = await sdk.connect(server.port, "alice")
    token = mint_subscription_token(TEST_SECRET, "alice", "private:alice", info={"role": "me"})

    sub, sub_events, subscribed = await subscribe(client, "private:alice", token=token)
    await http.call("publish", {"channel": "private:alice", "data": {"secret": 42}})

    assert subscribed.channel == "private:alice"
    [pub] = await sub_events.next_publications(1)
    assert pub.data == {"secret": 42}
    presence = await sub.presence()
    assert data_of(presence.clients[client.client_id].chan_info) == {"role": "me"}


async def test_client_refreshes_its_expiring_token_and_stays_connected(
    server: Server, sdk: SdkClients
) -> None:
    refreshed = asyncio.Event()
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls >= 2:
            refreshed.set()
        return mint_connection_token(TEST_SECRET, "alice", ttl=2)

    client, events = await sdk.connect(
        server.port, token=mint_connection_token(TEST_SECRET, "alice", ttl=2), get_token=get_token
    )
    first_expiry = server.node.clients[client.client_id].expire_at
    assert first_expiry is not None

    async with asyncio.timeout(WAIT):
        # The SDK asks again only once its first refresh was answered: by then the
        # connection lives past the first token's exp.
        await refreshed.wait()

    later_expiry = server.node.clients[client.client_id].expire_at
    assert later_expiry is not None
    assert later_expiry > first_expiry
    assert events.disconnected.empty()
    assert client.client_id in server.node.clients  # the same connection all along
