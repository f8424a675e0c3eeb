"""Assembles and runs one node: broker, node, WebSocket listener, HTTP port."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from tether.brokers.base import Broker, PresenceStore
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.config import Config
from tether.core.node import Node
from tether.protocol.codes import DisconnectCode
from tether.transports.http.app import build_app
from tether.transports.websocket import server as websocket

log = structlog.get_logger("tether.server")


def make_broker(config: Config) -> tuple[Broker, PresenceStore]:
    """The broker and presence store the config names."""
    if config.broker == "redis":
        from tether.brokers.guarded import GuardedBroker
        from tether.brokers.redis import RedisBroker, RedisPresenceStore

        broker: Broker = GuardedBroker(
            RedisBroker(
                config.redis_url, prefix=config.redis_prefix, meta_ttl=config.history_meta_ttl
            )
        )
        presence: PresenceStore = RedisPresenceStore(
            config.redis_url, prefix=config.redis_prefix, ttl=config.presence_ttl
        )
        return broker, presence
    return MemoryBroker(meta_ttl=config.history_meta_ttl), MemoryPresenceStore()


@dataclass
class Server:
    """A running node. ``port``/``http_port`` are the bound ports (useful with port 0)."""

    config: Config
    node: Node = field(init=False)
    port: int = 0
    http_port: int = 0
    _ws: asyncio.Server | None = None
    _http: web.AppRunner | None = None

    async def start(self) -> None:
        config = self.config
        broker, presence = make_broker(config)
        self.node = Node(config, broker, presence, frame=websocket.frame)
        await self.node.start()
        self._ws = await websocket.serve(self.node, config.host, config.port)
        self.port = self._ws.sockets[0].getsockname()[1]
        self._http = web.AppRunner(build_app(self.node), access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, config.host, config.http_port, reuse_address=True)
        await site.start()
        self.http_port = self._http.addresses[0][1]
        log.info(
            "tether started",
            node=self.node.name,
            websocket=f"ws://{config.host}:{self.port}{websocket.PATH}",
            api=f"http://{config.host}:{self.http_port}/api",
        )

    async def stop(self, code: int = DisconnectCode.SHUTDOWN, *, drain: bool = False) -> None:
        """Stop accepting, close every client with ``code`` (reconnect advice), stop the
        ports. With ``drain``, the disconnects are spread over ``drain_window`` seconds
        (bounded by ``drain_timeout``); cancelling ``stop`` ends the drain at once."""
        self.node.closing = True
        if self._ws is not None:
            self._ws.close()
        if drain:
            try:
                await asyncio.wait_for(
                    self.node.drain(self.config.drain_window, code), self.config.drain_timeout
                )
            except TimeoutError:
                log.warning("drain timed out; closing the remaining connections")
        await self.node.close(code)
        if self._http is not None:
            await self._http.cleanup()
        if self._ws is not None:
            await self._ws.wait_closed()
        log.info("tether stopped", node=self.node.name)


async def run(config: Config) -> None:
    """Run until SIGINT or SIGTERM; then drain (a second signal ends the drain at once)."""
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    draining: asyncio.Task[None] | None = None

    def on_signal() -> None:
        if draining is None:
            stop.set()
        else:
            log.warning("second signal: closing the remaining connections now")
            draining.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    log.info("signal received, draining", window=config.drain_window)
    draining = loop.create_task(server.stop(drain=True))
    try:
        await draining
    except asyncio.CancelledError:
        await server.stop()
