"""User channels, as in Centrifugo: a personal channel ``#<user>`` that every connection of
the user joins at connect (``user_personal_channel``), and user-limited channels
(``dm:1#alice,bob``) that only the users they name may subscribe to without a token.
Driven with centrifuge-python in both encodings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import jwt
import msgspec
import pytest
from centrifuge import SubscriptionState
from sdk_kit import HttpApi, SdkClients, SubEvents, next_event, subscribe

from tether.config import Config
from tether.protocol.codes import ErrorCode
from tether.server import Server
from tether.testing.servers import OPEN, TEST_SECRET, make_config, running_server

pytestmark = pytest.mark.integration


def user_channels_config() -> Config:
    config = make_config(user_personal_channel=True, user_personal_channel_namespace="personal")
    personal = msgspec.structs.replace(OPEN, allow_subscribe=False, join_leave=False)
    dm = msgspec.structs.replace(OPEN, allow_user_limited_channels=True)
    return msgspec.structs.replace(
        config, namespaces={**config.namespaces, "personal": personal, "dm": dm}
    )


@pytest.fixture
async def node() -> AsyncIterator[Server]:
    async with running_server(user_channels_config()) as server:
        yield server


async def test_personal_channel_reaches_every_connection_of_the_user(
    node: Server, sdk: SdkClients
) -> None:
    _, phone_events = await sdk.connect(node.port, "alice")
    _, laptop_events = await sdk.connect(node.port, "alice")
    _, bob_events = await sdk.connect(node.port, "bob")
    async with aiohttp.ClientSession() as session:
        http = HttpApi(session, node)
        await http.call("publish", {"channel": "personal:#alice", "data": {"text": "for you"}})
        await http.call("publish", {"channel": "personal:#bob", "data": {"text": "for bob"}})

    to_phone = await next_event(phone_events.publications)
    to_laptop = await next_event(laptop_events.publications)
    to_bob = await next_event(bob_events.publications)
    assert (to_phone.channel, to_phone.pub.data) == ("personal:#alice", {"text": "for you"})
    assert (to_laptop.channel, to_laptop.pub.data) == ("personal:#alice", {"text": "for you"})
    assert (to_bob.channel, to_bob.pub.data) == ("personal:#bob", {"text": "for bob"})
    assert phone_events.publications.empty()
    assert laptop_events.publications.empty()


async def test_an_anonymous_connection_gets_no_personal_channel(
    node: Server, sdk: SdkClients
) -> None:
    # Centrifugo subscribes only connections of a user: "#" alone names nobody.
    anonymous = jwt.encode({}, TEST_SECRET, algorithm="HS256")
    await sdk.connect(node.port, token=anonymous)
    _, alice_events = await sdk.connect(node.port, "alice")

    await next_event(alice_events.subscribed)  # alice's personal channel, at connect
    assert set(node.node.hub.channels()) == {"personal:#alice"}


async def test_a_user_limited_channel_is_open_to_its_users_only(
    node: Server, sdk: SdkClients
) -> None:
    alice, _ = await sdk.connect(node.port, "alice")
    carol, _ = await sdk.connect(node.port, "carol")
    _, _, subscribed = await subscribe(alice, "dm:1#alice,bob")
    events = SubEvents()
    intruder = carol.new_subscription("dm:1#alice,bob", events=events)

    await intruder.subscribe()
    refused = await next_event(events.unsubscribed)

    assert subscribed.channel == "dm:1#alice,bob"
    assert refused.code == ErrorCode.PERMISSION_DENIED.code
    assert intruder.state is SubscriptionState.UNSUBSCRIBED
