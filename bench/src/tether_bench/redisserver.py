"""A ``redis-server`` process a test owns: start it on a free port, kill it, start it again.

Tests that break Redis must never touch a Redis someone else uses, so they run their own::

    with RedisServer() as redis:          # a fresh, empty, in-memory redis-server
        broker = RedisBroker(redis.url)
        ...
        redis.kill()                      # SIGKILL: every connection breaks, data is gone
        redis.start()                     # the same port again, empty

The server keeps nothing on disk (``--save "" --appendonly no``), so a restart loses every
key, as an in-memory Redis does after a crash. The methods block (a start takes a few
milliseconds); call them through :func:`asyncio.to_thread` from a running event loop.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType

__all__ = ["RedisClusterNodes", "RedisServer", "RedisServerError", "free_port"]


class RedisServerError(RuntimeError):
    """redis-server is not installed, or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process on ``host``:``port`` (``port=0``: a free one,
    chosen at the first :meth:`start` and kept for later starts). ``extra_args`` are added
    to the command line; ``cwd`` is its working directory (where relative paths point)."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        cwd: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.extra_args = list(extra_args)
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it answers PING. Raises
        :class:`RedisServerError` if redis-server is missing or does not come up."""
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        attempts = 3 if self.port == 0 else 1
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", self.host, "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                 *self.extra_args],
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if _pong(self.host, port):
                    self._process, self.port = process, port
                    return
                time.sleep(0.02)
            _reap(process)  # the port was taken meanwhile, or the server hung
        raise RedisServerError(f"redis-server did not start on {self.host}:{self.port or '?'}")

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it to be gone."""
        process, self._process = self._process, None
        if process is not None:
            _reap(process)

    def restart(self, timeout: float = 10) -> None:
        """Kill, then start again on the same port: an empty Redis."""
        self.kill()
        self.start(timeout)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


class RedisClusterNodes:
    """A Redis Cluster of ``masters`` ``redis-server`` children (no replicas) on free ports,
    its config files in a temporary directory of its own::

        with RedisClusterNodes() as cluster:      # 3 masters, slots split evenly
            broker = RedisClusterBroker(cluster.url)
            ...
            cluster.nodes[1].restart()            # SIGKILL, start again: same slots, no data

    A node restarted with :meth:`RedisServer.restart` comes back with its ``nodes.conf``
    (its ID and slots), empty, as a master that crashed without persistence does; the
    cluster is whole again once :meth:`wait_ok` returns. ``node_timeout_ms`` is the
    cluster's ``cluster-node-timeout``: a node down longer than that is marked failed and,
    with no replica to take its slots, the whole cluster refuses commands until it is back.
    The methods block; call them through :func:`asyncio.to_thread` from an event loop.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 5000,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        """Replicas per master (``redis-cli --cluster create --cluster-replicas``)."""
        self._count = masters * (1 + replicas)
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """A seed URL (the first node): clients discover the others from it."""
        return f"redis://{self.host}:{self.nodes[0].port}"

    def start(self, timeout: float = 30) -> None:
        """Start the nodes, join them into one cluster (``redis-cli --cluster create``) and
        wait for every node to report ``cluster_state:ok``. Raises
        :class:`RedisServerError` if a binary is missing or the cluster does not form."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError("redis-cli is not installed (Debian: apt-get install redis)")
        self._dir = tempfile.TemporaryDirectory(prefix="tether-redis-cluster-")
        try:
            for _ in range(self._count):
                port = _cluster_port(self.host)
                node = RedisServer(
                    port,
                    host=self.host,
                    cwd=self._dir.name,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", f"nodes-{port}.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--dir", self._dir.name,
                    ],
                )  # fmt: skip
                node.start(timeout)
                self.nodes.append(node)
            addresses = [f"{self.host}:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas",
                 str(self.replicas), "--cluster-yes"],
                capture_output=True,
                timeout=timeout,
                check=False,
            )  # fmt: skip
            if created.returncode != 0:
                raise RedisServerError(
                    f"redis-cli --cluster create failed: {created.stdout[-500:]!r}"
                )
            self.wait_ok(timeout)
        except BaseException:
            self.kill()
            raise

    def roles(self) -> list[tuple[RedisServer, RedisServer | None]]:
        """``(master, replica)`` of every master now (its first replica, or None), as the
        first node that answers ``CLUSTER NODES`` sees them."""
        by_port = {node.port: node for node in self.nodes}
        lines = _cluster_nodes(self.host, [node.port for node in self.nodes])
        ids: dict[str, int] = {}
        masters: list[str] = []
        replica_of: dict[str, int] = {}
        for line in lines:
            fields = line.split()
            node_id, address, flags, master_id = fields[0], fields[1], fields[2], fields[3]
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            ids[node_id] = port
            if "master" in flags.split(",") and len(fields) > 8:  # a master with slots
                masters.append(node_id)
            elif master_id != "-":
                replica_of.setdefault(master_id, port)
        return [
            (by_port[ids[m]], by_port[replica_of[m]] if m in replica_of else None) for m in masters
        ]

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every node answers ``cluster_state:ok`` with every slot assigned,
        and every master has its replica (with ``replicas``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_cluster_ok(self.host, node.port) for node in self.nodes) and (
                not self.replicas or all(r is not None for _, r in self.roles())
            ):
                return
            time.sleep(0.05)
        raise RedisServerError("the redis cluster did not reach cluster_state:ok")

    def kill(self) -> None:
        """SIGKILL every node and remove the config directory."""
        for node in self.nodes:
            node.kill()
        self.nodes = []
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisClusterNodes:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def _cluster_port(host: str) -> int:
    """A free port P at most 55535 whose cluster bus port P + 10000 is free too (Redis
    refuses a cluster port above 55535)."""
    for _ in range(100):
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 10000))
        except OSError:
            continue
        return port
    raise RedisServerError("found no free port pair for a cluster node")


def _cluster_nodes(host: str, ports: Sequence[int]) -> list[str]:
    """The lines of ``CLUSTER NODES`` from the first of ``ports`` that answers."""
    for port in ports:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.sendall(b"CLUSTER NODES\r\n")
                reply = b""
                while b"\r\n" not in reply:  # the bulk string's "$<length>" header
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("connection closed")
                    reply += chunk
                header, body = reply.split(b"\r\n", 1)
                length = int(header[1:])
                while len(body) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("connection closed")
                    body += chunk
        except (OSError, ValueError):
            continue
        return [line for line in body[:length].decode().splitlines() if line.strip()]
    raise RedisServerError("no cluster node answered CLUSTER NODES")


def _cluster_ok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            reply = b""
            while b"cluster_stats_messages" not in reply and len(reply) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return b"cluster_state:ok" in reply and b"cluster_slots_ok:16384" in reply
