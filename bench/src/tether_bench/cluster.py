"""A local cluster for tests and chaos runs: Tether node processes, HAProxy in front of them,
and lean raw-protocol subscribers that reconnect through it.

Everything here is a real process on real sockets: nodes are ``python -m tether serve``
children (so ``kill -9`` is a real crash), HAProxy is the Debian ``haproxy`` binary with
round-robin balancing and no stickiness (so a reconnecting client lands on any node)::

    redis = RedisServer(); redis.start()
    nodes = [NodeProcess(f"n{i}", workdir, redis.url) for i in range(3)]
    for node in nodes:
        node.start()
    for node in nodes:
        await node.wait_ready()
    lb = HAProxy(workdir, nodes); lb.start(); await lb.wait_up()
    follower = Follower(lb.port, token, ["chat:a"])   # run() it in a task you own
    ...
    nodes[0].kill()                                   # SIGKILL: a crashed node

Processes are children of the test; :meth:`NodeProcess.stop`, :meth:`HAProxy.stop` end
them (and a test must call them in a ``finally``). The start methods block for a moment;
the wait methods are async.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tether.testing.wsclient import Closed, HandshakeRejected, WSClient
from tether_bench.redisserver import free_port

__all__ = [
    "CLUSTER_API_KEY",
    "CLUSTER_SECRET",
    "Delivery",
    "Follower",
    "HAProxy",
    "HAProxyMissing",
    "NodeProcess",
    "SubscribeOutcome",
    "haproxy_config",
    "node_config",
]

CLUSTER_SECRET = "cluster-secret-" + "y" * 32
CLUSTER_API_KEY = "cluster-api-key"


def node_config(
    redis_url: str,
    *,
    prefix: str = "tether",
    history_size: int = 1000,
    history_ttl: int = 300,
    presence_ttl: float = 60,
    extra: str = "",
) -> str:
    """A node's TOML config: the Redis broker and an open ``chat`` namespace with history
    and recovery. ``extra`` is appended as is (more keys or namespaces)."""
    return f"""\
host = "127.0.0.1"
broker = "redis"
redis_url = "{redis_url}"
redis_prefix = "{prefix}"
presence_ttl = {presence_ttl}
log_level = "warning"
log_format = "json"
{extra}
[namespaces.chat]
history_size = {history_size}
history_ttl = {history_ttl}
recover = true
presence = true
allow_subscribe = true
allow_publish = true
allow_history = true
"""


class NodeProcess:
    """One ``python -m tether serve`` child process with its own ports (free ones unless
    given) and a log file in ``workdir``. ``args`` are added to the ``serve`` command."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        redis_url: str,
        *,
        port: int = 0,
        http_port: int = 0,
        config: str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.http_port = http_port or free_port()
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config if config is not None else node_config(redis_url))
        self.log_path = workdir / f"{name}.log"
        self.args = list(args)
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "TETHER_PORT": str(self.port),
            "TETHER_HTTP_PORT": str(self.http_port),
            "TETHER_TOKEN_SECRET": CLUSTER_SECRET,
            "TETHER_API_KEY": CLUSTER_API_KEY,
            "TETHER_NODE_NAME": self.name,
            **self.env,
        }
        env.pop("TETHER_CONFIG", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tether", "serve", "-c", str(self.config_path), *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run is not sent to the node
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_ready(self) -> None:
        """Wait until ``/ready`` answers 200 (the caller bounds the wait). Raises
        RuntimeError with the log's tail if the process exits first."""
        while not await self.ready():
            if not self.alive:
                raise RuntimeError(f"node {self.name} exited:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def wait_unready(self) -> None:
        """Wait until ``/ready`` stops answering 200 (the caller bounds the wait)."""
        while await self.ready():  # noqa: ASYNC110  (readiness is polled over HTTP)
            await asyncio.sleep(0.05)

    async def ready(self) -> bool:
        """True when ``GET /ready`` answers 200, False for 503 or no answer."""
        return await http_status(self.http_port, "/ready") == 200

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default: SIGKILL, a crash) and wait for the process to end."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM (graceful drain), SIGKILL if it has not ended within 15 seconds."""
        self.kill(signal.SIGTERM)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


async def http_status(port: int, path: str) -> int | None:
    """Status of ``GET path`` on the loopback ``port``; None if nothing answered within
    two seconds."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


class HAProxyMissing(RuntimeError):
    """The haproxy binary is not installed."""


def haproxy_config(
    *,
    ws_port: int,
    api_port: int,
    nodes: Iterable[tuple[str, int, int]],
    stats_socket: Path | None = None,
) -> str:
    """HAProxy config: clients on ``ws_port``, server API on ``api_port``, both balanced
    round-robin over ``nodes`` (``(name, websocket port, http port)``) with no stickiness.
    New clients go only to nodes whose ``/ready`` answers 200 (not draining, broker
    reachable); API calls go to every live node (``/health``), so that during a broker
    outage the node itself answers 503 with ``Retry-After`` and a temporary error. A
    connect to a dead node is redispatched to another at once. The same choices as
    ``deploy/local/haproxy.cfg`` (see docs/howto/scale-out.md)."""
    nodes = list(nodes)
    ws_servers = "\n".join(
        f"    server {name} 127.0.0.1:{ws} check port {http} inter 300ms fall 2 rise 1"
        for name, ws, http in nodes
    )
    api_servers = "\n".join(
        f"    server {name} 127.0.0.1:{http} check inter 300ms fall 2 rise 1"
        for name, _, http in nodes
    )
    stats = f"    stats socket {stats_socket} mode 600 level admin\n" if stats_socket else ""
    return f"""\
global
    maxconn 4000
{stats}
defaults
    mode http
    option redispatch 1
    retries 3
    timeout connect 1s
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout client-fin 5s
    timeout server-fin 5s
    default-server maxconn 2000
    # No node at all: still a temporary error with a retry hint, as a node would answer.
    http-error status 503 content-type application/json string \
        '{{"error":{{"code":100,"message":"no node available","temporary":true}}}}' \
        hdr Retry-After 1

frontend clients
    bind 127.0.0.1:{ws_port}
    default_backend tether_ws

backend tether_ws
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
{ws_servers}

frontend api
    bind 127.0.0.1:{api_port}
    default_backend tether_api

backend tether_api
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
{api_servers}
"""


class HAProxy:
    """An ``haproxy`` child process in front of ``nodes``: clients on :attr:`port`, the
    server API on :attr:`api_port`."""

    def __init__(self, workdir: Path, nodes: Iterable[NodeProcess]) -> None:
        self.nodes = list(nodes)
        self.port = free_port()
        self.api_port = free_port()
        self.stats_socket = workdir / "haproxy.sock"
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        """The server API through the balancer."""
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        """Raises :class:`HAProxyMissing` if haproxy is not installed."""
        binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        if binary is None:
            raise HAProxyMissing(
                "haproxy is not installed: these tests need a real load balancer "
                "(Debian: apt-get install -y haproxy; .ci/run installs it)"
            )
        self.config_path.write_text(
            haproxy_config(
                ws_port=self.port,
                api_port=self.api_port,
                nodes=[(n.name, n.port, n.http_port) for n in self.nodes],
                stats_socket=self.stats_socket,
            )
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def server_states(self) -> dict[tuple[str, str], str]:
        """``{(backend, server): status}`` from the stats socket (``UP``, ``DOWN``, ...)."""
        reader, writer = await asyncio.open_unix_connection(str(self.stats_socket))
        try:
            writer.write(b"show stat\n")
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") not in (None, "FRONTEND", "BACKEND"):
                states[(row["pxname"], row["svname"])] = row["status"]
        return states

    async def wait_up(self, names: Iterable[str] | None = None) -> None:
        """Wait until HAProxy sees every node in ``names`` (default: all) UP in both
        backends (the caller bounds the wait)."""
        wanted = set(names) if names is not None else {n.name for n in self.nodes}
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError, IndexError):
                states = await self.server_states()
                up = [name for (_, name), status in states.items() if status.startswith("UP")]
                if all(up.count(name) == 2 for name in wanted):
                    return
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# -- lean raw-protocol subscribers -------------------------------------------------------


class Delivery(NamedTuple):
    """One publication as a client was given it."""

    offset: int
    epoch: str
    data: Any


@dataclass(frozen=True)
class SubscribeOutcome:
    """What one subscribe reply said."""

    channel: str
    was_recovering: bool
    recovered: bool
    offset: int
    epoch: str


class _Reconnect(Exception):
    """The session cannot go on (an error reply): reconnect after a backoff."""


@dataclass
class Follower:
    """A raw-protocol client that connects to ``port`` (a load balancer), subscribes to
    ``channels`` and, whenever its connection breaks, reconnects and resubscribes with
    ``recover`` from the last position it saw, as the SDKs do. It records exactly what it
    was given: :attr:`received` per channel, in delivery order (recovered ones included),
    every subscribe outcome, the nodes it was served by. Run :meth:`run` in a task you own
    and cancel it to stop; it never ends by itself.

    An ``unsubscribe`` push with a code of 2500 or more (the protocol's "resubscribe"
    range, e.g. 2500 after a broker resync) makes it resubscribe with recovery.
    """

    port: int
    token: str
    channels: list[str]
    received: dict[str, list[Delivery]] = field(default_factory=dict)
    """``channel -> [Delivery, ...]`` in the order delivered."""
    outcomes: list[SubscribeOutcome] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    """Node name of each successful connect, in order."""
    errors: list[str] = field(default_factory=list)
    """Why each session ended or failed to start."""
    positions: dict[str, tuple[int, str]] = field(default_factory=dict)
    connected: bool = False

    def __post_init__(self) -> None:
        for channel in self.channels:
            self.received.setdefault(channel, [])
        self._changed = asyncio.Event()

    async def wait_until(self, done: Any) -> None:
        """Return once ``done(self)`` holds (the caller bounds the wait)."""
        while not done(self):
            self._changed.clear()
            await self._changed.wait()

    def offsets(self, channel: str) -> list[int]:
        return [d.offset for d in self.received[channel]]

    async def run(self) -> None:
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(5):
                    ws = await WSClient.open(self.port)
            except (OSError, HandshakeRejected, TimeoutError) as exc:
                self.errors.append(f"open: {exc!r}")
            else:
                try:
                    await self._session(ws)
                except (Closed, _Reconnect, OSError, TimeoutError, ValueError) as exc:
                    self.errors.append(f"session: {exc!r}")
                    if self.connected and not isinstance(exc, _Reconnect):
                        delay = 0.05  # it was up: come back fast (jittered below)
                finally:
                    self.connected = False
                    self._changed.set()
                    await ws.close()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _session(self, ws: WSClient) -> None:
        async with asyncio.timeout(10):  # a timeout ends the session (framing is lost)
            reply = await ws.call("connect", {"token": self.token})
        if "error" in reply:
            raise _Reconnect(f"connect: {reply['error']}")
        self.nodes.append(reply["connect"].get("node", ""))
        for channel in self.channels:
            await self._subscribe(ws, channel)
        self.connected = True
        self._changed.set()
        while True:
            while ws.pushes:
                push = ws.pushes.popleft().get("push", {})
                await self._on_push(ws, push)
            # No timeout: cancelling a read in the middle of a frame would lose the framing.
            for message in await ws.recv_messages():
                if not message.get("id"):
                    ws.pushes.append(message)

    async def _subscribe(self, ws: WSClient, channel: str) -> None:
        params: dict[str, Any] = {"channel": channel}
        position = self.positions.get(channel)
        if position is not None:
            params.update(recover=True, offset=position[0], epoch=position[1])
        delay = 0.1
        while True:
            async with asyncio.timeout(10):  # a timeout ends the session (framing is lost)
                reply = await ws.call("subscribe", params)
            error = reply.get("error")
            if error is None:
                break
            if not error.get("temporary"):
                raise _Reconnect(f"subscribe {channel}: {error}")
            # A temporary error (the broker is away): retry later on this connection, with
            # a growing, jittered delay, as the SDKs do.
            self.errors.append(f"subscribe {channel}: {error}")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
        result = reply["subscribe"]
        epoch = result.get("epoch", "")
        self.outcomes.append(
            SubscribeOutcome(
                channel=channel,
                was_recovering=result.get("was_recovering", False),
                recovered=result.get("recovered", False),
                offset=result.get("offset", 0),
                epoch=epoch,
            )
        )
        for pub in result.get("publications", []):
            self._record(channel, pub, epoch)
        self.positions[channel] = (result.get("offset", 0), epoch)
        self._changed.set()

    async def _on_push(self, ws: WSClient, push: dict[str, Any]) -> None:
        channel = push.get("channel", "")
        if "pub" in push and channel in self.received:
            self._record(channel, push["pub"], self.positions.get(channel, (0, ""))[1])
        elif "unsubscribe" in push and push["unsubscribe"].get("code", 0) >= 2500:
            await self._subscribe(ws, channel)

    def _record(self, channel: str, pub: dict[str, Any], epoch: str) -> None:
        offset = pub.get("offset", 0)
        self.received[channel].append(Delivery(offset, epoch, pub.get("data")))
        self.positions[channel] = (offset, epoch)
        self._changed.set()
