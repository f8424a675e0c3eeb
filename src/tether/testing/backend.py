"""A real HTTP backend for tests of the hooks, webhooks and push: an aiohttp app on a free
port whose every path answers as a test tells it to, and counts what it got.

    async with ScriptedBackend() as backend:
        backend.answer("/connect", {"result": {"user": "alice"}})
        backend.hang("/publish")                # never answers
        ...
        assert backend.count("/connect") == 1

Behaviours: :meth:`answer` (JSON, or raw bytes), :meth:`status`, :meth:`redirect`,
:meth:`hang`, :meth:`drip` (a byte at a time), :meth:`huge`, or a function of the request
body (:meth:`handle`). A path without a behaviour answers 404.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for a backend that a test starts later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


Handler = Callable[[dict[str, Any]], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class ScriptedBackend:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _behaviours: dict[str, Handler] = field(default_factory=dict)
    _counts: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    _runner: web.AppRunner | None = None
    _hanging: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _streams: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(
        default_factory=dict
    )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._hanging.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedBackend:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_count(self, path: str, count: int) -> None:
        """Until ``path`` has received ``count`` requests (fails after 10 s)."""
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: self._counts[path] >= count)

    def count(self, path: str) -> int:
        """Requests received on ``path`` (whatever the answer)."""
        return self._counts[path]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path == path]

    # -- behaviours ----------------------------------------------------------------------

    def handle(self, path: str, handler: Handler) -> None:
        self._streams.pop(path, None)
        self._behaviours[path] = handler

    def answer(self, path: str, answer: object | bytes) -> None:
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.handle(path, lambda _: web.Response(body=body, content_type="application/json"))

    def status(self, path: str, status: int) -> None:
        self.handle(path, lambda _: web.Response(status=status, text="no"))

    def redirect(self, path: str, location: str) -> None:
        self.handle(path, lambda _: web.Response(status=307, headers={"Location": location}))

    def hang(self, path: str) -> None:
        async def never(_: dict[str, Any]) -> web.StreamResponse:
            await self._hanging.wait()
            return web.Response(status=503)

        self._hanging.clear()
        self.handle(path, never)

    def huge(self, path: str, size: int) -> None:
        self.answer(path, b'{"result": {"data": "' + b"x" * size + b'"}}')

    def drip(self, path: str, body: bytes, interval: float) -> None:
        """Answer 200 with ``body``, one byte every ``interval`` seconds."""

        async def dripping(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for i in range(len(body)):
                await response.write(body[i : i + 1])
                await asyncio.sleep(interval)
            await response.write_eof()
            return response

        self._streams[path] = dripping

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self._counts[path] += 1
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        self.received.append(Received(path, body, dict(request.headers)))
        async with self._arrived:
            self._arrived.notify_all()
        stream = self._streams.get(path)
        if stream is not None:
            return await stream(request)
        behaviour = self._behaviours.get(path)
        if behaviour is None:
            return web.Response(status=404)
        result = behaviour(body)
        if isinstance(result, web.StreamResponse):
            return result
        return await result
