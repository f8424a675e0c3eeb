"""Peer: python-socketio ``AsyncServer``, as its deployment docs set it up for asyncio.

aiohttp integration (``async_mode="aiohttp"``, the first asyncio deployment the docs
describe) on uvloop, WebSocket transport only (no long-polling upgrade dance).
Events: ``join`` (list of rooms, acknowledged) and ``pub`` (``{"room", "msgs"}``: each
message emitted to the room as event ``msg``).

usage: python socketio_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import socketio
import uvloop
from aiohttp import web

# async_handlers=False: events of a connection are handled in order. With the default
# (True) every event runs in its own task, and the emits of consecutive "pub" events
# interleave: the bench then reports order violations (measured: ~20% of deliveries).
sio = socketio.AsyncServer(
    async_mode="aiohttp",
    transports=["websocket"],
    cors_allowed_origins="*",
    async_handlers=False,
)


async def join(sid: str, rooms: list[str]) -> str:
    for room in rooms:
        await sio.enter_room(sid, room)
    return "ok"


async def pub(sid: str, data: dict[str, Any]) -> None:
    room = data["room"]
    for m in data["msgs"]:
        await sio.emit("msg", m, to=room)


# registered by call, not as decorators: python-socketio ships no types, and an untyped
# decorator would leave the handlers unchecked
sio.on("join", join)
sio.on("pub", pub)


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"python-socketio peer on ws://127.0.0.1:{port}/socket.io/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
