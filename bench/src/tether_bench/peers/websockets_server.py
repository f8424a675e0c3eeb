"""Peer: the websockets library (asyncio implementation) with its ``broadcast()``.

The documented way to fan out with websockets (docs/topics/broadcast.rst): keep the set
of connections of each room and call ``broadcast(room, message)``, which writes to every
connection without waiting. Same plain JSON protocol as the raw ceiling. Compression and
keepalive pings are off (the bench client, like the others, does not need them and the
ceiling does none).

usage: python websockets_server.py PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    joined: list[str] = []
    try:
        async for message in ws:
            msg: dict[str, Any] = json.loads(message)
            if msg["op"] == "sub":
                for room in msg["rooms"]:
                    rooms.setdefault(room, set()).add(ws)
                    joined.append(room)
                await ws.send('{"op":"subok"}')
            elif msg["op"] == "pub":
                members = rooms.get(msg["room"])
                if members:
                    for m in msg["msgs"]:
                        broadcast(members, json.dumps(m, separators=(",", ":")))
    finally:
        for room in joined:
            members = rooms.get(room)
            if members is not None:
                members.discard(ws)
                if not members:
                    del rooms[room]


async def main(port: int) -> None:
    async with serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=None,
        max_queue=None,
        backlog=4096,
    ) as server:
        print(f"websockets peer on ws://127.0.0.1:{port}/", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
