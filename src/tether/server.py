"""Assembles and runs one node: broker, node, WebSocket listener, HTTP port."""

from __future__ import annotations

import asyncio
import gc
import signal
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from tether import cluster
from tether.brokers.base import Broker, PresenceStore
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.config import Config, sentinel_address
from tether.core.node import Node
from tether.errors import BrokerUnavailable
from tether.protocol.codes import DisconnectCode, DisconnectInfo
from tether.proxy.backend import HttpBackend
from tether.proxy.events import Notifier
from tether.resilience import CircuitBreaker, RetryBudget
from tether.transports.http.app import build_app
from tether.transports.websocket import server as websocket

log = structlog.get_logger("tether.server")


def _breaker(config: Config, name: str) -> CircuitBreaker:
    return CircuitBreaker(
        name, failure_threshold=config.breaker_failures, reset_timeout=config.breaker_reset
    )


def make_broker(config: Config) -> tuple[Broker, PresenceStore]:
    """The broker and presence store the config names."""
    if config.broker == "redis" and config.redis_urls:
        return _make_sharded_broker(config)
    if config.broker == "redis" and config.redis_cluster:
        from tether.brokers.guarded import GuardedBroker
        from tether.brokers.redis_cluster import RedisClusterBroker, RedisClusterPresenceStore

        cluster = GuardedBroker(
            RedisClusterBroker(
                config.redis_url, prefix=config.redis_prefix, meta_ttl=config.history_meta_ttl
            ),
            breaker=_breaker(config, "broker"),
            budget=RetryBudget(config.retry_budget_ratio),
        )
        store = RedisClusterPresenceStore(
            config.redis_url, prefix=config.redis_prefix, ttl=config.presence_ttl
        )
        return cluster, store
    if config.broker == "redis":
        from tether.brokers.guarded import GuardedBroker
        from tether.brokers.redis import RedisBroker, RedisPresenceStore, Sentinels

        sentinels = (
            Sentinels(
                [sentinel_address(a) for a in config.redis_sentinels],
                config.redis_sentinel_master,
            )
            if config.redis_sentinels
            else None
        )
        broker: Broker = GuardedBroker(
            RedisBroker(
                config.redis_url,
                prefix=config.redis_prefix,
                meta_ttl=config.history_meta_ttl,
                sentinels=sentinels,
            ),
            breaker=_breaker(config, "broker"),
            budget=RetryBudget(config.retry_budget_ratio),
        )
        presence: PresenceStore = RedisPresenceStore(
            config.redis_url,
            prefix=config.redis_prefix,
            ttl=config.presence_ttl,
            sentinels=sentinels,
        )
        return broker, presence
    return MemoryBroker(meta_ttl=config.history_meta_ttl), MemoryPresenceStore()


def _make_sharded_broker(config: Config) -> tuple[Broker, PresenceStore]:
    """One RedisBroker per ``redis_urls`` entry behind a ShardedBroker. Each shard has its
    own circuit breaker (a failure domain of its own: one dead shard must not open the
    breaker of every channel); the retry budget is shared, so retries add at most its
    ratio to the node's whole load."""
    from tether.brokers.guarded import GuardedBroker
    from tether.brokers.redis import RedisBroker, RedisPresenceStore
    from tether.brokers.sharded import ShardedBroker, ShardedPresenceStore, shard_address

    budget = RetryBudget(config.retry_budget_ratio)
    shards: dict[str, Broker] = {}
    stores: dict[str, PresenceStore] = {}
    for url in config.redis_urls:
        address = shard_address(url)
        shards[address] = GuardedBroker(
            RedisBroker(url, prefix=config.redis_prefix, meta_ttl=config.history_meta_ttl),
            breaker=_breaker(config, f"broker {address}"),
            budget=budget,
        )
        stores[address] = RedisPresenceStore(
            url, prefix=config.redis_prefix, ttl=config.presence_ttl
        )
    return ShardedBroker(shards), ShardedPresenceStore(stores)


@dataclass
class Server:
    """A running node. ``port``/``http_port`` are the bound ports (useful with port 0)."""

    config: Config
    node: Node = field(init=False)
    port: int = 0
    http_port: int = 0
    reuse_port: bool = False
    """Listen with SO_REUSEPORT, so that several worker processes share the ports."""
    announcer: cluster.Announcer = field(init=False)
    """Announces this node to the others (the cluster view, ``/api/info``)."""
    backend: HttpBackend | None = None
    """The backend hooks, when some are configured."""
    notifier: Notifier = field(init=False)
    """Webhooks and offline push (``notifier.enabled`` False when neither is configured)."""
    _ws: asyncio.Server | None = None
    _http: web.AppRunner | None = None

    async def start(self) -> None:
        config = self.config
        broker, presence = make_broker(config)
        hooks = HttpBackend(config)
        self.backend = hooks if hooks.enabled else None
        self.node = Node(config, broker, presence, backend=self.backend)
        self.notifier = Notifier(config, node=self.node.name, presence=presence.get)
        if self.notifier.enabled:
            self.node.events = self.notifier
            await self.notifier.start()
        if self.backend is not None:
            await self.backend.start()
        await self.node.start()
        self.announcer = cluster.Announcer(self.node)
        self.node.spawn(self.announcer.run(), "announce")
        self._ws = await websocket.serve(
            self.node, config.host, config.port, reuse_port=self.reuse_port
        )
        self.port = self._ws.sockets[0].getsockname()[1]
        app = build_app(self.node, backend=self.backend, notifier=self.notifier)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(
            self._http,
            config.host,
            config.http_port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        await site.start()
        self.http_port = self._http.addresses[0][1]
        log.info(
            "tether started",
            node=self.node.name,
            websocket=f"ws://{config.host}:{self.port}{websocket.PATH}",
            api=f"http://{config.host}:{self.http_port}/api",
        )

    async def stop(
        self, code: DisconnectInfo = DisconnectCode.SHUTDOWN, *, drain: bool = False
    ) -> None:
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
        try:
            await self.announcer.withdraw()
        except BrokerUnavailable as exc:
            # The entry ages out of the others' lists within cluster.STALE_AFTER.
            log.warning("could not withdraw the node's announcement", error=str(exc))
        await self.node.close(code)
        if self.backend is not None:
            await self.backend.close()
        if self.notifier.enabled:
            await self.notifier.close()  # after the clients: their disconnects go out too
        if self._http is not None:
            await self._http.cleanup()
        if self._ws is not None:
            await self._ws.wait_closed()
        log.info("tether stopped", node=self.node.name)


GC_THRESHOLDS = (50_000, 20, 100)
"""The collector's thresholds while serving (CPython's defaults: 700, 10, 10)."""


def tune_gc() -> None:
    """Freeze what startup made and collect less often while serving.

    A connection makes a hundred-odd objects that live as long as it does. With
    CPython's default thresholds a connect storm ran a young collection every 700
    allocations and a full one each time the heap grew by a quarter, each full one
    walking every live connection: 20% of the server's CPU over
    ``tether-bench run connect-cost -n 8000`` (CPU time in ``gc.callbacks``), 4% with
    these thresholds. The startup objects (modules, config) are moved out of the
    collector's sight (:func:`gc.freeze`); the young generation collects every 50,000
    allocations, and a full collection waits for 2,000 of those (and, as always in
    CPython, for the heap to have grown by a quarter). Cyclic garbage is reclaimed
    later, not never; reference counting frees everything outside a cycle at once."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run(config: Config, *, reuse_port: bool = False) -> None:
    """Run until SIGINT or SIGTERM; then drain (a second signal ends the drain at once)."""
    server = Server(config, reuse_port=reuse_port)
    await server.start()
    tune_gc()
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


# -- several worker processes on one host (``tether serve --workers N``) ------------------


def check_workers(config: Config, workers: int) -> None:
    """Raises :class:`ConfigError` if ``config`` cannot run ``workers`` worker processes."""
    import socket

    from tether.errors import ConfigError

    if workers < 1:
        raise ConfigError("invalid option: --workers must be 1 or more")
    if workers == 1:
        return
    if config.broker != "redis":
        raise ConfigError(
            f'--workers {workers} needs broker = "redis": the worker processes share '
            "channels, streams and presence only through Redis (the memory broker would "
            "give each worker its own, so clients on different workers would not see "
            "each other's publications)"
        )
    if not config.port or not config.http_port:
        raise ConfigError("--workers needs fixed `port` and `http_port` (not 0) to share them")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers needs SO_REUSEPORT, which this platform lacks")


def serve_workers(config: Config, workers: int) -> int:
    """Run ``workers`` processes, each a whole node with its own event loop, all listening
    on the same two ports with SO_REUSEPORT (the kernel spreads new connections over
    them). They share channels, streams and presence only through Redis, exactly as nodes
    on different hosts do, so ``broker = "redis"`` is required.

    The calling process supervises: SIGTERM/SIGINT are passed on to every worker (which
    drain); if a worker dies on its own, the others are stopped too and the exit status
    is 1, so that the process manager restarts the whole unit. If the supervisor itself
    is killed (SIGKILL, OOM killer), the kernel sends each worker SIGTERM (Linux), so no
    worker outlives it holding the ports. Returns the exit status.
    Raises :class:`ConfigError` for a configuration that cannot run several workers.
    """
    import multiprocessing
    import multiprocessing.connection
    import os
    import socket

    import msgspec

    check_workers(config, workers)
    base = config.node_name or socket.gethostname()
    # fork: the workers start from this process as it is (config loaded, logs set up),
    # and no event loop exists yet to be inherited.
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=_worker,
            args=(msgspec.structs.replace(config, node_name=f"{base}-w{i}"), os.getpid()),
            name=f"tether-worker-{i}",
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    log.info("workers started", workers=workers, pids=[p.pid for p in processes])
    stopping = False

    def pass_on(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    status = 0
    running = {p.sentinel: p for p in processes}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            assert isinstance(sentinel, int)  # process sentinels are file descriptors
            process = running.pop(sentinel)
            process.join()
            if not stopping:
                log.error(
                    "worker died; stopping the others",
                    worker=process.name,
                    exitcode=process.exitcode,
                )
                status = 1
                pass_on(signal.SIGTERM, None)
    return status


def _terminate_with(supervisor: int) -> None:
    """Linux: have the kernel send this process SIGTERM (a graceful drain) when its
    parent ``supervisor`` dies, however it dies. Elsewhere: nothing."""
    import ctypes
    import os
    import sys

    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed", errno=ctypes.get_errno())
        return
    if os.getppid() != supervisor:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(config: Config, supervisor: int) -> None:
    """One worker process: a node on the shared ports, until its supervisor says stop
    (or dies)."""
    import os

    # Own process group: a Ctrl-C in the terminal reaches the supervisor only, which
    # passes it on once (a second signal would cut the drain short).
    os.setpgid(0, 0)
    _terminate_with(supervisor)
    if config.use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(run(config, reuse_port=True))
            return
    asyncio.run(run(config, reuse_port=True))
