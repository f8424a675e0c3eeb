"""The scenarios of ``tether-bench run`` and the report they produce.

``fanout``
    One channel, N subscribers, the publisher at the highest rate the target sustains: it
    keeps at most ``window`` publications published but not yet delivered (on average per
    subscriber), so the target is saturated without its outbound queues overflowing.
    Measured in ``bursts``; the headline is the median burst's deliveries per second.
``rooms``
    N connections, each in a personal channel and a 10-member group channel; publications
    at ``rate`` per second, alternately to a personal and a group channel.
``idle``
    N connections, each subscribed to 2 channels (personal and group); reports the
    server's RSS per connection, then holds them for ``duration`` and counts survivors.
``connect-cost``
    N connections set up the way a reconnecting phone does it: the upgrade, ``connect``
    with its own HS256 JWT, and two subscribes with ``recover: true`` (a personal channel
    and a 10-member group channel; the group channels' positions come from a probe
    connection first). Reports connects per server CPU-second over the setup.
``latency``
    N subscribers of one channel; publications at ``fraction`` of the target's measured
    maximum (a short max-rate calibration first, with the same publish shape, unless
    ``rate`` is given), one per request; publish-to-delivery latency percentiles. Each
    publication carries its *scheduled* send time, so a publisher that falls behind
    shows up as latency (no coordinated omission).

Correctness: deliveries are counted on every connection; offsets (loss, duplicates,
order) and latency are checked on ``check_sample`` connections spread over the fleet (the
report says how many). A connection that is only counted contributes losses and
duplicates by count (received vs. expected).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether_bench.drivers import Driver, make_driver
from tether_bench.publisher import HttpApiPublisher, Publisher, WebSocketPublisher
from tether_bench.wsclient import (
    EPHEMERAL_PORTS_SAFE,
    BenchConnection,
    Stats,
    open_many,
    parse_ws_url,
)

SCENARIOS = (
    "fanout",
    "rooms",
    "idle",
    "latency",
    "connect-cost",
    "slow-consumers",
    "typing-storm",
    "reconnect-storm",
    "publish-burst",
    "hook-outage",
)
"""slow-consumers to publish-burst are the resilience scenarios (:mod:`tether_bench.resilience`);
hook-outage is :mod:`tether_bench.hooks`."""
GROUP_SIZE = 10


@dataclass
class BenchOptions:
    scenario: str
    url: str = "ws://127.0.0.1:8000/connection/websocket"
    api_url: str = "http://127.0.0.1:9000/api"
    api_key: str = ""
    token_secret: str = ""
    protocol: str = "tether"
    namespace: str = "bench"
    connections: int = 0
    """0: the scenario's default (fanout 2000, rooms 2000, idle 10000, latency 1000)."""
    duration: float = 10.0
    rate: float = 0.0
    """Publications per second (rooms; latency: 0 = calibrate and use ``fraction``)."""
    fraction: float = 0.5
    batch: int = 0
    """Publications per publish request (0: 10 for fanout, 1 otherwise)."""
    bursts: int = 5
    window: int = 0
    """fanout: publications ahead of the average subscriber (0: adaptive, about
    ``lag`` seconds of the delivery rate measured so far, 10 to 400)."""
    lag: float = 0.1
    concurrency: int = 0
    """Publish requests in flight (0: 4 for fanout, 64 for paced scenarios)."""
    check_sample: int = -1
    """Connections whose offsets and latency are checked (-1: scenario default)."""
    calibrate: float = 3.0
    server_pid: int = 0
    source_addresses: int = 0
    """Spread connections over 127.0.0.2.. this many (0: automatic past ~25k)."""
    connect_concurrency: int = 256
    settle: float = 2.0
    """idle: seconds between the last connection and the RSS reading."""
    start_file: str = ""
    """rooms: once every connection is set up, wait (phase "ready") until this file
    exists before publishing, so that several bench processes measure together."""
    progress: bool = True
    profile: str = ""
    """Sample the server with py-spy while measuring, collapsed stacks to this file (a
    summary goes in the report as ``profile``)."""
    profile_rate: int = 200
    """py-spy's samples per second (``--profile``)."""
    slow: int = 20
    """slow-consumers: clients that stop reading."""
    payload: int = 0
    """Bytes of filler per publication (0: the scenario's default)."""
    outage: float = 1.0
    """reconnect-storm: seconds between the disconnect and the first reconnect."""
    channels: int = 4
    """reconnect-storm: channels the clients are spread over."""
    factor: float = 10.0
    """publish-burst: the burst rate, as a multiple of the sustainable rate;
    typing-storm: typing publications per chat publication."""
    http_connections: int = 0
    """Resilience scenarios: keep-alive sockets of the API client (0: scenario default)."""
    metrics_url: str = ""
    """The target's Prometheus metrics (empty: ``/metrics`` next to ``api_url``)."""
    backend_url: str = ""
    """hook-outage: the hook backend's ``http://host:port`` (its control endpoints)."""
    hook_clients: int = 20
    """hook-outage: connections that call the hooked paths (publish, rpc)."""
    hook_rate: float = 50.0
    """hook-outage: client publications per second into the hooked namespace (RPCs: a
    fifth of it)."""
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))


DEFAULT_CONNECTIONS = {
    "fanout": 2000,
    "rooms": 2000,
    "idle": 10000,
    "latency": 1000,
    "connect-cost": 5000,
    "slow-consumers": 500,
    "typing-storm": 300,
    "reconnect-storm": 2000,
    "publish-burst": 200,
    "hook-outage": 1000,
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE to what ``needed`` connections take (up to the hard limit).
    Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class ServerMonitor:
    """CPU and RSS of the server process (and its children), with psutil."""

    def __init__(self, pid: int) -> None:
        self.process: Any = None
        if pid:
            import psutil  # a dependency of tether-bench, needed only with --server-pid

            self._psutil = psutil
            self.process = psutil.Process(pid)
        self.peak_rss = 0
        self._cpu0 = 0.0
        self._t0 = 0.0

    def _tree(self) -> list[Any]:
        assert self.process is not None
        try:
            return [self.process, *self.process.children(recursive=True)]
        except self._psutil.NoSuchProcess:
            return [self.process]

    def rss(self) -> int:
        if self.process is None:
            return 0
        total = 0
        for proc in self._tree():
            with contextlib.suppress(self._psutil.NoSuchProcess):
                total += proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)
        return total

    def cpu(self) -> float:
        if self.process is None:
            return 0.0
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except self._psutil.NoSuchProcess:
                pass
        return total

    def start(self) -> None:
        self._cpu0 = self.cpu()
        self._t0 = time.perf_counter()

    def since_start(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since :meth:`start`."""
        return self.cpu() - self._cpu0, time.perf_counter() - self._t0


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Run:
    """One scenario run: the fleet, the publisher, the monitor and the counters."""

    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        host, port, path = parse_ws_url(options.url)
        self.host, self.port = host, port
        self.driver: Driver = make_driver(options.protocol, path, options.namespace)
        self.stats = Stats()
        self.conns: list[BenchConnection] = []
        self.connect_errors: list[str] = []
        self.connect_refused = 0
        """Upgrades refused with 503 (admission control) and retried."""
        self.publisher: Publisher | None = None
        self.monitor = ServerMonitor(options.server_pid)
        self._progress_task: asyncio.Task[None] | None = None
        self._last = (0, time.perf_counter())
        self.phase = "connecting"
        self.connected = 0
        self.samples: list[float] = []
        """Deliveries per second of each progress tick while measuring."""
        self.measuring = False
        self.window = 50
        """Current adaptive fan-out window (publications)."""
        self._client_cpu0 = 0.0
        self._measure_t0 = 0.0
        self._tokens: dict[int, str] = {}
        self._profiler: subprocess.Popen[bytes] | None = None
        self.profile: dict[str, Any] | None = None
        """py-spy's summary of the server while measuring (``--profile``)."""

    # -- the fleet --------------------------------------------------------------------

    def token(self, index: int) -> str:
        if not self.o.token_secret or not self.o.protocol.startswith("tether"):
            return ""
        from tether.auth import mint_connection_token

        # The same token for the same connection all run long: a reconnecting SDK
        # presents the token it connected with.
        token = self._tokens.get(index)
        if token is None:
            user = f"bench-{self.o.run_id}-{index}"
            token = self._tokens[index] = mint_connection_token(self.o.token_secret, user)
        return token

    async def connect(
        self,
        channels: Sequence[Sequence[str]],
        check_sample: int,
        recover: Callable[[int], dict[str, tuple[int, str]]] | None = None,
    ) -> None:
        """Open one connection per entry of ``channels`` (its channel list); offsets are
        checked on ``check_sample`` of them, spread evenly. ``recover(i)``: the channels
        connection ``i`` subscribes with ``recover: true``, with their (offset, epoch)."""
        n = len(channels)
        limit = raise_fd_limit(n + 64)
        if limit < n + 64:
            _log(
                f"warning: RLIMIT_NOFILE is {limit} (hard limit); "
                f"{n} connections need about {n + 64}"
            )
        spread = self.o.source_addresses
        if not spread and n > EPHEMERAL_PORTS_SAFE and self.host.startswith("127."):
            spread = math.ceil(n / EPHEMERAL_PORTS_SAFE) + 1
        check_every = max(1, n // check_sample) if check_sample > 0 else 0
        factories: list[Callable[[], BenchConnection]] = []
        for i, chans in enumerate(channels):
            checked = (
                bool(check_every) and i % check_every == 0 and (i // check_every) < check_sample
            )
            setup: dict[str, Any] = {"host": f"{self.host}:{self.port}", "token": self.token(i)}
            if recover is not None:
                setup["recover"] = recover(i)
            driver = self.driver.for_connection(i)

            def factory(
                chans: Sequence[str] = chans,
                checked: bool = checked,
                setup: dict[str, Any] = setup,
                driver: Driver = driver,
            ) -> BenchConnection:
                return BenchConnection(driver, self.stats, chans, checked=checked, setup=setup)

            factories.append(factory)
        t0 = time.perf_counter()

        def progressed(count: int) -> None:
            self.connected = count

        self.conns, self.connect_errors, self.connect_refused = await open_many(
            factories,
            self.host,
            self.port,
            concurrency=self.o.connect_concurrency,
            spread=spread,
            on_progress=progressed,
        )
        self.connect_seconds = time.perf_counter() - t0
        if self.connect_errors:
            _log(
                f"{len(self.connect_errors)} of {n} connections failed; "
                f"first: {self.connect_errors[0]}"
            )
        if not self.conns:
            raise ConnectionError(f"no connection could be set up: {self.connect_errors[:1]}")

    @property
    def alive(self) -> int:
        return sum(1 for c in self.conns if not c.lost)

    @property
    def checked(self) -> list[BenchConnection]:
        return [c for c in self.conns if c.checked]

    async def make_publisher(self, concurrency: int) -> Publisher:
        if self.o.protocol.startswith("tether"):
            self.publisher = HttpApiPublisher(
                self.driver, self.o.api_url, self.o.api_key, concurrency
            )
        else:
            self.publisher = await WebSocketPublisher.connect(self.driver, self.o.url)
        return self.publisher

    # -- measuring --------------------------------------------------------------------

    def stop_profiler(self) -> None:
        """Stop py-spy (SIGINT: it writes what it sampled) and summarise its file."""
        profiler, self._profiler = self._profiler, None
        if profiler is None:
            return
        from tether_bench.profile import CONNECT_STAGES
        from tether_bench.profile import report as profile_report

        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()
        path = Path(self.o.profile)
        if path.exists():
            parts = CONNECT_STAGES if self.o.scenario == "connect-cost" else ()
            self.profile = profile_report(path, parts=parts)

    def start_measure(self, profile: bool = True) -> None:
        if profile and self.o.profile and self.o.server_pid and self._profiler is None:
            from tether_bench.profile import record

            self._profiler = record(
                self.o.server_pid, 600, Path(self.o.profile), rate=self.o.profile_rate
            )
        self.measuring = True
        self.stats.record_latency = True
        self.monitor.start()
        self._client_cpu0 = _client_cpu()
        self._measure_t0 = time.perf_counter()

    def stop_measure(self) -> dict[str, Any]:
        self.measuring = False
        self.stats.record_latency = False
        wall = time.perf_counter() - self._measure_t0
        server_cpu, _ = self.monitor.since_start()
        client_cpu = _client_cpu() - self._client_cpu0
        self.stop_profiler()
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server_cpu, 3),
            "client_cpu_s": round(client_cpu, 3),
        }

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            total = self.stats.deliveries
            last_total, last_t = self._last
            rate = (total - last_total) / max(now - last_t, 1e-9)
            self._last = (total, now)
            if self.measuring:
                self.samples.append(rate)
            rss = self.monitor.rss()
            if self.o.progress:
                parts = [
                    f"[{self.o.scenario}] {self.phase}",
                    f"conns {self.connected if self.phase == 'connecting' else self.alive}",
                    f"deliveries/s {rate:,.0f}",
                    f"total {total:,}",
                ]
                if self.monitor.process is not None:
                    parts.append(f"server rss {rss / 2**20:.0f} MiB")
                _log("  ".join(parts))

    async def wait_start_file(self) -> None:
        """Phase "ready" until ``start_file`` exists (at once when none is set)."""
        if not self.o.start_file:
            return
        self.phase = "ready"
        # Another process makes the file: polling is the only way to see it.
        while not await asyncio.to_thread(os.path.exists, self.o.start_file):  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    def start_progress(self) -> None:
        self._progress_task = asyncio.get_running_loop().create_task(self._progress())

    async def close(self) -> None:
        if self._progress_task is not None:
            self._progress_task.cancel()
            await asyncio.gather(self._progress_task, return_exceptions=True)
        if self.publisher is not None:
            await self.publisher.close()
        for conn in self.conns:
            conn.close()
        await asyncio.sleep(0.05)

    # -- publishing -------------------------------------------------------------------

    async def publish_max(self, channel: str, seconds: float, subscribers: int) -> int:
        """Publish to ``channel`` as fast as deliveries allow for ``seconds``: at most
        ``window`` publications ahead of the average subscriber, at most ``concurrency``
        requests in flight. Returns the publications fired."""
        assert self.publisher is not None
        pub = self.publisher
        stats = self.stats
        batch = self.o.batch
        fixed = self.o.window
        window = fixed or self.window
        concurrency = self.o.concurrency
        progress = asyncio.Event()
        base = stats.deliveries
        sent = 0
        start = time.perf_counter()
        end = start + seconds
        while (now := time.perf_counter()) < end:
            delivered = (stats.deliveries - base) / subscribers
            if not fixed and now - start > 0.2:
                # Enough in flight to keep the target busy, little enough that a slow
                # target drains in a fraction of a second (no artificial backlog).
                rate = delivered / (now - start)
                window = self.window = int(min(400, max(batch, rate * self.o.lag)))
            if pub.inflight < concurrency and sent + batch - delivered <= window:
                pub.fire(channel, batch, on_done=progress.set)
                sent += batch
                if pub.inflight == 0:
                    await asyncio.sleep(0)  # writes never wait: let the loop breathe
                continue
            progress.clear()
            threshold = base + math.ceil((sent + batch - window) * subscribers)
            stats.notify_at(threshold, progress.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 0.05)
        stats.wake_at, stats.on_progress = -1, None
        await pub.wait_idle()
        return sent

    async def publish_paced(
        self, pick: Callable[[int], str], rate: float, seconds: float
    ) -> tuple[int, int]:
        """Publish one publication at a time at ``rate`` per second for ``seconds``;
        ``pick(i)`` names the channel of the i-th. Each carries its scheduled time.
        Returns (fired, late) where ``late`` waited for a free request slot."""
        assert self.publisher is not None
        pub = self.publisher
        start = time.perf_counter()
        start_us = time.perf_counter_ns() // 1000
        fired = late = 0
        total = int(rate * seconds)
        while fired < total:
            elapsed = time.perf_counter() - start
            due = min(total, int(elapsed * rate) + 1)
            while fired < due:
                if pub.inflight >= self.o.concurrency:
                    late += 1
                    break
                scheduled = start_us + int(fired * 1e6 / rate)
                pub.fire(pick(fired), 1, sent_at=scheduled)
                fired += 1
            await asyncio.sleep(0.001)
        await pub.wait_idle()
        return fired, late

    async def drain(self, expected: int, stall: float = 3.0, cap: float = 60.0) -> bool:
        """Wait until ``expected`` deliveries in total. Gives up (False) when nothing
        arrived for ``stall`` seconds or after ``cap`` seconds: a slow target is waited
        for, and only what never comes is counted as lost."""
        done = asyncio.Event()
        self.stats.notify_at(expected, done.set)
        start = last_change = time.perf_counter()
        seen = self.stats.deliveries
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), 0.25)
            except TimeoutError:
                now = time.perf_counter()
                if self.stats.deliveries != seen:
                    seen, last_change = self.stats.deliveries, now
                elif now - last_change > stall or now - start > cap:
                    self.stats.wake_at, self.stats.on_progress = -1, None
                    return False
        return True

    # -- the report -------------------------------------------------------------------

    def correctness(self, expected: Callable[[BenchConnection], int]) -> dict[str, Any]:
        """Losses, duplicates, order violations. ``expected(conn)``: publications that
        connection should have received."""
        assert self.publisher is not None
        final = self.publisher.final
        losses = duplicates = order = 0
        for conn in self.conns:
            want = expected(conn)
            if conn.checked:
                losses += conn.missing_until(final)
                duplicates += conn.duplicates
                order += conn.order_violations
            else:
                losses += max(0, want - conn.count)
                duplicates += max(0, conn.count - want)
        checked = len(self.checked)
        return {
            "losses": losses,
            "duplicates": duplicates,
            "order_violations": order,
            "checked_connections": checked,
            "check": (
                f"offsets, order and latency checked on {checked} of {len(self.conns)} "
                "connections; deliveries counted on all (losses/duplicates of the others "
                "by count)"
            ),
        }

    def base_report(self) -> dict[str, Any]:
        closed_by_server = [c.error for c in self.conns if c.lost and c.error]
        return {
            "scenario": self.o.scenario,
            "target": self.o.url,
            "protocol": self.o.protocol,
            "connections": len(self.conns) + len(self.connect_errors),
            "connected": len(self.conns),
            "connect_errors": len(self.connect_errors),
            "connect_error_sample": self.connect_errors[:3],
            "connect_s": round(getattr(self, "connect_seconds", 0.0), 3),
            "connect_refused_retried": self.connect_refused,
            "alive_at_end": self.alive,
            "closed_by_server_sample": closed_by_server[:3],
            "server_pid": self.o.server_pid or None,
        }

    def server_report(self, measure: dict[str, Any], deliveries: int) -> dict[str, Any]:
        wall = max(measure["wall_s"], 1e-9)
        out: dict[str, Any] = {
            "client_cpu_percent": round(100 * measure["client_cpu_s"] / wall, 1),
        }
        if self.monitor.process is not None:
            rss = self.monitor.rss()
            cpu = measure["server_cpu_s"]
            out.update(
                server_cpu_percent=round(100 * cpu / wall, 1),
                server_rss_mib=round(rss / 2**20, 1),
                server_rss_peak_mib=round(self.monitor.peak_rss / 2**20, 1),
                deliveries_per_server_cpu_s=round(deliveries / cpu) if cpu > 0 else None,
            )
        return out


def _latency(values: list[int]) -> dict[str, Any] | None:
    if not values:
        return None
    ordered = sorted(values)
    ms = 1000.0
    return {
        "p50_ms": round(percentile(ordered, 0.50) / ms, 3),
        "p99_ms": round(percentile(ordered, 0.99) / ms, 3),
        "p999_ms": round(percentile(ordered, 0.999) / ms, 3),
        "max_ms": round(ordered[-1] / ms, 3),
        "samples": len(ordered),
    }


def _sample(options: BenchOptions, n: int, default: int) -> int:
    return min(n, default if options.check_sample < 0 else options.check_sample)


# -- scenarios ----------------------------------------------------------------------------


async def fanout(run: Run) -> dict[str, Any]:
    o = run.o
    channel = run.driver.channel(f"fan-{o.run_id}")
    n = o.connections
    run.phase = "connecting"
    await run.connect([[channel]] * n, _sample(o, n, 64))
    await run.make_publisher(o.concurrency)
    subscribers = len(run.conns)
    run.phase = "publishing"
    run.start_measure()
    bursts: list[float] = []
    per_burst = o.duration / max(1, o.bursts)
    drained_all = True
    for _ in range(max(1, o.bursts)):
        before = run.stats.deliveries
        accepted0 = run.publisher.total_accepted if run.publisher else 0
        t0 = time.perf_counter()
        await run.publish_max(channel, per_burst, subscribers)
        assert run.publisher is not None
        accepted = run.publisher.total_accepted - accepted0
        drained = await run.drain(before + accepted * run.alive)
        drained_all = drained_all and drained
        t1 = run.stats.woke_at if drained else time.perf_counter()
        bursts.append((run.stats.deliveries - before) / max(t1 - t0, 1e-9))
        await asyncio.sleep(0.3)
    measure = run.stop_measure()
    assert run.publisher is not None
    total_pubs = run.publisher.total_accepted
    report = run.base_report()
    deliveries = run.stats.deliveries
    report.update(
        publications=total_pubs,
        publish_errors=run.publisher.errors,
        publish_error_sample=run.publisher.last_error or None,
        batch=o.batch,
        window=o.window or f"adaptive ({o.lag} s of deliveries), ended at {run.window}",
        deliveries=deliveries,
        expected_deliveries=total_pubs * subscribers,
        deliveries_per_s=round(median(bursts)),
        burst_deliveries_per_s=[round(b) for b in bursts],
        drained=drained_all,
        latency=_latency(run.stats.latencies),
        **run.correctness(lambda conn: total_pubs),
        **run.server_report(measure, deliveries),
    )
    return report


async def rooms(run: Run) -> dict[str, Any]:
    o = run.o
    n = o.connections
    personal = [run.driver.channel(f"u{i}-{o.run_id}") for i in range(n)]
    groups = [run.driver.channel(f"g{j}-{o.run_id}") for j in range(math.ceil(n / GROUP_SIZE))]
    await run.connect([[personal[i], groups[i // GROUP_SIZE]] for i in range(n)], _sample(o, n, n))
    await run.make_publisher(o.concurrency)
    await run.wait_start_file()
    rate = o.rate or 1000.0
    run.phase = "publishing"

    def pick(i: int) -> str:
        half = i // 2
        return personal[half % n] if i % 2 == 0 else groups[half % len(groups)]

    run.start_measure()
    _fired, late = await run.publish_paced(pick, rate, o.duration)
    assert run.publisher is not None
    accepted = run.publisher.accepted

    def expected(conn: BenchConnection) -> int:
        return sum(accepted.get(ch, 0) for ch in conn.channels)

    total_expected = sum(expected(c) for c in run.conns)
    drained = await run.drain(total_expected)
    measure = run.stop_measure()
    report = run.base_report()
    deliveries = run.stats.deliveries
    report.update(
        rate=rate,
        publications=run.publisher.total_accepted,
        publish_errors=run.publisher.errors,
        publish_error_sample=run.publisher.last_error or None,
        publisher_late=late,
        deliveries=deliveries,
        expected_deliveries=total_expected,
        deliveries_per_s=round(deliveries / max(measure["wall_s"], 1e-9)),
        drained=drained,
        latency=_latency(run.stats.latencies),
        **run.correctness(expected),
        **run.server_report(measure, deliveries),
    )
    return report


async def idle(run: Run) -> dict[str, Any]:
    o = run.o
    n = o.connections
    personal = [run.driver.channel(f"u{i}-{o.run_id}") for i in range(n)]
    groups = [run.driver.channel(f"g{j}-{o.run_id}") for j in range(math.ceil(n / GROUP_SIZE))]
    await asyncio.sleep(0.5)
    rss0 = run.monitor.rss()
    await run.connect([[personal[i], groups[i // GROUP_SIZE]] for i in range(n)], 0)
    run.phase = "settling"
    await asyncio.sleep(o.settle)
    rss1 = run.monitor.rss()
    run.phase = "holding"
    run.start_measure()
    await asyncio.sleep(o.duration)
    rss2 = run.monitor.rss()
    measure = run.stop_measure()
    report = run.base_report()
    connected = len(run.conns)
    per_conn = (rss1 - rss0) / connected / 1024 if run.monitor.process and connected else None
    report.update(
        channels_per_connection=2,
        connect_per_s=round(connected / max(run.connect_seconds, 1e-9)),
        server_rss_before_mib=round(rss0 / 2**20, 1) if run.monitor.process else None,
        server_rss_connected_mib=round(rss1 / 2**20, 1) if run.monitor.process else None,
        server_rss_end_mib=round(rss2 / 2**20, 1) if run.monitor.process else None,
        rss_per_connection_kib=round(per_conn, 2) if per_conn is not None else None,
        held_s=o.duration,
        **run.server_report(measure, 0),
    )
    report.pop("deliveries_per_server_cpu_s", None)
    return report


async def connect_cost(run: Run) -> dict[str, Any]:
    o = run.o
    n = o.connections
    personal = [run.driver.channel(f"c{i}-{o.run_id}") for i in range(n)]
    groups = [run.driver.channel(f"cg{j}-{o.run_id}") for j in range(math.ceil(n / GROUP_SIZE))]
    # Probes subscribe every group channel once (50 per connection, within the server's
    # commands-per-frame limit): the fleet then recovers from the real position (offset
    # and epoch), as a reconnecting client does.
    probe = Run(o)
    await probe.connect([groups[j : j + 50] for j in range(0, len(groups), 50)], 0)
    recover: dict[str, tuple[int, str]] = {}
    for conn in probe.conns:
        offsets, epochs = conn.setup.get("offsets", {}), conn.setup.get("epochs", {})
        recover.update({ch: (offsets.get(ch, 0), epochs.get(ch, "")) for ch in conn.channels})
    await probe.close()
    await asyncio.sleep(0.5)
    run.phase = "connecting"
    run.start_measure()
    await run.connect(
        [[personal[i], groups[i // GROUP_SIZE]] for i in range(n)],
        0,
        recover=lambda i: (
            {groups[i // GROUP_SIZE]: recover.get(groups[i // GROUP_SIZE], (0, ""))}
            | {personal[i]: (0, "")}
        ),
    )
    measure = run.stop_measure()
    report = run.base_report()
    connected = len(run.conns)
    cpu = measure["server_cpu_s"]
    recovered = sum(1 for c in run.conns for ok in (c.setup.get("recovered") or {}).values() if ok)
    report.update(
        channels_per_connection=2,
        connect_per_s=round(connected / max(run.connect_seconds, 1e-9)),
        server_cpu_s=cpu,
        client_cpu_s=measure["client_cpu_s"],
        connects_per_server_cpu_s=round(connected / cpu) if cpu > 0 else None,
        server_cpu_us_per_connect=round(1e6 * cpu / connected, 1) if connected else None,
        subscribes_recovered=recovered,
        **run.server_report(measure, 0),
    )
    report.pop("deliveries_per_server_cpu_s", None)
    # A reconnection storm: everyone gone at once, then back with the same token and the
    # positions it had (recover: true), e.g. after a node loss or a network blip.
    by_token = {c.setup.get("token"): c for c in run.conns}
    channels = [[personal[i], groups[i // GROUP_SIZE]] for i in range(n)]
    positions: list[dict[str, tuple[int, str]]] = []
    for i in range(n):
        was = by_token.get(run.token(i))
        offsets = was.setup.get("offsets", {}) if was else {}
        epochs = was.setup.get("epochs", {}) if was else {}
        positions.append({ch: (offsets.get(ch, 0), epochs.get(ch, "")) for ch in channels[i]})
    for conn in run.conns:
        conn.close()
    await asyncio.sleep(2.0)
    run.phase = "reconnecting"
    run.start_measure(profile=False)
    await run.connect(channels, 0, recover=lambda i: positions[i])
    again = run.stop_measure()
    cpu = again["server_cpu_s"]
    report.update(
        reconnected=len(run.conns),
        reconnect_server_cpu_s=cpu,
        reconnects_per_server_cpu_s=round(len(run.conns) / cpu) if cpu > 0 else None,
        reconnect_errors=len(run.connect_errors),
    )
    return report


async def latency(run: Run) -> dict[str, Any]:
    o = run.o
    channel = run.driver.channel(f"lat-{o.run_id}")
    n = o.connections
    await run.connect([[channel]] * n, _sample(o, n, 100))
    subscribers = len(run.conns)
    await run.make_publisher(o.concurrency)
    calibrated = None
    rate = o.rate
    if not rate:
        run.phase = "calibrating"
        # The maximum with the same publish shape as the paced phase (one publication per
        # request, same request concurrency): half of a batched maximum would overload.
        before = run.stats.deliveries
        t0 = time.perf_counter()
        await run.publish_max(channel, o.calibrate, subscribers)
        assert run.publisher is not None
        await run.drain(before + run.publisher.total_accepted * subscribers)
        elapsed = time.perf_counter() - t0
        max_deliveries = (run.stats.deliveries - before) / elapsed
        calibrated = round(max_deliveries)
        rate = o.fraction * max_deliveries / subscribers
        await asyncio.sleep(0.5)
    assert run.publisher is not None
    before = run.stats.deliveries
    accepted0 = run.publisher.total_accepted
    run.stats.latencies.clear()
    run.phase = "paced"
    run.start_measure()
    _, late = await run.publish_paced(lambda i: channel, rate, o.duration)
    accepted = run.publisher.total_accepted - accepted0
    drained = await run.drain(before + accepted * subscribers)
    measure = run.stop_measure()
    total_pubs = run.publisher.total_accepted
    report = run.base_report()
    deliveries = run.stats.deliveries - before
    report.update(
        calibrated_max_deliveries_per_s=calibrated,
        fraction=o.fraction if calibrated is not None else None,
        rate=round(rate, 1),
        publications=accepted,
        publish_errors=run.publisher.errors,
        publish_error_sample=run.publisher.last_error or None,
        publisher_late=late,
        deliveries=deliveries,
        deliveries_per_s=round(deliveries / max(measure["wall_s"], 1e-9)),
        drained=drained,
        latency=_latency(run.stats.latencies),
        measured_s=measure["wall_s"],
        server_cpu_s=measure["server_cpu_s"],
        **run.correctness(lambda conn: total_pubs),
        **run.server_report(measure, deliveries),
    )
    return report


_RUNNERS = {
    "fanout": fanout,
    "rooms": rooms,
    "idle": idle,
    "latency": latency,
    "connect-cost": connect_cost,
}


async def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run one scenario against a running target; returns the report (a JSON object).

    Raises ConnectionError when no connection could be set up."""
    from tether_bench.hooks import RUNNERS as hook_runners
    from tether_bench.resilience import RUNNERS as resilience_runners

    runners = {**_RUNNERS, **resilience_runners, **hook_runners}
    if options.scenario not in runners:
        raise ValueError(f"unknown scenario {options.scenario!r} (one of {', '.join(SCENARIOS)})")
    if not options.connections:
        options.connections = DEFAULT_CONNECTIONS[options.scenario]
    if not options.batch:
        options.batch = 10 if options.scenario == "fanout" else 1
    if not options.concurrency:
        options.concurrency = 4 if options.scenario == "fanout" else 64
    run = Run(options)
    run.start_progress()
    started = time.time()
    try:
        report = await runners[options.scenario](run)
    finally:
        run.stop_profiler()
        await run.close()
    if run.profile is not None:
        report["profile"] = run.profile
    report["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    report["bench_pid"] = os.getpid()
    return report
