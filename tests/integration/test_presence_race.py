"""A quick unsubscribe and resubscribe keeps the client's presence, and its pushes in order.

The leave of the first subscription finishes in a node-owned task (presence remove, leave
push) after the unsubscribe reply; the resubscribe waits for it before it re-adds the
presence entry and publishes its join. Without that, the late remove deleted the entry
the resubscribe had just added, and the old leave push could follow the new join.
"""

from __future__ import annotations

from typing import Any

import pytest

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.servers import TEST_SECRET
from tether.testing.wsclient import WSClient

pytestmark = pytest.mark.integration

CHANNEL = "chat:race"


def frame_of(*commands: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": i, name: params} for i, (name, params) in enumerate(commands, start=1)]


async def test_unsubscribe_then_subscribe_in_one_frame_keeps_the_presence_entry(
    server: Server,
) -> None:
    async with await WSClient.open(server.port) as ws:
        await ws.send_commands(
            *frame_of(
                ("connect", {"token": mint_connection_token(TEST_SECRET, "alice")}),
                ("subscribe", {"channel": CHANNEL}),
                ("unsubscribe", {"channel": CHANNEL}),
                ("subscribe", {"channel": CHANNEL}),
            )
        )
        for cid in (1, 2, 3, 4):
            assert "error" not in await ws.reply(cid)
        # The node's leave task has had every chance to run by the time this round
        # trip through the same connection's worker is answered.
        stats = await ws.call("presence_stats", {"channel": CHANNEL})
        presence = await ws.call("presence", {"channel": CHANNEL})

    assert stats["presence_stats"] == {"num_clients": 1, "num_users": 1}
    assert [info["user"] for info in presence["presence"]["presence"].values()] == ["alice"]


async def test_resubscribe_join_follows_the_leave_of_the_old_subscription(
    server: Server,
) -> None:
    async with await WSClient.open(server.port) as watcher, await WSClient.open(server.port) as ws:
        token = mint_connection_token(TEST_SECRET, "bob")
        assert "connect" in await watcher.call("connect", {"token": token})
        assert "subscribe" in await watcher.call("subscribe", {"channel": CHANNEL})
        await ws.send_commands(
            *frame_of(
                ("connect", {"token": mint_connection_token(TEST_SECRET, "alice")}),
                ("subscribe", {"channel": CHANNEL}),
                ("unsubscribe", {"channel": CHANNEL}),
                ("subscribe", {"channel": CHANNEL}),
            )
        )
        for cid in (1, 2, 3, 4):
            assert "error" not in await ws.reply(cid)
        seen = []
        while len(seen) < 3:
            push = await watcher.next_push()
            kind = "join" if "join" in push else "leave" if "leave" in push else None
            if kind and push[kind]["info"]["user"] == "alice":
                seen.append(kind)

    assert seen == ["join", "leave", "join"]
