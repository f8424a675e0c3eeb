"""Redis in its high-availability shapes, for tests that fail it over: a primary with an
asynchronously replicated replica behind a relay (as behind a virtual IP), and three
Sentinels watching a primary.

A failover that loses acknowledged writes, step by step::

    async with ReplicatedRedis() as redis:      # A primary, B its replica, a relay to A
        broker = RedisBroker(redis.url)           # Tether reaches Redis through the relay
        ...                                       # publish: replicated to B
        await redis.cut_replication()             # B stops hearing A (as in a partition)
        ...                                       # publish: acknowledged by A, B lacks it
        await redis.fail_over()                   # B promoted, the relay moved to B, every
                                                  # connection through it dropped

:func:`cut_replication` works on any replica (a Redis Cluster one too): the replica's
link to its primary is killed and it is given a wrong ``masterauth``, so that it cannot
resync; it lags for as long as the test wants, and :func:`restore_replication` undoes it.

The helpers start their ``redis-server`` children with :class:`RedisServer` (free ports,
nothing on disk) and end every process and task they start in ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis
from redis.asyncio import Redis

from tether.brokers.base import Broker
from tether.testing.broker_contract import RecordingHandler
from tether.testing.faults import TcpProxy
from tether_bench.redisserver import (
    RedisClusterNodes,
    RedisServer,
    RedisServerError,
    free_port,
)

__all__ = [
    "ClusterFailover",
    "RedisSentinels",
    "RelayedFailover",
    "ReplicatedRedis",
    "cut_replication",
    "promote_in_cluster",
    "replication_offset",
    "restore_replication",
    "wait_replicated",
]

_WRONG_PASSWORD = "tether-test-cut-replication"


def _admin(host: str, port: int) -> Redis:
    return Redis(host=host, port=port, socket_timeout=5, socket_connect_timeout=2)


async def cut_replication(host: str, port: int) -> None:
    """Make the replica at ``host:port`` stop taking its primary's writes, and keep it
    from resyncing (a wrong ``masterauth``), as a partition would."""
    async with _admin(host, port) as replica:
        await replica.config_set("masterauth", _WRONG_PASSWORD)
        await replica.client_kill_filter(_type="master")


async def restore_replication(host: str, port: int) -> None:
    """Undo :func:`cut_replication`: the replica resyncs on its next attempt."""
    async with _admin(host, port) as replica:
        await replica.config_set("masterauth", "")


async def replication_offset(host: str, port: int) -> int:
    """``master_repl_offset`` of the server (a replica: how far it has applied)."""
    async with _admin(host, port) as server:
        info = await server.info("replication")
    return int(info["master_repl_offset"])


async def wait_replicated(primary: tuple[str, int], replica: tuple[str, int]) -> None:
    """Wait until the replica has applied everything the primary had written when this
    was called (and its link is up). The caller bounds the wait."""
    target = await replication_offset(*primary)
    async with _admin(*replica) as server:
        while True:
            info = await server.info("replication")
            if info.get("master_link_status") == "up" and info["master_repl_offset"] >= target:
                return
            await asyncio.sleep(0.02)


class ReplicatedRedis:
    """Redis A (primary) and B (its replica), reached through :attr:`relay`, a
    :class:`TcpProxy` standing for a virtual IP: point a broker at :attr:`url`.

    ``extra_args`` go to both servers (persistence options, for instance). Each server
    works in a temporary directory of its own (a full resync writes an RDB file there)."""

    def __init__(self, *, host: str = "127.0.0.1", extra_args: tuple[str, ...] = ()) -> None:
        self.host = host
        self._dir = tempfile.TemporaryDirectory(prefix="tether-replicated-")
        dirs = [Path(self._dir.name) / name for name in ("a", "b")]
        for path in dirs:
            path.mkdir()
        self.primary = RedisServer(
            host=host, cwd=str(dirs[0]), extra_args=["--dir", str(dirs[0]), *extra_args]
        )
        self.replica = RedisServer(
            host=host, cwd=str(dirs[1]), extra_args=["--dir", str(dirs[1]), *extra_args]
        )
        self.relay = TcpProxy(0, host)
        self.failed_over = False

    @property
    def url(self) -> str:
        """The relay's URL (where Tether's broker connects)."""
        return f"redis://{self.host}:{self.relay.port}/0"

    @property
    def serving(self) -> RedisServer:
        """The server the relay points at: the primary, or the replica after
        :meth:`fail_over`."""
        return self.replica if self.failed_over else self.primary

    async def start(self) -> None:
        await asyncio.to_thread(self.primary.start)
        await asyncio.to_thread(self.replica.start)
        async with _admin(self.host, self.replica.port) as replica:
            await replica.replicaof(self.host, self.primary.port)
        async with asyncio.timeout(10):
            await self.wait_replicated()
        self.relay.retarget(self.primary.port)
        await self.relay.start()

    async def wait_replicated(self) -> None:
        """Wait until B holds everything A has acknowledged so far (the caller bounds the
        wait)."""
        await wait_replicated((self.host, self.primary.port), (self.host, self.replica.port))

    async def cut_replication(self) -> None:
        """From now on B lacks what A acknowledges (see :func:`cut_replication`)."""
        await cut_replication(self.host, self.replica.port)

    async def restore_replication(self) -> None:
        """Undo :meth:`cut_replication`: B resyncs from A on its next attempt."""
        await restore_replication(self.host, self.replica.port)

    async def promote_replica(self) -> None:
        """``REPLICAOF NO ONE`` on B: it takes writes from now on (the relay still
        points at A)."""
        async with _admin(self.host, self.replica.port) as replica:
            await replica.replicaof("NO", "ONE")
            await replica.config_set("masterauth", "")

    def move_relay(self) -> None:
        """Point the relay at B and drop every connection through it."""
        self.failed_over = True
        self.relay.retarget(self.replica.port)
        self.relay.drop()

    async def fail_over(self) -> None:
        """Promote B and move the relay to it: what A acknowledged after
        :meth:`cut_replication` is lost."""
        await self.promote_replica()
        self.move_relay()

    async def close(self) -> None:
        await self.relay.close()
        await asyncio.to_thread(self.primary.kill)
        await asyncio.to_thread(self.replica.kill)
        self._dir.cleanup()

    async def __aenter__(self) -> ReplicatedRedis:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class RedisSentinels:
    """``count`` Sentinel processes (``redis-server --sentinel``) on free ports watching
    the primary ``host:port`` under the name ``master``, with a quorum of a majority.
    ``down_after_ms``: how long the primary may be silent before it is deemed down.

    The methods block; call them through :func:`asyncio.to_thread` from an event loop.
    """

    def __init__(
        self,
        primary_port: int,
        *,
        master: str = "tether",
        count: int = 3,
        host: str = "127.0.0.1",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10000,
    ) -> None:
        self.master = master
        self.host = host
        self.primary_port = primary_port
        self.count = count
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every Sentinel (what ``redis_sentinels`` lists)."""
        return [f"{self.host}:{port}" for port in self.ports]

    def start(self, timeout: float = 10) -> None:
        """Start the Sentinels and wait until each one watches the primary. Raises
        :class:`RedisServerError` if redis-server is missing or a Sentinel does not come
        up."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed")
        self._dir = tempfile.TemporaryDirectory(prefix="tether-sentinel-")
        quorum = self.count // 2 + 1
        try:
            for i in range(self.count):
                port = free_port(self.host)
                conf = Path(self._dir.name) / f"sentinel-{i}.conf"
                conf.write_text(
                    f"port {port}\n"
                    f"bind {self.host}\n"
                    f"dir {self._dir.name}\n"
                    f"sentinel monitor {self.master} {self.host} {self.primary_port} {quorum}\n"
                    f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.master} 1\n"
                )
                process = subprocess.Popen(
                    [binary, str(conf), "--sentinel", "--loglevel", "warning"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self._processes.append(process)
                self.ports.append(port)
            deadline = time.monotonic() + timeout
            for port in self.ports:
                while not self._watching(port):
                    if time.monotonic() > deadline:
                        raise RedisServerError(f"sentinel on port {port} did not come up")
                    time.sleep(0.05)
        except BaseException:
            self.kill()
            raise

    def _watching(self, port: int) -> bool:
        try:
            with redis.Redis(host=self.host, port=port, socket_timeout=1) as sentinel:
                return bool(sentinel.sentinel_get_master_addr_by_name(self.master))
        except redis.RedisError:
            return False

    def wait_replica_known(self, timeout: float = 30) -> None:
        """Wait until every Sentinel knows a replica it could promote (listed, flags
        ``slave`` only, link to the master up). A Sentinel learns of replicas from the
        primary's INFO and then asks each replica itself, a few seconds after it starts;
        a ``SENTINEL FAILOVER`` before that fails with NOGOODSLAVE. Raises
        :class:`RedisServerError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not self._knows_a_replica(port):
                if time.monotonic() > deadline:
                    raise RedisServerError(f"sentinel on port {port} knows no good replica")
                time.sleep(0.1)

    def _knows_a_replica(self, port: int) -> bool:
        try:
            with redis.Redis(
                host=self.host, port=port, socket_timeout=1, decode_responses=True
            ) as sentinel:
                replicas = sentinel.execute_command("SENTINEL", "REPLICAS", self.master)
        except redis.RedisError:
            return False
        for replica in replicas or []:
            # redis-py parses each replica into a dict (flags as a set of names)
            flags = replica.get("flags")
            flags = set(flags.split(",")) if isinstance(flags, str) else set(flags or ())
            if flags == {"slave"} and replica.get("master-link-status") == "ok":
                return True
        return False

    def master_address(self) -> tuple[str, int] | None:
        """The primary's address as the first Sentinel that answers sees it."""
        for port in self.ports:
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(host=self.host, port=port, socket_timeout=1) as sentinel,
            ):
                address = sentinel.sentinel_get_master_addr_by_name(self.master)
                if address:
                    host = address[0]
                    name = host.decode() if isinstance(host, bytes) else str(host)
                    return name, int(address[1])
        return None

    def kill(self) -> None:
        """SIGKILL every Sentinel and remove their config directory."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        self._processes = []
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisSentinels:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


class RelayedFailover:
    """The contract suite's :class:`~tether.testing.broker_contract.Failover` for a broker
    over one or more :class:`ReplicatedRedis` (a sharded broker: one per shard): losing
    writes cuts every replica off, failing over promotes them and moves the relays, and
    returns once the broker has reconnected every subscriber connection (each one asks
    ``handler`` for a resync)."""

    def __init__(
        self, broker: Broker, redis: Sequence[ReplicatedRedis], handler: RecordingHandler
    ) -> None:
        self.broker = broker
        self._redis = list(redis)
        self._handler = handler

    async def lose_next_writes(self) -> None:
        async with asyncio.timeout(10):
            for pair in self._redis:
                await pair.wait_replicated()
        for pair in self._redis:
            await pair.cut_replication()

    async def fail_over(self) -> Broker:
        resyncs = len(self._handler.resyncs) + len(self._redis)
        for pair in self._redis:
            await pair.fail_over()
        async with asyncio.timeout(10):
            await self._handler.wait_until(lambda: len(self._handler.resyncs) >= resyncs)
        return self.broker


class ClusterFailover:
    """The contract suite's :class:`~tether.testing.broker_contract.Failover` for a
    broker over a Redis Cluster with a replica per master (:class:`RedisClusterNodes`
    with ``replicas=1``): losing writes cuts every replica off its master; failing over
    runs ``CLUSTER FAILOVER TAKEOVER`` on every replica (as an operator does when a
    master is unreachable; TAKEOVER rather than FORCE so that the suite may fail the same
    slots over again within seconds, see :func:`promote_in_cluster`) and returns once the
    cluster is whole under its new masters."""

    def __init__(self, broker: Broker, cluster: RedisClusterNodes) -> None:
        self.broker = broker
        self._cluster = cluster
        self._pairs: list[tuple[RedisServer, RedisServer]] = []

    async def lose_next_writes(self) -> None:
        host = self._cluster.host
        self._pairs = []
        for master, replica in await asyncio.to_thread(self._cluster.roles):
            if replica is None:
                raise RedisServerError(f"master on port {master.port} has no replica")
            self._pairs.append((master, replica))
        async with asyncio.timeout(20):
            for master, replica in self._pairs:
                await wait_replicated((host, master.port), (host, replica.port))
        for _, replica in self._pairs:
            await cut_replication(host, replica.port)

    async def fail_over(self) -> Broker:
        host = self._cluster.host
        for _, replica in self._pairs:
            await promote_in_cluster(host, replica.port, how="TAKEOVER")
        # Until the old master hears of its successor it still takes writes (which the
        # cluster then drops): the failover is over once each one is a replica.
        async with asyncio.timeout(20):
            for master, _ in self._pairs:
                await _wait_role(host, master.port, "slave")
        await asyncio.to_thread(self._cluster.wait_ok)
        return self.broker


async def _wait_role(host: str, port: int, role: str) -> None:
    async with _admin(host, port) as server:
        while True:
            if (await server.info("replication"))["role"] == role:
                return
            await asyncio.sleep(0.02)


async def promote_in_cluster(host: str, port: int, *, how: str = "FORCE") -> None:
    """``CLUSTER FAILOVER FORCE`` (or ``how``: ``TAKEOVER``) on the replica at
    ``host:port``: its master is not asked, so what it acknowledged since the replica
    last heard it is lost. Returns once the replica is a master, its ``masterauth``
    cleared (see :func:`cut_replication`).

    FORCE needs the votes of a majority of masters, and a master votes for the slots of
    one master at most once per ``2 * cluster-node-timeout``; TAKEOVER needs no vote, so
    a test that fails the same slots over again soon uses it."""
    async with _admin(host, port) as replica:
        await replica.execute_command("CLUSTER", "FAILOVER", how)  # type: ignore[no-untyped-call]  # redis-py lacks a hint
        await replica.config_set("masterauth", "")
    async with asyncio.timeout(20):
        await _wait_role(host, port, "master")
