"""`make bench-scale`: Tether scaled out on one machine, measured (issues 3, 4 and 11).

Four parts (`make bench-scale` runs the first three), each with a Redis of its own
(``tether_bench.redisserver``, a free port):

``workers``
    ``tether serve --workers N`` for N = 1, 2, 3 over one Redis; the same ``tether-bench run
    fanout`` (2,000 subscribers, as ``make bench``) against each, in interleaved rounds,
    and one ``rooms`` run per N. Server CPU is the sum over the worker processes (sampled
    with psutil here, and by the bench's ``--server-pid``, which includes children).
``cluster``
    Three ``tether serve`` node processes over one Redis behind HAProxy (round-robin, no
    stickiness; ``tether_bench.cluster``): ``tether-bench run rooms`` through the balancer,
    then a reconnect storm: 2,000 reconnecting clients (``Follower``: resubscribe with
    recovery, as the SDKs do) under a steady publish stream, one node killed with SIGKILL;
    time until every client of the dead node has resubscribed and recovered, refused
    connects, losses and duplicates.
``hundred``
    100,000 connections (issue 11): ``tether serve --workers 7`` (one process holds at most
    20,000 file descriptors here, so about 14,300 each) and six ``tether-bench run rooms``
    processes of about 16,667 connections each, spread over source addresses 127.0.0.2-9
    (12,500 each, under the ~28,000 ephemeral ports of one address), started together
    (``--start-file``); every publication's delivery and every offset is checked on every
    connection; RSS and CPU of the workers and of Redis, while connecting and publishing.
``fifty``
    The same with 50,000 connections, 3 workers, 3 bench processes and 127.0.0.2-5 (issue
    3; ``--only fifty``: its figures are kept in the JSON and on the page from its last run).

Results go to docs/benchmarks-scale.json and into docs/benchmarks.md between the
``<!-- scale:begin -->`` and ``<!-- scale:end -->`` markers (the rest of the page belongs to
tether-bench compare, which keeps this section when it rewrites the page).

Every process started here runs in its own session and is stopped by its pid or process
group id (workers: by their own pids, they have process groups of their own), whatever
happens; the whole run is bounded (``make bench-scale`` adds ``timeout 1500``).

usage: tether-bench scale [--only workers cluster hundred fifty] [--quick]
                          [--out docs/benchmarks.md]
       tether-bench scale --render-only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tether.auth import mint_connection_token
from tether_bench.cluster import (
    CLUSTER_API_KEY,
    CLUSTER_SECRET,
    Follower,
    HAProxy,
    NodeProcess,
    node_config,
)
from tether_bench.paths import checkout
from tether_bench.redisserver import RedisServer
from tether_bench.verdicts import (
    FIFTY_K,
    HUNDRED_K,
    caught_up_sentence,
    client_storm_finding,
    cluster_rooms_finding,
    connections_verdict,
    correctness,
    fifty_delivered_clause,
    fmt,
    node_crash_finding,
    redis_share_clause,
    rooms_workers_finding,
    shown_command,
    workers_fanout_verdict,
    workers_noise_clause,
)

ROOT = checkout()
BIN = Path(sys.executable).parent
TETHER = str(BIN / "tether")
BENCH = str(BIN / "tether-bench")
BASE_PORT = int(os.environ.get("BENCH_SCALE_PORT", "18950"))
TOKEN_SECRET = "bench-token-secret-" + "b" * 24
API_KEY = "bench-api-key"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
CONNECTION_PARTS = (("hundred", HUNDRED_K), ("fifty", FIFTY_K))
"""The connection-count parts, largest first, with the goal each one's verdict is against."""

BENCH_NAMESPACE = """
[namespaces.bench]
history_size = 100
history_ttl = 300
recover = true
allow_subscribe = true
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def rel(cmd: list[str]) -> str:
    return " ".join(cmd).replace(str(BIN) + "/", ".venv/bin/").replace(str(ROOT) + "/", "")


# -- processes ---------------------------------------------------------------------------


class Proc:
    """A child in its own session; :meth:`stop` ends it (and ``extra`` pids) by id."""

    def __init__(self, cmd: list[str], env: dict[str, str], logfile: Path) -> None:
        self.log = logfile.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.extra: list[int] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # Workers (own process groups) normally exit with their supervisor; make sure.
        for pid in self.extra:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                proc.kill()
                proc.wait(5)
        self.log.close()


def wait_http(port: int, path: str = "/ready", timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as sock:
                sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                if b" 200 " in sock.recv(64):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing ready on :{port}{path}")


def start_workers(n: int, redis_url: str, port: int, workdir: Path) -> Proc:
    """``tether serve --workers n`` on ``port``/``port+1``, ready; its worker pids in
    ``.extra``. ``n = 0``: one process on the memory broker (the baseline of `make bench`)."""
    config = workdir / "scale.toml"
    broker = "memory" if n == 0 else "redis"
    config.write_text(
        f'host = "127.0.0.1"\nbroker = "{broker}"\nredis_url = "{redis_url}"\n'
        f'log_level = "warning"\ndrain_window = 1\n{BENCH_NAMESPACE}'
    )
    n = max(n, 1)
    env = dict(
        os.environ,
        TETHER_PORT=str(port),
        TETHER_HTTP_PORT=str(port + 1),
        TETHER_TOKEN_SECRET=TOKEN_SECRET,
        TETHER_API_KEY=API_KEY,
    )
    env.pop("TETHER_CONFIG", None)
    server = Proc(
        [TETHER, "serve", "--config", str(config), "--workers", str(n)],
        env,
        workdir / f"serve-w{n}.log",
    )
    try:
        end = time.monotonic() + 20
        while n > 1 and len(psutil.Process(server.pid).children()) < n and time.monotonic() < end:
            time.sleep(0.05)
        server.extra = [c.pid for c in psutil.Process(server.pid).children()]
        if n == 1:
            server.extra = []  # --workers 1 runs the node in the command's own process
        wait_http(port + 1)
        time.sleep(1.0)  # every worker listening, not just the first to answer
    except BaseException:
        server.stop()
        raise
    return server


def server_pids(server: Proc) -> list[int]:
    return server.extra or [server.pid]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def rss_bytes(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[pid] = psutil.Process(pid).memory_info().rss
    return out


def fds(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[pid] = psutil.Process(pid).num_fds()
    return out


class Sampler:
    """Samples RSS of ``pids`` once a second in a thread; keeps the peak of the sum."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, sum(rss_bytes(self.pids).values()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_cmd(scenario: str, port: int, args: list[str]) -> list[str]:
    return [
        BENCH,
        "run",
        scenario,
        "--url",
        f"ws://127.0.0.1:{port}/connection/websocket",
        "--api-url",
        f"http://127.0.0.1:{port + 1}/api",
        "--api-key",
        API_KEY,
        "--token-secret",
        TOKEN_SECRET,
        "--json",
        "--quiet",
        *args,
    ]


def run_bench(cmd: list[str], timeout: float = 240) -> dict[str, Any]:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": "bench timed out"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": err[-1500:] or "no report"}
    report: dict[str, Any] = json.loads(lines[-1])
    return report


# -- part 1: workers ---------------------------------------------------------------------


def part_workers(quick: bool, workdir: Path) -> dict[str, Any]:
    ns = (1, 2, 3)
    rounds = 1 if quick else 2
    fan = ["-n", "300" if quick else "2000", "--duration", "2" if quick else "10"]
    fan += ["--bursts", "2" if quick else "5"]
    rooms = ["-n", "300" if quick else "2000", "--duration", "2" if quick else "8"]
    rooms += ["--rate", "500" if quick else "2000"]
    runs: list[dict[str, Any]] = []
    # 0: one process on the memory broker, the setup of `make bench`, as the baseline.
    # Fan-out with the bench's adaptive window (as `make bench`) once, then with a fixed
    # window of 400 publications in interleaved rounds: publish-to-delivery over Redis
    # takes ~100 ms or more here, so a window of ~0.1 s of deliveries keeps the Redis path idle.
    plan = [("fanout", n, fan) for n in (0, *ns)]
    plan += [("fanout", n, [*fan, "--window", "400"]) for _ in range(rounds) for n in (0, *ns)]
    plan += [("rooms", n, rooms) for n in (0, *ns)]
    with RedisServer() as redis:
        for i, (scenario, n, extra) in enumerate(plan):
            port = BASE_PORT + 4 * (i % 10)
            load0 = loadavg()
            server = start_workers(n, redis.url, port, workdir)
            try:
                pids = server_pids(server)
                cmd = bench_cmd(scenario, port, ["--server-pid", str(server.pid), *extra])
                cpu0, rcpu0, t0 = cpu_seconds(pids), cpu_seconds([redis_pid(redis)]), time.time()
                report = run_bench(cmd)
                cpu1, rcpu1, t1 = cpu_seconds(pids), cpu_seconds([redis_pid(redis)]), time.time()
                per_worker = [round(cpu1[p] - cpu0.get(p, 0), 2) for p in cpu1]
                report.update(
                    workers=n,
                    worker_pids=pids,
                    # Over the whole bench command (connect, publish, drain), per worker.
                    worker_cpu_s_whole_run=per_worker,
                    redis_cpu_s_whole_run=round(sum(rcpu1.values()) - sum(rcpu0.values()), 2),
                    whole_run_s=round(t1 - t0, 1),
                    load_before=load0,
                    load_after=loadavg(),
                    command=rel(cmd).replace(str(server.pid), "SERVER_PID"),
                )
                runs.append(report)
                log(
                    f"  workers={n} {scenario}: "
                    + (
                        report.get("error", "")[:200]
                        or f"{report.get('deliveries_per_s'):,}/s, server CPU "
                        f"{report.get('server_cpu_percent')}%, per worker {per_worker} CPU-s, "
                        f"loss/dup {report.get('losses')}/{report.get('duplicates')}"
                    )
                )
            finally:
                server.stop()
    return {"runs": runs}


def redis_pid(redis: RedisServer) -> int:
    process = redis._process
    return process.pid if process is not None else 0


# -- part 2: a 3-node cluster behind HAProxy ----------------------------------------------


def part_cluster(quick: bool, workdir: Path) -> dict[str, Any]:
    import uvloop

    return uvloop.run(_cluster(quick, workdir))


async def _cluster(quick: bool, workdir: Path) -> dict[str, Any]:
    redis = RedisServer()
    await asyncio.to_thread(redis.start)
    config = node_config(redis.url, extra="drain_window = 1") + BENCH_NAMESPACE
    nodes = [NodeProcess(f"node-{i}", workdir, redis.url, config=config) for i in range(3)]
    lb = HAProxy(workdir, nodes)
    out: dict[str, Any] = {}
    try:
        for node in nodes:
            node.start()
        async with asyncio.timeout(60):
            for node in nodes:
                await node.wait_ready()
            lb.start()
            await lb.wait_up()
        n, duration = ("300", "2") if quick else ("2000", "8")
        out["rooms_runs"] = [
            await _cluster_bench(
                "rooms", ["-n", n, "--duration", duration, "--rate", str(rate)], nodes, lb, redis
            )
            for rate in (1000, 2000)
        ]
        # The bench's own storm (bench/src/tether_bench/resilience.py): every client socket cut
        # at once, all reconnect together through the balancer after --outage.
        storm = ["-n", "300" if quick else "2000", "--outage", "1", "--rate", "100"]
        out["client_storm"] = await _cluster_bench("reconnect-storm", storm, nodes, lb, redis)
        # A node crash: SIGKILL one node under 2,000 reconnecting clients.
        out["storm"] = await _storm(quick, nodes, lb)
    finally:
        lb.stop()
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))
        await asyncio.to_thread(redis.kill)
    return out


def _pids(nodes: list[NodeProcess]) -> list[int]:
    return [n.process.pid for n in nodes if n.process is not None and n.alive]


async def _cluster_bench(
    scenario: str, args: list[str], nodes: list[NodeProcess], lb: HAProxy, redis: RedisServer
) -> dict[str, Any]:
    """``tether-bench run SCENARIO`` through the balancer; CPU of nodes, HAProxy and Redis."""
    cmd = [
        BENCH,
        "run",
        scenario,
        "--url",
        f"ws://127.0.0.1:{lb.port}/connection/websocket",
        "--api-url",
        f"{lb.api_url}/api",
        "--api-key",
        CLUSTER_API_KEY,
        "--token-secret",
        CLUSTER_SECRET,
        "--json",
        "--quiet",
        *args,
    ]
    pids = _pids(nodes)
    assert lb.process is not None
    others = {"haproxy": lb.process.pid, "redis": redis_pid(redis)}
    load0 = loadavg()
    cpu0, ocpu0, t0 = cpu_seconds(pids), cpu_seconds(list(others.values())), time.time()
    report = await asyncio.to_thread(run_bench, cmd)
    cpu1, ocpu1, t1 = cpu_seconds(pids), cpu_seconds(list(others.values())), time.time()
    wall = t1 - t0
    report.update(
        node_cpu_s_whole_run=[round(cpu1[p] - cpu0[p], 2) for p in cpu1],
        node_cpu_percent_whole_run=round(100 * (sum(cpu1.values()) - sum(cpu0.values())) / wall),
        haproxy_cpu_s_whole_run=round(ocpu1[others["haproxy"]] - ocpu0[others["haproxy"]], 2),
        redis_cpu_s_whole_run=round(ocpu1[others["redis"]] - ocpu0[others["redis"]], 2),
        whole_run_s=round(wall, 1),
        load_before=load0,
        load_after=loadavg(),
        command=rel(cmd).replace(str(lb.port), "LB_PORT").replace(str(lb.api_port), "LB_API"),
    )
    lat = report.get("latency") or {}
    log(
        f"  cluster {scenario}: {report.get('deliveries_per_s')}/s p99 {lat.get('p99_ms')} ms, "
        f"recovery {report.get('time_to_full_recovery_s')} s, "
        f"loss/dup {report.get('losses')}/{report.get('duplicates')} "
        f"{report.get('error', '')[-300:]}"
    )
    return report


async def _publish(
    session: aiohttp.ClientSession, url: str, channel: str, seq: int, stats: dict[str, Any]
) -> None:
    """Publish until accepted, with one idempotency key (stored once, whatever node)."""
    body = {"channel": channel, "data": {"seq": seq}, "idempotency_key": f"{channel}/{seq}"}
    attempts = 0
    while True:
        attempts += 1
        try:
            async with session.post(
                f"{url}/api/publish", json=body, headers={"X-API-Key": CLUSTER_API_KEY}
            ) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, ValueError, TimeoutError):
            status, answer = 0, {}
        if status == 200 and isinstance(answer, dict) and "result" in answer:
            offset = answer["result"]["offset"]
            stats["final"][channel] = max(stats["final"].get(channel, 0), offset)
            stats["offsets"].setdefault(channel, set()).add(offset)
            break
        stats["failed_attempts"] += 1
        await asyncio.sleep(0.05)
    stats["retried"] += attempts > 1
    stats["accepted"] += 1


async def _storm(quick: bool, nodes: list[NodeProcess], lb: HAProxy) -> dict[str, Any]:
    """2,000 reconnecting clients under a publish stream; SIGKILL one node."""
    count = 200 if quick else 2000
    groups = count // 10
    followers = [
        Follower(
            lb.port,
            mint_connection_token(CLUSTER_SECRET, f"storm-{i}"),
            ["chat:all", f"chat:g{i // 10}"],
        )
        for i in range(count)
    ]
    tasks = [asyncio.create_task(f.run()) for f in followers]
    stats: dict[str, Any] = {
        "final": {},
        "offsets": {},
        "failed_attempts": 0,
        "retried": 0,
        "accepted": 0,
    }
    pubs: set[asyncio.Task[None]] = set()
    stop_publishing = asyncio.Event()
    out: dict[str, Any] = {"clients": count, "channels_per_client": 2, "groups": groups}
    try:
        t0 = time.monotonic()
        async with asyncio.timeout(90):
            for f in followers:
                await f.wait_until(lambda f: f.connected)
        out["connect_all_s"] = round(time.monotonic() - t0, 2)
        spread = {n.name: sum(1 for f in followers if f.nodes[-1] == n.name) for n in nodes}
        out["clients_per_node"] = spread

        async with aiohttp.ClientSession() as session:

            async def publisher() -> None:
                # 50 publications/s to the group channels (round-robin), 2/s to chat:all.
                tick, seq_all, seq = 0, 0, 0
                start = time.monotonic()
                while not stop_publishing.is_set():
                    channel = f"chat:g{tick % groups}"
                    task = asyncio.create_task(
                        _publish(session, lb.api_url, channel, tick // groups, stats)
                    )
                    pubs.add(task)
                    task.add_done_callback(pubs.discard)
                    if tick % 25 == 0:
                        task = asyncio.create_task(
                            _publish(session, lb.api_url, "chat:all", seq_all, stats)
                        )
                        pubs.add(task)
                        task.add_done_callback(pubs.discard)
                        seq_all += 1
                    tick += 1
                    seq += 1
                    await asyncio.sleep(max(0, start + tick * 0.02 - time.monotonic()))

            pub_task = asyncio.create_task(publisher())
            cpu_pids = _pids(nodes)
            await asyncio.sleep(3)
            victim = nodes[0]
            victims = [f for f in followers if f.nodes[-1] == victim.name]
            base = {id(f): (len(f.outcomes), len(f.errors), len(f.nodes)) for f in victims}
            base_err = {id(f): len(f.errors) for f in followers}
            cpu0 = cpu_seconds(cpu_pids)
            load0 = loadavg()
            t_kill = time.monotonic()
            await asyncio.to_thread(victim.kill)  # SIGKILL: a crash
            killed_after = time.monotonic() - t_kill
            done: dict[int, float] = {}
            first_connect: dict[int, float] = {}
            deadline = t_kill + 60
            while len(done) < len(victims) and time.monotonic() < deadline:
                now = time.monotonic() - t_kill
                for f in victims:
                    key = id(f)
                    n_out, _, n_nodes = base[key]
                    if key not in first_connect and len(f.nodes) > n_nodes:
                        first_connect[key] = now
                    if key not in done and f.connected and len(f.outcomes) - n_out >= 2:
                        done[key] = now
                await asyncio.sleep(0.02)
            out["resubscribed_s"] = sorted(done.values())
            await asyncio.sleep(max(0, 10 - (time.monotonic() - t_kill)))
            stop_publishing.set()
            await pub_task
            async with asyncio.timeout(60):
                while pubs:
                    await asyncio.gather(*list(pubs))
            cpu1 = cpu_seconds(cpu_pids)
            publish_window = time.monotonic() - t_kill
        # Every client must now catch up with every accepted publication.
        final = stats["final"]
        t_wait = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                for f in followers:
                    await f.wait_until(
                        lambda f: all(
                            (f.received[ch][-1].offset if f.received[ch] else 0) >= final.get(ch, 0)
                            for ch in f.channels
                        )
                    )
        caught_up_s = time.monotonic() - t_wait
        await asyncio.sleep(0.5)  # a duplicate would show by now
    finally:
        stop_publishing.set()
        for task in [*tasks, *pubs]:
            task.cancel()
        await asyncio.gather(*tasks, *pubs, return_exceptions=True)

    losses = duplicates = order = 0
    lagging = 0
    for f in followers:
        for ch in f.channels:
            offsets = f.offsets(ch)
            want = final.get(ch, 0)
            seen = set(offsets)
            losses += sum(1 for o in range(1, want + 1) if o not in seen)
            duplicates += len(offsets) - len(seen)
            order += sum(1 for a, b in itertools.pairwise(offsets) if b <= a)
            lagging += (offsets[-1] if offsets else 0) < want
    stored_twice = sum(final[ch] - len(stats["offsets"][ch]) for ch in final)
    recoveries = [o for f in victims for o in f.outcomes[base[id(f)][0] :] if o.was_recovering]
    errors_after = [e for f in followers for e in f.errors[base_err[id(f)] :]]
    times = out.pop("resubscribed_s")
    conn_times = sorted(first_connect.values())
    out.update(
        victim=victim.name,
        victim_clients=len(victims),
        sigkill_to_exit_s=round(killed_after, 3),
        resubscribed=len(times),
        resubscribed_p50_s=round(statistics.median(times), 3) if times else None,
        resubscribed_p99_s=round(times[max(0, int(len(times) * 0.99) - 1)], 3) if times else None,
        all_resubscribed_s=round(times[-1], 3) if len(times) == len(victims) else None,
        first_reconnect_p50_s=round(statistics.median(conn_times), 3) if conn_times else None,
        recoveries=len(recoveries),
        recovered_true=sum(1 for o in recoveries if o.recovered),
        moved_to={n.name: sum(1 for f in victims if f.nodes[-1] == n.name) for n in nodes[1:]},
        connect_errors_after_kill=sum(1 for e in errors_after if e.startswith("open:")),
        refused_503_after_kill=sum(1 for e in errors_after if "HTTP 503" in e),
        session_errors_after_kill=sum(1 for e in errors_after if e.startswith("session:")),
        publications=stats["accepted"],
        publish_attempts_failed=stats["failed_attempts"],
        publications_retried=stats["retried"],
        stored_twice=stored_twice,
        catch_up_after_last_publish_s=round(caught_up_s, 2),
        losses=losses,
        duplicates=duplicates,
        order_violations=order,
        clients_behind_at_end=lagging,
        node_cpu_s_after_kill=[round(cpu1[p] - cpu0[p], 2) for p in cpu0 if p in cpu1],
        window_after_kill_s=round(publish_window, 1),
        load_before=load0,
        load_after=loadavg(),
    )
    log(
        f"  storm: {len(victims)} clients of {victim.name}; all resubscribed in "
        f"{out['all_resubscribed_s']} s (p50 {out['resubscribed_p50_s']}); recovered "
        f"{out['recovered_true']}/{out['recoveries']}; loss/dup/order {losses}/{duplicates}/"
        f"{order}; refused {out['refused_503_after_kill']}"
    )
    return out


# -- parts 3 and 4: 50,000 and 100,000 connections ----------------------------------------

EPHEMERAL_PORTS = 28_000
"""About what 32768-60999 (this machine's ip_local_port_range) gives each source address."""


def part_fifty(quick: bool, workdir: Path) -> dict[str, Any]:
    """Issue 3: 50,000 connections, 3 workers, 3 bench processes, 4 source addresses."""
    if quick:
        return part_connections(3000, 3, 3, 4, 100, 10, BASE_PORT + 60, "fifty", workdir)
    return part_connections(50_000, 3, 3, 4, 300, 60, BASE_PORT + 60, "fifty", workdir)


def part_hundred(quick: bool, workdir: Path) -> dict[str, Any]:
    """Issue 11: 100,000 connections, 7 workers (about 14,300 sockets each, under the
    20,000 open files one process may hold), 6 bench processes of about 16,667, over 8
    source addresses (12,500 each, under the ~28,000 ephemeral ports); 150 publications/s
    per bench process, so the same 900/s in all as the 50,000 run."""
    if quick:
        return part_connections(3000, 3, 3, 4, 50, 10, BASE_PORT + 80, "hundred", workdir)
    return part_connections(100_000, 7, 6, 8, 150, 60, BASE_PORT + 80, "hundred", workdir)


def part_connections(
    total: int,
    n_workers: int,
    procs: int,
    spread: int,
    rate: int,
    duration: int,
    port: int,
    name: str,
    workdir: Path,
) -> dict[str, Any]:
    """``total`` connections, each in a personal and a 10-member group channel, held by
    ``tether serve --workers n_workers`` over a Redis of its own and opened by ``procs``
    ``tether-bench run rooms`` processes over ``spread`` source addresses, which start
    publishing together (``--start-file``), each at ``rate``/s for ``duration`` s; every
    publication's delivery and every offset checked on every connection."""
    import resource

    sizes = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(sizes) + 200 > soft or total // n_workers + 500 > soft:
        raise RuntimeError(
            f"RLIMIT_NOFILE is {soft}: {max(sizes):,} connections per bench process or "
            f"{total // n_workers:,} per worker do not fit; use more processes/workers"
        )
    if total / spread > EPHEMERAL_PORTS:
        raise RuntimeError(
            f"{total:,} connections over {spread} source addresses exceed the ~"
            f"{EPHEMERAL_PORTS:,} ephemeral ports of each"
        )
    start_file = workdir / f"{name}.start"
    start_file.unlink(missing_ok=True)
    out: dict[str, Any] = {
        "connections": total,
        "bench_processes": procs,
        "bench_sizes": sizes,
        "source_addresses": spread,
        "rate_per_process": rate,
        "duration_s": duration,
        "nofile_soft": soft,
        "measured": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    # Setup is bounded by the workers' CPU (about 1.3 ms per connection over Redis) and
    # admission control (2,000 connects/s per worker): give it time in proportion.
    setup_limit = 240 * max(1.0, total / 50_000)
    with RedisServer() as redis:
        server = start_workers(n_workers, redis.url, port, workdir)
        benches: list[subprocess.Popen[str]] = []
        try:
            workers = server_pids(server)
            rpid = redis_pid(redis)
            time.sleep(1)
            rss0 = rss_bytes(workers)
            cmds = [
                bench_cmd(
                    "rooms",
                    port,
                    [
                        "-n",
                        str(size),
                        "--rate",
                        str(rate),
                        "--duration",
                        str(duration),
                        "--source-addresses",
                        str(spread),
                        "--start-file",
                        str(start_file),
                    ],
                )
                for size in sizes
            ]
            for cmd in cmds:
                cmd.remove("--quiet")  # progress lines tell when every connection is up
            out["command"] = rel(cmds[0]).replace(str(start_file), "START_FILE")
            phases = ["connecting"] * procs
            lines: list[list[str]] = [[] for _ in range(procs)]
            outputs: list[str] = [""] * procs
            load0 = loadavg()
            t0 = time.monotonic()
            cpu_a = cpu_seconds([*workers, rpid])
            for cmd in cmds:
                benches.append(
                    subprocess.Popen(
                        cmd,
                        cwd=ROOT,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        start_new_session=True,
                    )
                )

            def read_err(i: int) -> None:
                stream = benches[i].stderr
                assert stream is not None
                for line in stream:
                    lines[i].append(line.rstrip())
                    if line.startswith("["):
                        phases[i] = line.split("]", 1)[1].split()[0]

            def read_out(i: int) -> None:
                stream = benches[i].stdout
                assert stream is not None
                outputs[i] = stream.read()

            readers = [threading.Thread(target=f, args=(i,), daemon=True) for i in range(procs)
                       for f in (read_err, read_out)]  # fmt: skip
            for thread in readers:
                thread.start()
            with Sampler(workers) as sampler:
                end = time.monotonic() + setup_limit
                while any(p != "ready" for p in phases) and time.monotonic() < end:
                    if any(b.poll() is not None for b in benches):
                        break
                    time.sleep(0.2)
                connect_s = time.monotonic() - t0
                cpu_b = cpu_seconds([*workers, rpid])
                load_connected = loadavg()
                redis_rss1 = rss_bytes([rpid]).get(rpid, 0)
                time.sleep(3)  # settle: setup garbage collected, queues empty
                rss1 = rss_bytes(workers)
                fd1 = fds(workers)
                cpu_c, t_c = cpu_seconds([*workers, rpid]), time.monotonic()
                start_file.touch()
                for b in benches:
                    try:
                        b.wait(timeout=duration + 180)
                    except subprocess.TimeoutExpired:
                        os.killpg(b.pid, signal.SIGKILL)
                        b.wait()
                cpu_d, t_d = cpu_seconds([*workers, rpid]), time.monotonic()
                rss2 = rss_bytes(workers)
                redis_rss2 = rss_bytes([rpid]).get(rpid, 0)
            for thread in readers:
                thread.join(5)
            reports: list[dict[str, Any]] = []
            for i in range(procs):
                found = [ln for ln in outputs[i].splitlines() if ln.startswith("{")]
                reports.append(
                    json.loads(found[-1]) if found else {"error": "\n".join(lines[i][-5:])}
                )

            def span(a: dict[int, float], b: dict[int, float], pids: list[int]) -> float:
                return sum(b.get(p, 0) - a.get(p, 0) for p in pids)

            connected = sum(r.get("connected", 0) for r in reports)
            wall = t_d - t_c
            worker_cpu_connect = span(cpu_a, cpu_b, workers)
            out.update(
                workers=n_workers,
                worker_pids=workers,
                connected=connected,
                connected_per_process=[r.get("connected", 0) for r in reports],
                connect_errors=sum(r.get("connect_errors", 0) for r in reports),
                connect_error_sample=[
                    s for r in reports for s in r.get("connect_error_sample", [])
                ][:3],
                refused_retried=sum(r.get("connect_refused_retried", 0) for r in reports),
                alive_at_end=sum(r.get("alive_at_end", 0) for r in reports),
                connect_all_s=round(connect_s, 1),
                fds_per_worker=list(fd1.values()),
                rss_before_mib=round(sum(rss0.values()) / 2**20, 1),
                rss_connected_mib=round(sum(rss1.values()) / 2**20, 1),
                rss_connected_per_worker_mib=[round(v / 2**20, 1) for v in rss1.values()],
                rss_end_mib=round(sum(rss2.values()) / 2**20, 1),
                rss_peak_mib=round(
                    max(sampler.peak, sum(rss1.values()), sum(rss2.values())) / 2**20, 1
                ),
                rss_per_connection_kib=round(
                    (sum(rss1.values()) - sum(rss0.values())) / max(connected, 1) / 1024, 2
                ),
                worker_cpu_connect_s=round(worker_cpu_connect, 1),
                worker_cpu_connect_percent=round(100 * worker_cpu_connect / connect_s, 1),
                worker_cpu_per_connect_ms=round(1000 * worker_cpu_connect / max(connected, 1), 2),
                redis_cpu_connect_s=round(span(cpu_a, cpu_b, [rpid]), 1),
                redis_rss_connected_mib=round(redis_rss1 / 2**20, 1),
                redis_rss_end_mib=round(redis_rss2 / 2**20, 1),
                worker_cpu_publish_percent=round(100 * span(cpu_c, cpu_d, workers) / wall, 1),
                redis_cpu_publish_percent=round(100 * span(cpu_c, cpu_d, [rpid]) / wall, 1),
                bench_client_cpu_percent=[r.get("client_cpu_percent") for r in reports],
                publish_phase_s=round(wall, 1),
                publications=sum(r.get("publications", 0) for r in reports),
                publish_errors=sum(r.get("publish_errors", 0) for r in reports),
                deliveries=sum(r.get("deliveries", 0) for r in reports),
                expected_deliveries=sum(r.get("expected_deliveries", 0) for r in reports),
                losses=sum(r.get("losses", 0) for r in reports),
                duplicates=sum(r.get("duplicates", 0) for r in reports),
                order_violations=sum(r.get("order_violations", 0) for r in reports),
                checked_connections=sum(r.get("checked_connections", 0) for r in reports),
                drained=all(r.get("drained") for r in reports),
                latency_p50_ms=[(r.get("latency") or {}).get("p50_ms") for r in reports],
                latency_p99_ms=[(r.get("latency") or {}).get("p99_ms") for r in reports],
                load_before=load0,
                load_connected=load_connected,
                load_after=loadavg(),
                errors=[r["error"] for r in reports if "error" in r],
                reports=reports,
            )
            log(
                f"  {name}: connected {connected}, alive {out['alive_at_end']}, RSS "
                f"{out['rss_connected_mib']} MiB ({out['rss_per_connection_kib']} KiB/conn), "
                f"deliveries {out['deliveries']}/{out['expected_deliveries']}, loss/dup "
                f"{out['losses']}/{out['duplicates']}/{out['order_violations']}; setup "
                f"{out['connect_all_s']} s, {out['worker_cpu_connect_s']} worker CPU-s; fds "
                f"{out['fds_per_worker']}"
            )
        finally:
            for b in benches:
                if b.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(b.pid, signal.SIGKILL)
                    b.wait()
            server.stop()
            start_file.unlink(missing_ok=True)
    return out


# -- the page -----------------------------------------------------------------------------


def _med(values: list[float | None]) -> float | None:
    """The median of the figures present (None: a run without that figure), to 2 places."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def _load(r: dict[str, Any]) -> str:
    return f"{r.get('load_before', ['?'])[0]} → {r.get('load_after', ['?'])[0]}"


def render(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    L: list[str] = []
    w = L.append
    counts = [data[k].get("connections") or g for k, g in CONNECTION_PARTS if k in data]
    title = "## Scale-out on one machine: workers, a 3-node cluster"
    if counts:  # the largest run (the heading stays the same while that part does)
        title += f", {max(counts):,} connections"
    w(title)
    w("")
    measured = meta.get("measured") or {}
    when = "; ".join(
        f"{part} {measured.get(part, meta.get('date'))}"
        for part in ("workers", "cluster", *(k for k, _ in CONNECTION_PARTS))
        if part in data
    )
    w(
        f"Measured with `make bench-scale` ({when}; the last run, "
        f"`{meta.get('command', 'make bench-scale')}`, "
        f"took {meta.get('wall_min')} min, load average (1/5/15 min) {meta.get('load_start')} "
        f"at its start, {meta.get('load_end')} at its end). This section is written by "
        "`tether-bench scale` (raw figures: `docs/benchmarks-scale.json`); `make bench` "
        "keeps it."
    )
    w("")
    w("```sh")
    w(
        "make bench-scale                     # workers, cluster, hundred: about 12 minutes "
        "(stopped at 25)"
    )
    w(".venv/bin/tether-bench scale --only workers      # or: cluster, hundred, fifty")
    w(".venv/bin/tether-bench scale --render-only       # rewrite this section from the .json")
    w("```")
    w("")
    w(
        f"The machine has **{meta.get('nproc')} cores** and a hard limit of "
        f"{meta.get('nofile_hard')} open files per process. Servers, Redis, HAProxy and the "
        "bench clients all run on it together, so every figure below is what is left of its "
        "cores after the client took its share, and the client competes with the workers "
        "for the same cores. Other engineers "
        "share the machine (see the load averages per run). Each part starts its own "
        "`redis-server` on a free port."
    )
    w("")
    L += _render_findings(data)
    L += _render_workers(data.get("workers", {}))
    L += _render_cluster(data.get("cluster", {}))
    for key, goal in CONNECTION_PARTS:
        if key in data:
            issue = 3 if goal == FIFTY_K else 11
            L += _render_connections(data[key], goal, issue, meta.get("nofile_hard"))
    return "\n".join(L) + "\n"


def _fan_median(runs: list[dict[str, Any]], n: int, fixed: bool, key: str) -> float | None:
    return _med(
        [
            r.get(key)
            for r in runs
            if r.get("scenario") == "fanout"
            and r.get("workers") == n
            and isinstance(r.get("window"), int) == fixed
            and "error" not in r
        ]
    )


def _render_findings(data: dict[str, Any]) -> list[str]:
    """The headline figures and what they do not show; every judgement is computed from
    the figures of this run (:mod:`tether_bench.verdicts`)."""
    L: list[str] = []
    w = L.append
    w("### What the figures say, and what they do not")
    w("")
    runs = data.get("workers", {}).get("runs", [])
    if runs:
        base = _fan_median(runs, 0, True, "deliveries_per_s")
        base_cpu = _fan_median(runs, 0, True, "deliveries_per_server_cpu_s")
        per_n = {n: _fan_median(runs, n, True, "deliveries_per_s") for n in (1, 2, 3)}
        per_cpu = {n: _fan_median(runs, n, True, "deliveries_per_server_cpu_s") for n in (1, 2, 3)}
        cpu = {n: _fan_median(runs, n, True, "server_cpu_percent") for n in (1, 2, 3)}
        redis_fan = [
            r
            for r in runs
            if r.get("scenario") == "fanout"
            and r.get("workers")
            and isinstance(r.get("window"), int)
            and "error" not in r
        ]
        by_n: dict[int, list[float]] = {}
        for r in redis_fan:
            if r.get("deliveries_per_s"):
                by_n.setdefault(r["workers"], []).append(r["deliveries_per_s"])
        p50s = [(r.get("latency") or {}).get("p50_ms") or 0 for r in redis_fan]
        client = [r.get("client_cpu_percent") or 0 for r in redis_fan]
        loads = [r.get("load_before", [0])[0] for r in runs]
        redis_cpu = _med([r.get("redis_cpu_s_whole_run") for r in redis_fan])
        workers_cpu = _med([sum(r.get("worker_cpu_s_whole_run") or []) for r in redis_fan])
        cpu_values = [v for v in per_cpu.values() if v]
        ratio = base_cpu / statistics.median(cpu_values) if base_cpu and cpu_values else None
        w(
            f"- {workers_fanout_verdict(by_n)} Fan-out over Redis: "
            + ", ".join(f"{n} worker{'s' if n > 1 else ''} {fmt(v)}/s" for n, v in per_n.items())
            + f" (medians, window 400; {workers_noise_clause(by_n)}), against {fmt(base)}/s "
            "for one process on the memory broker. The workers' CPU (sum) was "
            + ", ".join(f"{round(v or 0)}%" for v in cpu.values())
            + f" of a core on {data.get('meta', {}).get('nproc')} cores; the bench client took "
            f"{round(min(client, default=0))}-{round(max(client, default=0))}% and the load "
            f"average was {min(loads, default=0)}-{max(loads, default=0)} during these runs. "
            "The cost of the Redis path: "
            + ", ".join(fmt(v) for v in per_cpu.values())
            + f" deliveries per server CPU-second against {fmt(base_cpu)} on the memory "
            + (
                f"broker (about {ratio:.1f} times the CPU per delivery), and "
                if ratio
                else "broker, and "
            )
            + f"{round(min(p50s, default=0))}-{round(max(p50s, default=0))} ms publish-to-"
            f"delivery at p50. {redis_share_clause(redis_cpu, workers_cpu)}."
        )
        rooms = {r.get("workers", 0): r for r in runs if r.get("scenario") == "rooms"}
        if rooms:
            w(rooms_workers_finding(rooms))
    cluster = data.get("cluster", {})
    storm, cstorm = cluster.get("storm", {}), cluster.get("client_storm", {})
    if storm and "error" not in storm:
        w(node_crash_finding(storm))
    if cstorm and "error" not in cstorm:
        w(client_storm_finding(cstorm))
    rr = {float(r.get("rate") or 0): r for r in cluster.get("rooms_runs", [])}
    if rr:
        w(cluster_rooms_finding(rr))
    for key, goal in CONNECTION_PARTS:
        f = data.get(key, {})
        if f and "error" not in f:
            w(_connections_finding(f, goal))
    w(
        "- Not done: more than one machine (every figure here includes the client's and the "
        "other processes' share of the same cores); a storm large enough to hit "
        "admission control through the balancer; a repeat of the cluster and the "
        "connection-count parts (one run each, so no medians there)."
    )
    w("")
    return L


def _pairs(d: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in (d or {}).items())


def _label(n: int) -> str:
    return "1, memory broker (baseline)" if n == 0 else f"{n}, Redis"


def _render_workers(part: dict[str, Any]) -> list[str]:
    L: list[str] = []
    w = L.append
    w("### `tether serve --workers N` over one Redis (issue 4)")
    w("")
    if "error" in part:
        return [*L, f"Not measured: {part['error']}", ""]
    runs = part.get("runs", [])
    fan = [r for r in runs if r.get("scenario") == "fanout" or "fanout" in r.get("command", "")]
    rooms = [r for r in runs if r.get("scenario") == "rooms"]
    if fan:
        w(
            "Fan-out (one channel, 2,000 subscribers, 10 publications per "
            "`/api/batch`, median of 5 bursts of 2 s). *Window*: publications the publisher "
            "keeps ahead of the average subscriber; the adaptive one here is sized to 0.1 s of "
            "deliveries (the harness `make bench` used before it moved to 0.5 s), which "
            "starves the Redis path (publish-to-delivery takes ~100 ms or more "
            "there, so one batch is in flight at a time), hence a second series with a fixed "
            "window of 400, in interleaved rounds (median over rounds; each round's median "
            "listed). *Server CPU* is the sum over the worker processes during the "
            "measurement (the bench's `--server-pid` points at the `serve` command, whose "
            "children it adds up); *per worker* is each worker's CPU seconds over the whole "
            "bench command, sampled here with psutil."
        )
        w("")
        w(
            "| workers | window | deliveries/s (median) | per round | server CPU (sum of "
            "workers) | deliveries per server CPU-s | per worker, CPU-s | Redis CPU-s | bench "
            "client CPU | load before → after | loss / dup / order |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        series = [(False, n) for n in (0, 1, 2, 3)] + [(True, n) for n in (0, 1, 2, 3)]
        for fixed, n in series:
            rs = [
                r
                for r in fan
                if r.get("workers") == n and isinstance(r.get("window"), int) == fixed
            ]
            if not rs:
                continue
            ok = [r for r in rs if "error" not in r]
            dps = _med([r.get("deliveries_per_s") for r in ok])
            w(
                f"| {_label(n)} | {400 if fixed else 'adaptive'} | **{fmt(dps)}** | "
                + ", ".join(
                    fmt(r.get("deliveries_per_s")) if "error" not in r else "error" for r in rs
                )
                + f" | {_med([r.get('server_cpu_percent') for r in ok])}% | "
                f"{fmt(_med([r.get('deliveries_per_server_cpu_s') for r in ok]))} | "
                + "; ".join(str(r.get("worker_cpu_s_whole_run")) for r in ok)
                + f" | {_med([r.get('redis_cpu_s_whole_run') for r in ok])} | "
                f"{_med([r.get('client_cpu_percent') for r in ok])}% | "
                + "; ".join(_load(r) for r in rs)
                + f" | {'; '.join(correctness(r) for r in rs)} |"
            )
        w("")
    if rooms:
        w(
            "Rooms as in `make bench` (2,000 connections, personal + 10-member group "
            "channel, 2,000 publications/s through `/api/publish`, 11,000 deliveries/s "
            "expected), one run per N: the rate is fixed, so what changes is the CPU it costs "
            "and the latency."
        )
        w("")
        w(
            "| workers | deliveries/s | p50 | p99 | server CPU (sum of workers) "
            "| per worker, CPU-s | Redis CPU-s | load before → after | loss / dup / order |"
        )
        w("|---|---|---|---|---|---|---|---|---|")
        for r in rooms:
            lat = r.get("latency") or {}
            w(
                f"| {_label(r.get('workers', 0))} | {fmt(r.get('deliveries_per_s'))} | "
                f"{lat.get('p50_ms', '-')} ms | {lat.get('p99_ms', '-')} ms | "
                f"{r.get('server_cpu_percent', '-')}% | {r.get('worker_cpu_s_whole_run')} | "
                f"{r.get('redis_cpu_s_whole_run')} | {_load(r)} | {correctness(r)} |"
            )
        w("")
    if fan and runs:
        w(
            "Commands (`SERVER_PID`: the pid of `tether serve`; `scale.toml`: "
            '`host = "127.0.0.1"`, `broker = "redis"`, `redis_url` of the part\'s own '
            '`redis-server`, `log_level = "warning"`, `drain_window = 1`, and the `bench` '
            "namespace of `bench/tether.bench.toml`; ports and secrets from `TETHER_*`):"
        )
        w("")
        w("```sh")
        w(
            "tether serve --config scale.toml --workers N   # baseline (0 in the JSON): "
            '--workers 1 with broker = "memory"'
        )
        seen = []
        for r in runs:
            cmd = re.sub(r":\d+", ":PORT", shown_command(r.get("command", "")))
            cmd = re.sub(r"PORT/api", "HTTP_PORT/api", cmd)
            if cmd and cmd not in seen:
                seen.append(cmd)
                w(cmd)
        w("```")
        w("")
    return L


def _render_cluster(part: dict[str, Any]) -> list[str]:
    L: list[str] = []
    w = L.append
    w("### Three nodes behind HAProxy, one Redis (issue 4)")
    w("")
    if "error" in part:
        return [*L, f"Not measured: {part['error']}", ""]
    w(
        "Three `tether serve` processes (one event loop each) over one `redis-server`, HAProxy "
        "in front with round-robin balancing and no stickiness, for clients and for the server "
        "API: the configuration of `deploy/local/haproxy.cfg`, generated by "
        "`tether_bench.cluster` as in the cluster tests."
    )
    w("")
    rooms = part.get("rooms_runs") or ([part["rooms"]] if "rooms" in part else [])
    if rooms:
        w(
            "**Rooms through the balancer** (2,000 connections, personal + 10-member group "
            "channel, offsets checked on every connection; publications one per request "
            "through the balancer's API port). *Late*: publications the bench's publisher "
            "could not send on time (all 64 requests in flight), i.e. the API path through "
            "HAProxy was saturated."
        )
        w("")
        w(
            "| publications/s | deliveries/s | p50 | p99 | late | nodes CPU (sum, whole run) "
            "| per node, CPU-s | HAProxy CPU-s | Redis CPU-s | bench client CPU "
            "| load before → after | loss / dup / order |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rooms:
            lat = r.get("latency") or {}
            w(
                f"| {fmt(r.get('rate'))} | {fmt(r.get('deliveries_per_s'))} | "
                f"{lat.get('p50_ms', '-')} ms | {lat.get('p99_ms', '-')} ms | "
                f"{r.get('publisher_late')} | {r.get('node_cpu_percent_whole_run')}% | "
                f"{r.get('node_cpu_s_whole_run')} | {r.get('haproxy_cpu_s_whole_run')} | "
                f"{r.get('redis_cpu_s_whole_run')} | {r.get('client_cpu_percent')}% | "
                f"{_load(r)} | {correctness(r)} |"
            )
        w("")
        w(f"`{shown_command(rooms[0].get('command', ''))}` (and the same with `--rate 2000`)")
        w("")
    c = part.get("client_storm", {})
    if c:
        w(
            "**Reconnect storm, every client at once** (the bench's `reconnect-storm` scenario "
            "through the balancer: 2,000 clients, publications at 100/s throughout; every "
            "client socket is cut at once, and after 1 s all reconnect together and resubscribe "
            "with `recover: true`; a 503 is retried after its `Retry-After` with jitter):"
        )
        w("")
        if "error" in c:
            w(f"Not measured: {c['error'][-400:]!r}")
        else:
            w(
                "| clients | reconnected | time to full recovery | from the cut | peak connects/s "
                "| 503 retried | recovered true / false | publications | loss / dup / order |"
            )
            w("|---|---|---|---|---|---|---|---|---|")
            w(
                f"| {c.get('clients')} | {c.get('reconnected')} | "
                f"**{c.get('time_to_full_recovery_s')} s** | {c.get('time_from_cut_s')} s | "
                f"{fmt(c.get('peak_connects_per_s'))} | {c.get('refused_503')} | "
                f"{c.get('recovered_true')} / {c.get('recovered_false')} | "
                f"{c.get('publications')} | {correctness(c)} |"
            )
            w("")
            w(
                "The scenario's server-side counters (`connects_refused_server`, "
                "`recovery_broker_reads`) come from `/metrics`, which through the balancer "
                "answers for one node at a time, so they are left out here. "
                f"`{shown_command(c.get('command', ''))}`"
            )
        w("")
    s = part.get("storm", {})
    if s:
        w(
            f"**Node crash** (`tether-bench scale`): {s.get('clients')} reconnecting clients "
            "(`tether_bench.cluster.Follower`: on a broken connection it reconnects through "
            "the balancer after a jittered 25-75 ms and resubscribes with `recover`, offset and "
            "epoch, as the SDKs do), each in `chat:all` and a 10-member group channel; "
            "publications through the balancer's API at 52/s (50/s round-robin over the "
            "groups, 2/s to `chat:all`), each retried with one idempotency key until accepted. "
            f"3 s into the stream `{s.get('victim')}` is killed with SIGKILL; publishing goes "
            "on for 10 s after the kill. Resubscribed = connected again and both "
            "subscribe replies received (polled every 20 ms)."
        )
        w("")
        if "error" in s:
            w(f"Not measured: {s['error']}")
        else:
            w(
                "| clients per node | clients of the dead node | all resubscribed after "
                "| p50 / p99 | recovered true / recoveries | moved to | refused connects (503) "
                "/ failed connects | publish attempts failed (retried) | loss / dup / order "
                "| stored twice |"
            )
            w("|---|---|---|---|---|---|---|---|---|---|")
            w(
                f"| {_pairs(s.get('clients_per_node'))} | {s.get('victim_clients')} | "
                f"**{s.get('all_resubscribed_s')} s** | {s.get('resubscribed_p50_s')} / "
                f"{s.get('resubscribed_p99_s')} s | {s.get('recovered_true')} / "
                f"{s.get('recoveries')} | {_pairs(s.get('moved_to'))} | "
                f"{s.get('refused_503_after_kill')} / {s.get('connect_errors_after_kill')} | "
                f"{s.get('publish_attempts_failed')} ({s.get('publications_retried')} of "
                f"{s.get('publications')}) | {correctness(s)} | {s.get('stored_twice')} |"
            )
            w("")
            w(
                f"{caught_up_sentence(s)}; CPU of "
                f"the surviving nodes in the {s.get('window_after_kill_s')} s after the kill: "
                f"{s.get('node_cpu_s_after_kill')} CPU-s; load "
                f"{_load(s)}."
            )
        w("")
    return L


def _connections_finding(f: dict[str, Any], goal: int) -> str:
    late = [r.get("publisher_late") or 0 for r in f.get("reports", [])]
    per_publisher = f.get("publications", 0) // max(len(late), 1)
    p99 = max((v for v in f.get("latency_p99_ms") or [] if v is not None), default=None)
    p50 = min((v for v in f.get("latency_p50_ms") or [] if v is not None), default=None)
    setup_rate = round(f.get("connected", 0) / max(f.get("connect_all_s") or 1, 1))
    n = f.get("workers", 0)
    latency = f"latency p99 {p99} ms (p50 {p50} ms) from the scheduled send time"
    if any(late):
        scheduled = f.get("duration_s", 60)
        latency += (
            "; the publishers fell behind their schedule: all 64 API requests were in flight "
            "on " + ", ".join(f"{n:,}" for n in late) + " of their 1-ms scheduling ticks, and the "
            f"{scheduled} s of publications took {f.get('publish_phase_s')} s (with the "
            "drain), so latency from the scheduled time includes the wait for a request slot; "
            "the cause (the API path, or the machine's other load) was not established"
        )
    else:
        latency += f"; no publisher was late for any of its {per_publisher:,} publications"
    per_connect = f.get("worker_cpu_per_connect_ms")
    per_connect_text = f", {per_connect} ms per connection" if per_connect is not None else ""
    return (
        f"- {connections_verdict(f, goal)} {f.get('connected'):,} set up, "
        f"{f.get('alive_at_end'):,} alive at the end, {fifty_delivered_clause(f)}; "
        f"server RSS {f.get('rss_connected_mib')} MiB for the {n} workers "
        f"({f.get('rss_per_connection_kib')} KiB per connection with 2 channels, the "
        f"workers' own {round(f.get('rss_before_mib', 0) / max(n, 1))} MiB each before any "
        "connection excluded), workers' CPU "
        f"{f.get('worker_cpu_publish_percent')}% of a core while publishing. Setting up "
        f"{f.get('connected', 0):,} connections took {f.get('connect_all_s')} s (about "
        f"{setup_rate:,}/s, {f.get('worker_cpu_connect_s')} CPU-s in the workers"
        f"{per_connect_text}: token check, two subscriptions and a Redis SUBSCRIBE for each "
        f"new channel; {f.get('refused_retried') or 0:,} upgrades refused with 503 by "
        f"admission control and retried); {latency}."
    )


def _count_words(n: int) -> str:
    return {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
            8: "eight"}.get(n, f"{n}")  # fmt: skip


def _render_connections(
    f: dict[str, Any], goal: int, issue: int, nofile: int | None = None
) -> list[str]:
    L: list[str] = []
    w = L.append
    total = f.get("connections") or goal
    w(f"### {total:,} connections on this 2-core machine (issue {issue})")
    w("")
    if "error" in f:
        return [*L, f"Not measured: {f['error']}", ""]
    if not f or "connected" not in f:
        return L
    n, procs = f.get("workers", 0), f.get("bench_processes", 0)
    spread = f.get("source_addresses") or 4
    sizes = f.get("bench_sizes") or [
        total // max(procs, 1) + (1 if i < total % max(procs, 1) else 0) for i in range(procs)
    ]
    fd = f.get("fds_per_worker") or []
    soft = f.get("nofile_soft") or nofile
    limit = f"{soft:,}" if soft else "a fixed number of"
    when = f" Measured {f['measured']}." if f.get("measured") else ""
    w(
        f"One process may hold at most {limit} open files here, so the server is "
        f"`tether serve --workers {n}` (Redis broker; the kernel spreads connections over the "
        f"workers with SO_REUSEPORT; at most {max(fd, default=0):,} file descriptors in one "
        f"worker) and the simulator is {_count_words(procs)} `tether-bench run rooms` "
        f"processes of about {max(sizes, default=0):,} connections each, their source "
        f"addresses spread over 127.0.0.2-127.0.0.{1 + spread} (`--source-addresses "
        f"{spread}`: about {round(total / spread):,} connections per source address, under "
        f"the {EPHEMERAL_PORTS:,} ephemeral ports of each). Every connection subscribes to a "
        f"personal channel and a 10-member group channel ({2 * total:,} subscriptions); the "
        f"{_count_words(procs)} processes connect, wait for each other (`--start-file`), then "
        f"each publishes {f.get('rate_per_process')} publications/s for "
        f"{f.get('duration_s', 60)} s, alternately to a personal and a group channel, through "
        "the HTTP API. Offsets (loss, duplicates, order) are checked on **every** connection, "
        "and every group channel receives at least one publication, so every connection must "
        f"receive something. The connections stay open for the whole run (heartbeats every "
        f"25 s answered).{when}"
    )
    w("")
    w("| figure | value |")
    w("|---|---|")
    per_connect = f.get("worker_cpu_per_connect_ms")
    connect_cpu = f"{f.get('worker_cpu_connect_s')} CPU-s"
    if f.get("worker_cpu_connect_percent") is not None:
        connect_cpu += (
            f" ({f.get('worker_cpu_connect_percent')}% of one core over the setup, "
            f"{per_connect} ms per connection)"
        )
    rows = [
        ("connections set up / asked", f"**{f.get('connected'):,} / {f.get('connections'):,}**"),
        ("connect errors", f"{f.get('connect_errors')} {f.get('connect_error_sample') or ''}"),
        ("upgrades refused with 503 and retried", f.get("refused_retried")),
        ("alive at the end", f"**{f.get('alive_at_end'):,}**"),
        ("time to set up every connection", f"{f.get('connect_all_s')} s"),
        ("file descriptors per worker", fd),
        (
            f"server RSS (sum of {n} workers): before → all connected → end (peak)",
            f"{f.get('rss_before_mib')} → **{f.get('rss_connected_mib')}** → "
            f"{f.get('rss_end_mib')} MiB ({f.get('rss_peak_mib')} MiB)",
        ),
        ("per worker when connected", f"{f.get('rss_connected_per_worker_mib')} MiB"),
        (
            "server RSS per connection (2 channels each)",
            f"**{f.get('rss_per_connection_kib')} KiB**",
        ),
        ("workers' CPU while connecting", connect_cpu),
        (
            f"workers' CPU while publishing (sum of {n}, % of one core)",
            f"{f.get('worker_cpu_publish_percent')}% over {f.get('publish_phase_s')} s",
        ),
        ("Redis CPU while publishing", f"{f.get('redis_cpu_publish_percent')}%"),
    ]
    if f.get("redis_rss_connected_mib") is not None:
        rows.append(
            (
                "Redis: CPU while connecting; RSS connected → end",
                f"{f.get('redis_cpu_connect_s')} CPU-s; {f.get('redis_rss_connected_mib')} → "
                f"{f.get('redis_rss_end_mib')} MiB",
            )
        )
    rows += [
        ("bench clients' CPU (each)", f"{f.get('bench_client_cpu_percent')} %"),
        (
            "publications accepted / publish errors",
            f"{f.get('publications'):,} / {f.get('publish_errors')}",
        ),
        (
            "deliveries / expected",
            f"**{f.get('deliveries'):,} / {f.get('expected_deliveries'):,}**",
        ),
        ("loss / dup / order (checked on every connection)", f"**{correctness(f)}**"),
        ("connections checked", f"{f.get('checked_connections'):,}"),
        (
            "latency p50 / p99 per bench process (from the scheduled send time)",
            f"{f.get('latency_p50_ms')} / {f.get('latency_p99_ms')} ms",
        ),
        (
            "publishers' 1-ms ticks with all 64 API requests in flight (each)",
            [r.get("publisher_late") for r in f.get("reports", [])],
        ),
    ]
    if f.get("load_connected"):
        rows.append(
            (
                "load average before → all connected → after",
                f"{f.get('load_before', ['?'])[0]} → {f['load_connected'][0]} → "
                f"{f.get('load_after', ['?'])[0]}",
            )
        )
    else:
        rows.append(("load average before → after", _load(f)))
    rows.append(("whole part, wall time", f"{f.get('elapsed_s')} s"))
    for name, value in rows:
        w(f"| {name} | {value} |")
    w("")
    if f.get("errors"):
        w(f"Bench errors: `{f['errors']}`")
        w("")
    w(
        f"Commands ({_count_words(procs)} bench processes at once, `-n` "
        + " / ".join(f"{s:,}" for s in sizes)
        + "; `scale.toml` as in the workers part):"
    )
    w("")
    w("```sh")
    w(f"tether serve --config scale.toml --workers {n}")
    cmd = re.sub(r":\d+", ":PORT", shown_command(f.get("command", "")))
    w(re.sub(r"PORT/api", "HTTP_PORT/api", cmd))
    w("```")
    w("")
    return L


def write_section(out: Path, section: str) -> None:
    """Replace the marked section of ``out`` (or append it)."""
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    out.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tether-bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=["workers", "cluster", "hundred", "fifty"])
    parser.add_argument("--quick", action="store_true", help="tiny runs (a harness smoke test)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--json", default="docs/benchmarks-scale.json")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    out, json_path = ROOT / args.out, ROOT / args.json
    if args.render_only:
        write_section(out, render(json.loads(json_path.read_text())))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what we started
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    parts = args.only or ["workers", "cluster", "hundred"]
    previous = json.loads(json_path.read_text()) if json_path.exists() and args.only else {}
    data: dict[str, Any] = previous or {}
    # When each kept part was measured (parts from before this was recorded: the date of
    # the run that wrote them).
    old_meta = data.get("meta", {})
    measured = dict(old_meta.get("measured") or {})
    for part in ("workers", "cluster", "hundred", "fifty"):
        if part in data and part not in measured and old_meta.get("date"):
            measured[part] = old_meta["date"]
    t0 = time.time()
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    measured.update(dict.fromkeys(parts, now))
    data["meta"] = {
        "date": now,
        "load_start": loadavg(),
        "nproc": os.cpu_count(),
        "nofile_hard": hard,
        "quick": args.quick,
        "parts": parts,
        "measured": measured,
        "command": "make bench-scale"
        if not args.only
        else "tether-bench scale --only " + " ".join(parts),
    }
    runners = {
        "workers": part_workers,
        "cluster": part_cluster,
        "hundred": part_hundred,
        "fifty": part_fifty,
    }
    with tempfile.TemporaryDirectory(prefix="tether-scale-") as tmp:
        for part in parts:
            log(f"[{part}] ...")
            t = time.time()
            try:
                data[part] = runners[part](args.quick, Path(tmp))
            except Exception as exc:
                data[part] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"  {part} failed: {exc!r}")
            data[part]["elapsed_s"] = round(time.time() - t, 1)
    data["meta"]["load_end"] = loadavg()
    data["meta"]["wall_min"] = round((time.time() - t0) / 60, 1)
    json_path.write_text(json.dumps(data, indent=1))
    write_section(out, render(data))
    log(f"wrote {out} (section {BEGIN}) and {json_path}")
    return 0


if __name__ == "__main__":
    random.seed()
    sys.exit(main())
