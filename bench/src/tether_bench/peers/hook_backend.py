"""Peer: an app's backend behind Tether's hooks, for the ``hook-outage`` scenario.

A real HTTP server process (aiohttp) that answers Tether's proxy hooks the way a
Centrifugo-compatible backend does, and can be told to **hang** on chosen paths: a hung
path accepts the request and never answers (the handler waits until Tether gives up and
closes the connection). It counts every request that reaches it, per path, hung or not.

    POST /hooks/publish, /hooks/rpc, ...   {"result": {}}  (rpc: {"result": {"data": {"ok": true}}})
    POST /control/hang   {"paths": ["/hooks/publish"]}   those paths hang from now on
    POST /control/heal                                    every path answers again
    GET  /control/stats  {"received": {path: count}, "hanging": [path, ...], "waiting": n}

usage: python -m tether_bench.peers.hook_backend PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import uvloop
from aiohttp import web

RESULT = b'{"result":{}}'
RPC_RESULT = b'{"result":{"data":{"ok":true}}}'


class Backend:
    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.hanging: set[str] = set()
        self.waiting = 0
        """Requests being hung right now."""
        self.healed = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        path = request.path
        self.received[path] += 1
        await request.read()
        if path in self.hanging:
            self.waiting += 1
            try:
                # Never answered while hanging; Tether's timeout closes the connection,
                # which cancels this handler (handler_cancellation).
                await self.healed.wait()
            finally:
                self.waiting -= 1
        body = RPC_RESULT if path.endswith("/rpc") else RESULT
        return web.Response(body=body, content_type="application/json")

    async def hang(self, request: web.Request) -> web.Response:
        paths = (await request.json()).get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise web.HTTPBadRequest(text='expected {"paths": ["/hooks/...", ...]}')
        self.healed.clear()
        self.hanging.update(paths)
        return web.json_response({"hanging": sorted(self.hanging)})

    async def heal(self, _: web.Request) -> web.Response:
        self.hanging.clear()
        self.healed.set()
        return web.json_response({"hanging": []})

    async def stats(self, _: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(
                {
                    "received": dict(self.received),
                    "hanging": sorted(self.hanging),
                    "waiting": self.waiting,
                }
            ),
            content_type="application/json",
        )


async def serve(port: int) -> None:
    backend = Backend()
    app = web.Application()
    app.router.add_post("/control/hang", backend.hang)
    app.router.add_post("/control/heal", backend.heal)
    app.router.add_get("/control/stats", backend.stats)
    app.router.add_post("/hooks/{hook}", backend.hook)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
