"""Bytes on the wire with and without fossil delta compression, in both encodings.

A 2 KiB JSON document (a board of cards) is published ``--updates`` times, each version
changing one small part (one card's state). Four subscribers of one channel count the
bytes of every frame they receive after their subscribe reply: JSON and Protobuf, each
with ``delta: "fossil"`` and without. The node runs in this process on real sockets
(:func:`tether.testing.servers.running_server`); only byte counts are measured, no time.

    python -m tether_bench.deltabytes [--updates 100]

Prints one JSON object: bytes per subscriber, and the ratio without/with delta.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import msgspec

from tether.auth import mint_connection_token
from tether.protocol import protobuf
from tether.server import Server
from tether.testing.servers import OPEN, TEST_SECRET, make_config, running_server
from tether.testing.wsclient import OP_BINARY, WSClient

CHANNEL = "doc:board"


def document(version: int) -> dict[str, Any]:
    """About 2 KiB of JSON; version ``v`` marks card ``v % 30`` done."""
    cards = [
        {"id": i, "title": f"card number {i}", "owner": "ana", "done": i == version % 30}
        for i in range(30)
    ]
    return {"board": "sprint", "version": version, "cards": cards}


async def _json_subscriber(server: Server, delta: bool) -> WSClient:
    ws = await WSClient.open(server.port)
    await ws.call("connect", {"token": mint_connection_token(TEST_SECRET, "json")})
    params: dict[str, Any] = {"channel": CHANNEL}
    if delta:
        params["delta"] = "fossil"
    reply = await ws.call("subscribe", params)
    assert reply.get("subscribe", {}).get("delta", False) == delta, reply
    return ws


async def _protobuf_subscriber(server: Server, delta: bool) -> WSClient:
    schema = protobuf.schema
    ws = await WSClient.open(server.port, headers={"Sec-WebSocket-Protocol": "centrifuge-protobuf"})
    token = mint_connection_token(TEST_SECRET, "protobuf")
    commands = [
        schema.Command(id=1, connect=schema.ConnectRequest(token=token)),
        schema.Command(
            id=2,
            subscribe=schema.SubscribeRequest(channel=CHANNEL, delta="fossil" if delta else ""),
        ),
    ]
    await ws.send_frame(
        OP_BINARY, b"".join(protobuf.delimit(c.SerializeToString()) for c in commands)
    )
    replies = 0
    while replies < 2:
        frame = await ws.recv_frame()
        for message in protobuf.split_messages(frame.payload, max_messages=100):
            reply = schema.Reply()
            reply.ParseFromString(message)
            if reply.id == 2:
                assert reply.subscribe.delta == delta, reply
            replies += 1 if reply.id else 0
    return ws


async def _count(ws: WSClient, publications: int) -> int:
    """Bytes of the frames carrying the next ``publications`` publications (headers too)."""
    total = 0
    seen = 0
    while seen < publications:
        frame = await ws.recv_frame()
        payload = frame.payload
        header = 2 + (2 if len(payload) >= 126 else 0) + (6 if len(payload) >= 65536 else 0)
        total += header + len(payload)
        seen += payload.count(b'"pub"') if frame.opcode != OP_BINARY else _pubs(payload)
    return total


def _pubs(payload: bytes) -> int:
    count = 0
    for message in protobuf.split_messages(payload, max_messages=10_000):
        reply = protobuf.schema.Reply()
        reply.ParseFromString(message)
        count += reply.push.HasField("pub")
    return count


async def measure(updates: int) -> dict[str, Any]:
    config = make_config()
    doc = msgspec.structs.replace(
        OPEN, join_leave=False, allowed_delta_types=("fossil",), delta_publish=True
    )
    config = msgspec.structs.replace(config, namespaces={**config.namespaces, "doc": doc})
    async with running_server(config) as server:
        subscribers = {
            "json": await _json_subscriber(server, False),
            "json_delta": await _json_subscriber(server, True),
            "protobuf": await _protobuf_subscriber(server, False),
            "protobuf_delta": await _protobuf_subscriber(server, True),
        }
        counting = {
            name: asyncio.ensure_future(_count(ws, updates)) for name, ws in subscribers.items()
        }
        for version in range(updates):
            await server.node.publish(CHANNEL, json.dumps(document(version)).encode())
        counts = {name: await task for name, task in counting.items()}
        for ws in subscribers.values():
            await ws.close()
    return {
        "updates": updates,
        "document_bytes": len(json.dumps(document(0)).encode()),
        "bytes": counts,
        "json_ratio": round(counts["json"] / counts["json_delta"], 1),
        "protobuf_ratio": round(counts["protobuf"] / counts["protobuf_delta"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.updates)), indent=2))


if __name__ == "__main__":
    main()
