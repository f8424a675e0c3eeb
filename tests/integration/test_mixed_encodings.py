"""One channel, JSON and Protobuf subscribers at once (centrifuge-python in both encodings).

The hub builds each publication's frame once per encoding present on the channel; every
subscriber gets every publication once, in offset order, whatever it speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sdk_kit import HttpApi, SdkClients, subscribe

from tether.server import Server

pytestmark = pytest.mark.integration


@pytest.fixture
async def both() -> AsyncIterator[tuple[SdkClients, SdkClients]]:
    json_clients, protobuf_clients = SdkClients("json"), SdkClients("protobuf")
    try:
        yield json_clients, protobuf_clients
    finally:
        await json_clients.close()
        await protobuf_clients.close()


async def test_json_and_protobuf_subscribers_each_get_every_publication_once_in_order(
    server: Server, http: HttpApi, both: tuple[SdkClients, SdkClients]
) -> None:
    json_clients, protobuf_clients = both
    events = []
    for clients in (json_clients, protobuf_clients, json_clients, protobuf_clients):
        client, _ = await clients.connect(server.port)
        _, sub_events, _ = await subscribe(client, "chat:mixed")
        events.append(sub_events)

    for n in range(1, 21):
        await http.call("publish", {"channel": "chat:mixed", "data": {"n": n}})
    for sub_events in events:
        await sub_events.until_offset(20)

    for sub_events in events:
        assert [p.offset for p in sub_events.received] == list(range(1, 21))
        assert [p.data["n"] for p in sub_events.received] == list(range(1, 21))


async def test_a_protobuf_client_publication_reaches_a_json_subscriber(
    server: Server, both: tuple[SdkClients, SdkClients]
) -> None:
    json_clients, protobuf_clients = both
    phone, _ = await protobuf_clients.connect(server.port, "alice")
    browser, _ = await json_clients.connect(server.port, "bob")
    phone_sub, phone_events, _ = await subscribe(phone, "chat:mixed")
    _, browser_events, _ = await subscribe(browser, "chat:mixed")

    await phone_sub.publish(protobuf_clients.payload({"text": "from the phone"}))

    [to_browser] = await browser_events.next_publications(1)
    [to_phone] = await phone_events.next_publications(1)
    assert to_browser.data == to_phone.data == {"text": "from the phone"}
    assert to_browser.info is not None
    assert to_browser.info.user == "alice"
