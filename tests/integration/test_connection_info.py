"""What a subscription's presence entry says of its connection: the connection info
(``info`` of the connection token, as it was when the channel was subscribed) and the
channel info (``info`` of the subscription token, for that channel only)."""

from __future__ import annotations

from typing import Any

import pytest

from tether.auth import mint_connection_token, mint_subscription_token
from tether.server import Server
from tether.testing.servers import TEST_SECRET
from tether.testing.wsclient import WSClient

pytestmark = pytest.mark.integration


async def entry_of(ws: WSClient, channel: str) -> dict[str, Any]:
    """The one presence entry of ``channel``."""
    reply = await ws.call("presence", {"channel": channel})
    [entry] = reply["presence"]["presence"].values()
    return dict(entry)


async def test_every_channel_names_the_connection_info_and_only_its_own_channel_info(
    server: Server,
) -> None:
    token = mint_connection_token(TEST_SECRET, "alice", info={"name": "Alice"})
    sub_token = mint_subscription_token(TEST_SECRET, "alice", "chat:b", info={"role": "admin"})
    async with await WSClient.open(server.port) as ws:
        assert "connect" in await ws.call("connect", {"token": token})
        assert "subscribe" in await ws.call("subscribe", {"channel": "chat:b", "token": sub_token})
        assert "subscribe" in await ws.call("subscribe", {"channel": "chat:a"})
        assert "subscribe" in await ws.call("subscribe", {"channel": "chat:c"})
        a, b, c = [await entry_of(ws, ch) for ch in ("chat:a", "chat:b", "chat:c")]

    assert a == c == {"user": "alice", "client": a["client"], "conn_info": {"name": "Alice"}}
    assert b == {**a, "chan_info": {"role": "admin"}}


async def test_a_channel_subscribed_after_a_refresh_names_the_refreshed_connection_info(
    server: Server,
) -> None:
    first = mint_connection_token(TEST_SECRET, "alice", ttl=600, info={"v": 1})
    second = mint_connection_token(TEST_SECRET, "alice", ttl=600, info={"v": 2})
    async with await WSClient.open(server.port) as ws:
        assert "connect" in await ws.call("connect", {"token": first})
        assert "subscribe" in await ws.call("subscribe", {"channel": "chat:before"})
        assert "refresh" in await ws.call("refresh", {"token": second})
        assert "subscribe" in await ws.call("subscribe", {"channel": "chat:after"})
        after = await entry_of(ws, "chat:after")

    assert after["conn_info"] == {"v": 2}
