"""Where Tether once differed from Centrifugo v6, it now does what the SDKs expect.

Each test drives the real centrifuge-python SDK (or the HTTP API, or a raw socket where
the SDK cannot send the bytes in question) and asserts what the user's app sees.
"""

from __future__ import annotations

import jwt
import pytest
from centrifuge import DeltaType, StreamPosition, SubscriptionState
from sdk_kit import HttpApi, SdkClients, SubEvents, next_event, subscribe

from tether.protocol.codes import ErrorCode
from tether.server import Server
from tether.testing.servers import TEST_SECRET
from tether.testing.wsclient import WSClient

pytestmark = pytest.mark.integration


async def test_get_state_flow_with_a_zero_position_receives_what_was_published(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    # The SDK's getState flow subscribes with recover, offset 0, no epoch and the
    # reject-unrecovered flag: an empty epoch means "any epoch" (Centrifugo v6).
    for n in (1, 2, 3):
        await http.call("publish", {"channel": "chat:state", "data": {"n": n}})
    client, _ = await sdk.connect(server.port)

    async def get_state(channel: str) -> StreamPosition:
        return StreamPosition(offset=0, epoch="")

    _, events, subscribed = await subscribe(client, "chat:state", get_state=get_state)

    assert subscribed.recovered is True
    assert [p.data["n"] for p in await events.next_publications(3)] == [1, 2, 3]
    assert events.errors == []


async def test_history_since_a_position_without_epoch_returns_what_follows(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    client, _ = await sdk.connect(server.port)
    sub, events, _ = await subscribe(client, "chat:since")
    for n in (1, 2, 3):
        await http.call("publish", {"channel": "chat:since", "data": {"n": n}})
    await events.next_publications(3)

    page = await sub.history(limit=10, since=StreamPosition(offset=1, epoch=""))

    assert [p.offset for p in page.publications] == [2, 3]


async def test_token_without_sub_connects_as_the_anonymous_user(
    server: Server, sdk: SdkClients
) -> None:
    token = jwt.encode({"info": {"device": "kiosk"}}, TEST_SECRET, algorithm="HS256")
    client, _ = await sdk.connect(server.port, token=token)
    sub, _, _ = await subscribe(client, "chat:kiosk")

    presence = await sub.presence()

    assert server.node.clients[client.client_id].user == ""
    assert presence.clients[client.client_id].user == ""


async def test_presence_stats_and_history_of_an_empty_channel_write_zeros(
    server: Server, http: HttpApi
) -> None:
    # Centrifugo always writes the counts and the stream position: the JS SDK reads
    # numClients straight from them.
    status, stats = await http.post("presence_stats", {"channel": "chat:nobody"})
    _, history = await http.post("history", {"channel": "chat:nobody", "limit": 0})

    assert status == 200
    assert stats["result"] == {"num_clients": 0, "num_users": 0}
    assert set(history["result"]) == {"publications", "epoch", "offset"}
    assert history["result"]["offset"] == 0


@pytest.mark.parametrize("flag", [1, 1 | 4, 1 | 2**40], ids=["compaction", "bit-2", "high-bit"])
async def test_unknown_subscribe_flag_bits_are_ignored(server: Server, flag: int) -> None:
    # Swift and Java always send bit 0 (channel compaction, which Tether does not do).
    async with await WSClient.open(server.port) as ws:
        token = jwt.encode({"sub": "alice"}, TEST_SECRET, algorithm="HS256")
        assert "connect" in await ws.call("connect", {"token": token})

        reply = await ws.call("subscribe", {"channel": "chat:flags", "flag": flag})

    assert "subscribe" in reply, reply
    assert "id" not in reply["subscribe"]  # no channel id: compaction is not negotiated


async def test_invalid_subscription_token_unsubscribes_with_103_and_keeps_the_connection(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    # Centrifugo v6 answers a subscription token that does not verify with error 103:
    # the SDK's subscription error and unsubscribed callbacks fire, other subscriptions
    # of the connection go on.
    client, client_events = await sdk.connect(server.port, "alice")
    _, chat, _ = await subscribe(client, "chat:still")
    forged = jwt.encode(
        {"sub": "alice", "channel": "private:x"}, "wrong-secret-" + "y" * 32, "HS256"
    )
    events = SubEvents()
    sub = client.new_subscription("private:x", events=events, token=forged)

    await sub.subscribe()
    unsubscribed = await next_event(events.unsubscribed)
    await http.call("publish", {"channel": "chat:still", "data": {"n": 1}})

    assert unsubscribed.code == ErrorCode.PERMISSION_DENIED.code
    assert sub.state is SubscriptionState.UNSUBSCRIBED
    assert [p.data for p in await chat.next_publications(1)] == [{"n": 1}]
    assert client_events.disconnected.empty()


async def test_sdk_rebuilds_fossil_delta_publications_to_the_full_documents(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    # delta: "fossil" where the namespace allows it (doc: allowed_delta_types, delta_publish).
    client, _ = await sdk.connect(server.port)
    _, events, _ = await subscribe(client, "doc:board", delta=DeltaType.FOSSIL)
    documents = [
        {"board": "sprint", "items": [{"id": i, "done": i < v} for i in range(40)]}
        for v in range(1, 6)
    ]
    for document in documents:
        await http.call("publish", {"channel": "doc:board", "data": document})

    received = await events.next_publications(5)

    assert [p.data for p in received] == documents
    assert [p.delta for p in received] == [False, True, True, True, True]


async def test_a_publish_asking_for_delta_reaches_delta_subscribers_as_one(
    server: Server, sdk: SdkClients, http: HttpApi
) -> None:
    # patch: delta allowed, no delta_publish: only a publish with "delta": true (the
    # server API field cent sends) goes as a delta, against the channel's previous one.
    client, _ = await sdk.connect(server.port)
    _, events, _ = await subscribe(client, "patch:board", delta=DeltaType.FOSSIL)
    documents = [
        {"board": "sprint", "items": [{"id": i, "done": i < v} for i in range(40)]}
        for v in range(1, 5)
    ]
    asked = [False, True, True, False]
    for document, delta in zip(documents, asked, strict=True):
        await http.call("publish", {"channel": "patch:board", "data": document, "delta": delta})

    received = await events.next_publications(4)

    assert [p.data for p in received] == documents
    assert [p.delta for p in received] == asked
    history = await http.call("history", {"channel": "patch:board", "limit": -1})
    assert [p["data"] for p in history["publications"]] == documents
    assert not any("delta" in p for p in history["publications"])
