"""`make bench`: Tether and the alternatives under the same scenarios, in one session.

Starts each target server (one process each, one at a time, on loopback ports 18700+),
runs `tether-bench run SCENARIO --json` against it with `--server-pid`, stops it, and writes
docs/benchmarks.md (and the raw reports to docs/benchmarks.json). Every process it starts
runs in its own session and is stopped by its process-group id, whatever happens.

usage: tether-bench compare [--quick] [--out docs/benchmarks.md] [--only ROW ...]
       [--render-only | --resilience | --no-resilience | --hooks]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from tether.capacity import CAPACITY_ROW, CapacityError, publication_line
from tether.config import Config, ProxyConfig
from tether_bench import deltabytes, plots
from tether_bench.paths import checkout
from tether_bench.verdicts import (
    ByRow,
    Report,
    batch_cost_note,
    before_after_rows,
    ceiling_note,
    correctness,
    delta_verdicts,
    encoding_verdicts,
    fmt,
    hook_outage_verdicts,
    issue11_verdicts,
    resilience_notes,
    resilience_verdicts,
    shown_command,
    verdicts,
)

ROOT = checkout()
BIN = Path(sys.executable).parent
TETHER = str(BIN / "tether")
BENCH = str(BIN / "tether-bench")
PY = sys.executable
BASE_PORT = int(os.environ.get("BENCH_BASE_PORT", "18700"))
TOKEN_SECRET = "bench-token-secret-" + "b" * 24
API_KEY = "bench-api-key"

UNLIMITED_ADMISSION = {
    "TETHER_MAX_CONNECTS_PER_SECOND": "1000000",
    "TETHER_MAX_CONNECTS_BURST": "1000000",
}
"""connect-cost: measure the cost of a connection, not the admission rate."""

Target = dict[str, Any]
"""How to start one target server and point the bench at it."""

HOOKS_TEMPLATE = Path("bench/tether.hooks.toml")
"""The hook-outage target's config; its proxy url names :data:`HOOKS_TEMPLATE_BACKEND`."""
HOOKS_TEMPLATE_BACKEND = "http://127.0.0.1:18799"
HOOK_BACKEND_PORT = BASE_PORT + 99
"""The hook backend of the hook-outage target (the main plan's servers use BASE_PORT to
+79, the resilience section's +100 to +179)."""
HOOKS_CONFIG = Path(tempfile.gettempdir()) / "tether-bench-hooks.toml"
"""bench/tether.hooks.toml with its proxy url pointed at :data:`HOOK_BACKEND_PORT`."""


def _tether(label: str, config: str, port: int, *, redis: bool = False) -> Target:
    """``tether serve --config CONFIG`` on ``port`` (its API on ``port + 1``), with the
    bench's secrets; ``redis``: on ``BENCH_REDIS_URL`` under a prefix of its own."""
    http = port + 1
    env = {
        "TETHER_PORT": str(port),
        "TETHER_HTTP_PORT": str(http),
        "TETHER_HOST": "127.0.0.1",
        "TETHER_TOKEN_SECRET": TOKEN_SECRET,
        "TETHER_API_KEY": API_KEY,
    }
    if redis:
        env["TETHER_REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "")
        env["TETHER_REDIS_PREFIX"] = f"bench{port}"
    return {
        "label": label,
        "protocol": "tether",
        "cmd": [TETHER, "serve", "--config", config],
        "env": env,
        "url": f"ws://127.0.0.1:{port}/connection/websocket",
        "extra": [
            "--api-url",
            f"http://127.0.0.1:{http}/api",
            "--api-key",
            API_KEY,
            "--token-secret",
            TOKEN_SECRET,
        ],
    }


def targets(port: int) -> dict[str, Target]:
    out: dict[str, Target] = {
        # The headline ceiling coalesces as Tether does (one write per connection per loop
        # iteration); the reference's 10-frames-per-write server is the second row.
        "ceiling": {
            "label": "raw-asyncio ceiling (per-tick writes)",
            "protocol": "plain",
            "cmd": [PY, "-m", "tether_bench.peers.raw_ceiling", str(port), "per-tick"],
            "url": f"ws://127.0.0.1:{port}/",
        },
        "ceiling-batch10": {
            "label": "raw-asyncio, 10 frames per write",
            "protocol": "plain",
            "cmd": [PY, "-m", "tether_bench.peers.raw_ceiling", str(port), "batch"],
            "url": f"ws://127.0.0.1:{port}/",
        },
        "tether": _tether("Tether", "bench/tether.bench.toml", port),
        "tether-resilience": _tether(
            "Tether (Redis broker, bench/tether.resilience.toml)",
            "bench/tether.resilience.toml",
            port,
            redis=True,
        ),
        "tether-redis": _tether(
            "Tether over Redis", "bench/tether.bench-redis.toml", port, redis=True
        ),
        # The same server, for the reconnect storm of 10,000 clients on one channel.
        "tether-resilience-10k": {},
        "websockets": {
            "label": "websockets broadcast()",
            "protocol": "plain",
            "cmd": [PY, "-m", "tether_bench.peers.websockets_server", str(port)],
            "url": f"ws://127.0.0.1:{port}/",
        },
        "python-socketio": {
            "label": "python-socketio AsyncServer",
            "protocol": "socketio",
            "cmd": [PY, "-m", "tether_bench.peers.socketio_server", str(port)],
            "url": f"ws://127.0.0.1:{port}/socket.io/",
        },
        "node-socketio": {
            "label": "Socket.IO on Node.js",
            "protocol": "socketio",
            "cmd": ["node", "bench/js/socketio_server.js", str(port)],
            "url": f"ws://127.0.0.1:{port}/socket.io/",
        },
    }
    out["tether-resilience-10k"] = out["tether-resilience"]
    backend = f"http://127.0.0.1:{HOOK_BACKEND_PORT}"
    out["tether-hooks"] = {
        **out["tether"],
        "label": "Tether (bench/tether.hooks.toml), its hook backend in a process of its own",
        "cmd": [TETHER, "serve", "--config", str(HOOKS_CONFIG)],
        "extra": [*out["tether"]["extra"], "--backend-url", backend],
        "backend": {
            "cmd": [PY, "-m", "tether_bench.peers.hook_backend", str(HOOK_BACKEND_PORT)],
            "port": HOOK_BACKEND_PORT,
            "url": backend,
        },
    }
    # The same Tether, with Protobuf subscribers (what the native mobile SDKs speak), and
    # with half JSON, half Protobuf on one channel (one frame per encoding and publication).
    out["tether-protobuf"] = {
        **out["tether"],
        "label": "Tether, Protobuf",
        "protocol": "tether-protobuf",
    }
    out["tether-mixed"] = {
        **out["tether"],
        "label": "Tether, half JSON half Protobuf",
        "protocol": "tether-mixed",
    }
    return out


PEERS = ["ceiling", "ceiling-batch10", "tether", "websockets", "python-socketio", "node-socketio"]
MAIN_PEERS = [p for p in PEERS if p != "ceiling-batch10"]
"""The targets of the latency, rooms and idle runs (the 10-per-write server is a fan-out
and equal-load row only)."""
ENCODING_ROWS = ["tether-protobuf", "tether-mixed"]
"""Tether's fan-out again with Protobuf subscribers, and half JSON, half Protobuf (issue 10:
within 10% of JSON deliveries/s), in the same interleaved rounds as the JSON row."""
LATENCY_RUNS = 3
"""Latency runs per target (interleaved rounds); the page shows each target's median."""
FAN_RUNS = 3
"""Fan-out runs of the ceilings and Tether (interleaved rounds): the median per CPU-s."""
FAN_HARNESS = ["--lag", "0.5", "--concurrency", "40"]
"""How every fan-out row publishes: up to 0.5 s of the measured delivery rate ahead of
the average subscriber (at most 400 publications), and for Tether's HTTP API up to 40
requests of 10 in flight, so that only that window bounds it, as it alone bounds the
peers' fire-and-forget WebSocket publishers. The rate an adaptive window finds is about
capacity x (1 - publish-to-delivery latency / lag): with the 0.1 s lag and 4 requests
in flight of the first pages, Tether (whose publishes wait for HTTP answers from a
client process busy reading 2,000 sockets) was throttled by the bench itself."""
OLD_HARNESS = ["--lag", "0.1", "--concurrency", "4"]
"""The fan-out harness of issue 11's before figures: the ``@old`` rows run the per-tick
ceiling, Tether and Tether over Redis with it again, so that before and after compare
like with like."""
OLD_HARNESS_ROWS = ("ceiling", "tether", "tether-redis")
CONNECT_RUNS = 5
"""connect-cost runs per broker (interleaved): the median connects per server CPU-s."""
EQUAL_RATE = 5
"""Publications/s of the equal-load latency run (x 1,000 subscribers): every peer
sustains it (python-socketio, the slowest, tops out near 20/s here)."""
CURVE_FRACTIONS = (0.25,)
"""Fractions of each target's own maximum for the latency curve, besides 0.5."""
CAPACITY_RATE = 50
"""Publications/s of the two capacity-model runs (``tether@capacity-N``): low enough that
each publication is flushed on its own (on this machine a flush to 1,000 sockets takes
about 8 ms; from 100/s on, publications arriving during a flush join the next one and
share its writes, which a planned fleet at its target load may not do), high enough
that publications, not idle connections, take the server's CPU (about 40 % of a core at
fan-out 1,000)."""
CAPACITY_FANOUTS = (1000, 250)
"""Subscribers of the two capacity-model runs: one rate and publish shape (one
publication per request), two fan-outs, so that a straight line through the two points
separates the CPU per publication from the CPU per delivery (``tether capacity``)."""
HOOKS_RATE = 20
"""Publications/s of the hook-outage fan-out (x 1,000 subscribers): a moderate load, the
same in every phase."""
PROFILE_RUN = "@profile"
"""A row's suffix for a run made only for its py-spy profile (sampling at 1,000 Hz costs
the server CPU): the profile goes to the row, the run's figures nowhere."""
PROFILE_DIR = Path(tempfile.gettempdir()) / "tether-bench-profiles"
"""py-spy's collapsed stacks of the profiled runs (summaries go in the reports)."""


def plan(quick: bool) -> list[tuple[str, str, list[str]]]:
    """(scenario, row name, extra args) in run order; targets interleaved per scenario so
    that a noisy neighbour hurts them alike."""
    if quick:
        fan = ["-n", "300", "--duration", "2", "--bursts", "2"]
        lat = ["-n", "200", "--duration", "2", "--calibrate", "1"]
        rooms = ["-n", "300", "--duration", "2", "--rate", "500"]
        idle = ["-n", "1000", "--duration", "1"]
    else:
        fan = ["-n", "2000", "--duration", "10", "--bursts", "5"]
        lat = ["-n", "1000", "--duration", "8", "--calibrate", "3"]
        rooms = ["-n", "2000", "--duration", "8", "--rate", "2000"]
        idle = ["-n", "10000", "--duration", "5"]
    con = ["-n", "500"] if quick else ["-n", "5000"]
    hooks = (
        ["-n", "200", "--duration", "2", "--bursts", "1"]
        if quick
        else ["-n", "1000", "--rate", str(HOOKS_RATE), "--duration", "8", "--bursts", "2"]
    )
    out: list[tuple[str, str, list[str]]] = []
    for i in range(1 if quick else FAN_RUNS):  # rounds, the ceilings and Tether interleaved
        for name in ["ceiling", "ceiling-batch10", "tether", *ENCODING_ROWS, "tether-redis"]:
            profiled = i == 0 and name in ("tether", "tether-redis")
            profile = ["--profile", f"{PROFILE_DIR}/{name}-fanout.txt"] if profiled else []
            out.append(("fanout", name, [*fan, *FAN_HARNESS, *profile]))
        for name in OLD_HARNESS_ROWS:
            out.append(("fanout", f"{name}@old", [*fan, *OLD_HARNESS]))
    for name in PEERS:
        if name not in ("ceiling", "ceiling-batch10", "tether"):
            out.append(("fanout", name, [*fan, *FAN_HARNESS]))
    # One publication per request, 64 requests in flight (the paced scenarios' default).
    batch1 = [*fan, "--lag", "0.5", "--batch", "1", "--concurrency", "64"]
    out.append(("fanout", "tether-batch1", batch1))
    for _ in range(1 if quick else CONNECT_RUNS):
        for name in ["tether", "tether-redis"]:
            out.append(("connect-cost", name, con))
    for name in ["tether", "tether-redis"]:  # the profile: an extra run, in no median
        profile = ["--profile", f"{PROFILE_DIR}/{name}-connect.txt", "--profile-rate", "1000"]
        out.append(("connect-cost", f"{name}{PROFILE_RUN}", [*con, *profile]))
    for name in PEERS:  # every target at one rate each of them sustains
        out.append(("latency", f"{name}@equal", [*lat, "--rate", str(EQUAL_RATE)]))
    for fraction in CURVE_FRACTIONS:  # latency against throughput (with the 0.5 runs)
        for name in MAIN_PEERS:
            out.append(("latency", f"{name}@{fraction}", [*lat, "--fraction", str(fraction)]))
    for _ in range(1 if quick else LATENCY_RUNS):  # rounds, targets interleaved
        for name in MAIN_PEERS:
            out.append(("latency", name, lat))
    for n in CAPACITY_FANOUTS:  # the cost model of `tether capacity` (src/tether/capacity.py)
        capacity = ["-n", str(n // 5 if quick else n), "--duration", "2" if quick else "8"]
        out.append(("latency", f"{CAPACITY_ROW}{n}", [*capacity, "--rate", str(CAPACITY_RATE)]))
    for name in MAIN_PEERS:
        out.append(("rooms", name, rooms))
    for name in MAIN_PEERS:
        out.append(("idle", name, idle))
    out.append(("idle", "tether-protobuf", idle))
    out.append(("hook-outage", "tether-hooks", hooks))
    return out


RESILIENCE = ["slow-consumers", "typing-storm", "reconnect-storm", "publish-burst"]
"""Scenarios of the resilience section (issue 5), all against "tether-resilience"."""
TYPING_RUNS = 3
"""typing-storm runs (each against a fresh server): its goal is a ratio of two p99s on a
shared 2-core machine, so it is judged on the median run, with every run's ratio shown."""


def resilience_plan(quick: bool) -> list[tuple[str, str, list[str]]]:
    if quick:
        quick_args = {
            "slow-consumers": ["-n", "100", "--slow", "5", "--duration", "4", "--payload", "4000"],
            "typing-storm": ["-n", "100", "--duration", "2", "--bursts", "2"],
            "reconnect-storm": ["-n", "300", "--outage", "0.5"],
            "publish-burst": ["-n", "50", "--duration", "2", "--calibrate", "1"],
        }
        return [(scenario, "tether-resilience", quick_args[scenario]) for scenario in RESILIENCE]
    args = {
        "slow-consumers": "-n 300 --slow 20 --rate 200 --payload 4000 --duration 8 "
        "--check-sample 30",
        "typing-storm": "-n 300 --rate 50 --factor 10 --duration 12 --bursts 4",
        "reconnect-storm": "-n 2000 --channels 4 --rate 100 --outage 1",
        "publish-burst": "-n 200 --calibrate 3 --factor 10 --duration 10",
    }
    runs = {"typing-storm": TYPING_RUNS}
    steps = [
        (scenario, "tether-resilience", args[scenario].split())
        for scenario in RESILIENCE
        for _ in range(runs.get(scenario, 1))
    ]
    # The issue's "10,000 clients recovering the same channel cost one broker read". At
    # 1,000 admitted connects/s readmission takes ~10 s, so the rate stays low enough for
    # the missed publications to fit recovery_max_publications (300).
    at = steps.index(("reconnect-storm", "tether-resilience", args["reconnect-storm"].split()))
    steps.insert(
        at + 1,
        (
            "reconnect-storm",
            "tether-resilience-10k",
            ["-n", "10000", "--channels", "1", "--rate", "10", "--outage", "1"],
        ),
    )
    return steps


def resilience_ephemeral_window() -> float:
    """``ephemeral_window`` of bench/tether.resilience.toml (else Tether's default)."""
    raw = tomllib.loads(Path("bench/tether.resilience.toml").read_text())
    field = next(f for f in msgspec.structs.fields(Config) if f.name == "ephemeral_window")
    return float(raw.get("ephemeral_window", field.default))


def hooks_proxy_limits() -> dict[str, Any]:
    """The limits of bench/tether.hooks.toml's ``[proxies.app]`` (else Tether's defaults):
    what the hook-outage verdicts judge the run against."""
    raw = tomllib.loads((ROOT / HOOKS_TEMPLATE).read_text())
    proxy = msgspec.convert(raw["proxies"]["app"], ProxyConfig)
    return {
        "timeout": proxy.timeout,
        "max_in_flight": proxy.max_in_flight,
        "breaker_failures": proxy.breaker_failures,
        "breaker_reset": proxy.breaker_reset,
    }


def write_hooks_config() -> None:
    """:data:`HOOKS_CONFIG`: the template with its proxy url at the backend's port."""
    text = (ROOT / HOOKS_TEMPLATE).read_text()
    if HOOKS_TEMPLATE_BACKEND not in text:
        raise RuntimeError(f"{HOOKS_TEMPLATE} no longer names {HOOKS_TEMPLATE_BACKEND}")
    url = f"http://127.0.0.1:{HOOK_BACKEND_PORT}"
    HOOKS_CONFIG.write_text(text.replace(HOOKS_TEMPLATE_BACKEND, url))


def keep_median_runs(
    results: list[Report], scenario: str, value: Callable[[Report], float | None], field: str
) -> list[Report]:
    """Fold repeated runs of ``scenario`` (per row) into the run with the median ``value``,
    which records every run's value in ``field`` (None for a failed run). p99s and their
    ratios move from run to run on a shared 2-core machine; a median of runs does not
    hinge on one disturbed run."""
    rows: dict[str, list[Report]] = {}
    for r in results:
        if r["scenario"] == scenario:
            rows.setdefault(r["row"], []).append(r)
    out: list[Report] = []
    for r in results:
        runs = rows.get(r["row"]) if r["scenario"] == scenario else None
        if runs is None:
            out.append(r)
            continue
        if r is not runs[0]:
            continue  # folded into the first run's place
        valued = [(v, x) for x in runs if "error" not in x and (v := value(x)) is not None]
        ok = [x for _, x in sorted(valued, key=lambda vx: vx[0])]
        if len(runs) < 2 or not ok:
            out.append(r)
            continue
        chosen = dict(ok[len(ok) // 2])  # with an even count, the worse of the middle two
        chosen[field] = [value(x) if "error" not in x else None for x in runs]
        out.append(chosen)
    return out


def fold_runs(results: list[Report]) -> list[Report]:
    """Repeated runs of one row folded into their median run (each run's figure kept)."""
    fan_dps = {
        r["row"]: [
            x.get("deliveries_per_s")
            for x in results
            if x["scenario"] == "fanout" and x["row"] == r["row"]
        ]
        for r in results
        if r["scenario"] == "fanout"
    }
    profiles = {
        (r["scenario"], r["row"].removesuffix(PROFILE_RUN)): r["profile"]
        for r in results
        if r.get("profile")
    }
    for r in results:
        if r["row"].endswith(PROFILE_RUN) and "profile" in r:
            r["profile"]["run"] = "an extra run that no median counts, since py-spy slows it"
    results = [r for r in results if not r["row"].endswith(PROFILE_RUN)]
    results = keep_median_runs(results, "latency", _p99, "run_p99_ms")
    results = keep_median_runs(
        results, "fanout", lambda r: r.get("deliveries_per_server_cpu_s"), "run_per_cpu_s"
    )
    for r in results:
        if r["scenario"] == "fanout" and len(fan_dps.get(r["row"], [])) > 1:
            r["run_deliveries_per_s"] = fan_dps[r["row"]]
    results = keep_median_runs(
        results,
        "connect-cost",
        lambda r: r.get("connects_per_server_cpu_s"),
        "run_connects_per_cpu_s",
    )
    for r in results:  # the profiled run (the first) may not be the median one
        profile = profiles.get((r["scenario"], r["row"]))
        if profile is not None and "profile" not in r:
            r["profile"] = profile
    return results


def run_main_steps(steps: list[tuple[str, str, list[str]]], logdir: Path) -> list[Report]:
    """The main plan; a private redis-server for the rows over Redis."""
    if not any(row.startswith("tether-redis") for _, row, _ in steps):
        return run_steps(steps, logdir)
    return run_steps_on_private_redis(steps, logdir)


def run_steps_on_private_redis(
    steps: list[tuple[str, str, list[str]]], logdir: Path, first_port: int = BASE_PORT
) -> list[Report]:
    """:func:`run_steps` with ``BENCH_REDIS_URL`` on a redis-server of their own."""
    from tether_bench.redisserver import RedisServer

    redis = RedisServer()
    redis.start()
    os.environ["BENCH_REDIS_URL"] = redis.url
    try:
        return run_steps(steps, logdir, first_port)
    finally:
        redis.kill()


def _p99(r: Report) -> float | None:
    return (r.get("latency") or {}).get("p99_ms")


def _chat_ratio(r: Report) -> float | None:
    return r.get("chat_p99_ratio")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not open port {port}")


class Server:
    def __init__(self, spec: Target, port: int, log: Path) -> None:
        env = dict(os.environ, **spec.get("env", {}))
        self.log = open(log, "ab")  # noqa: SIM115  (open for the server's whole life; closed in stop())
        self.proc = subprocess.Popen(
            spec["cmd"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port(port, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # Our own process group (start_new_session), by its id.
        for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def run_one(scenario: str, row: str, extra: list[str], port: int, logdir: Path) -> Report:
    name = "tether" if row == "tether-batch1" else row.split("@")[0]
    spec = targets(port)[name]
    if scenario == "connect-cost":
        # What a connection costs, not what admission control lets through per second.
        spec = dict(spec, env={**spec.get("env", {}), **UNLIMITED_ADMISSION})
    load0 = loadavg()
    backend: Server | None = None
    if "backend" in spec:  # the hook backend first: the server's proxy points at it
        write_hooks_config()
        backend = Server(spec["backend"], spec["backend"]["port"], logdir / f"{row}-backend.log")
    try:
        server = Server(spec, port, logdir / f"{row}-{scenario}.log")
    except BaseException:
        if backend is not None:
            backend.stop()
        raise
    try:
        time.sleep(0.5)
        cmd = [
            BENCH,
            "run",
            scenario,
            "--protocol",
            spec["protocol"],
            "--url",
            spec["url"],
            "--server-pid",
            str(server.proc.pid),
            "--json",
            "--quiet",
            *spec.get("extra", []),
            *extra,
        ]
        started = time.time()
        result = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            start_new_session=True,
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {"row": row, "scenario": scenario, "error": result.stderr[-1500:] or "no report"}
        report: Report = json.loads(lines[-1])
        report.update(
            row=row,
            label=spec["label"] + (" (1 publication/request)" if row == "tether-batch1" else ""),
            elapsed_s=round(time.time() - started, 1),
            load_before=load0,
            load_after=loadavg(),
            command=" ".join(["tether-bench", *cmd[1:]]).replace(str(ROOT) + "/", ""),
        )
        if backend is not None:
            report["proxy"] = hooks_proxy_limits()
        return report
    except subprocess.TimeoutExpired:
        return {"row": row, "scenario": scenario, "error": "bench timed out"}
    finally:
        server.stop()
        if backend is not None:
            backend.stop()


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        "?",
    )
    mem = next(
        (
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        "0",
    )

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    def pkg(name: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(name)
        except PackageNotFoundError:
            return "-"

    node_pkg = json.loads((ROOT / "bench/js/package.json").read_text())["dependencies"]
    return {
        "cpu": model,
        "nproc": version(["nproc"]),
        "mem_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "packages": {
            n: pkg(n)
            for n in (
                "uvloop",
                "websockets",
                "python-socketio",
                "python-engineio",
                "aiohttp",
                "msgspec",
            )
        }
        | {f"npm {k}": v for k, v in node_pkg.items()},
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def write_markdown(results: list[Report], meta: dict[str, Any], out: Path) -> None:
    by = {(r["scenario"], r["row"]): r for r in results}
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(
        f"Measured {meta['date']} with `{meta.get('command', 'make bench')}` "
        f"({meta['wall_min']:.1f} min). Reproduce with:"
    )
    w("")
    w(
        "```sh\nmake bench            # installs the bench (bench/) and the Node peer, runs everything,\n"
        "                      # rewrites this file and docs/benchmarks.json\n```"
    )
    w("")
    w("One scenario against one target by hand (any Tether URL):")
    w("")
    w(
        "```sh\ntether-bench run fanout --url ws://HOST:PORT/connection/websocket \\\n"
        "    --api-url http://HOST:HTTP_PORT/api --api-key KEY --token-secret SECRET \\\n"
        "    -n 2000 --duration 10 --server-pid PID --json\n```"
    )
    w("")
    m = meta["machine"]
    w("## Machine")
    w("")
    w(f"- CPU: {m['cpu']}, `nproc` = {m['nproc']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}")
    w(
        f"- Python {m['python']}, Node.js {m['node']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    )
    w(
        "- Server and bench client run on the same machine, one process each: on 2 cores "
        "they compete for CPU with each other (and with anything else running)."
    )
    w(
        f"- Load average (1 min) at start {meta['load_start']}, at end {meta['load_end']}. "
        + meta["shared_note"]
    )
    w("")
    w("## Fan-out: one channel, 2,000 subscribers, one server process")
    w("")
    w(
        "Publisher at the highest rate each target sustains (it keeps about "
        f"{FAN_HARNESS[1]} s of that target's deliveries in flight: at least one batch, at "
        "most 400 publications ahead of the average subscriber; Tether's HTTP publisher with "
        f"up to {FAN_HARNESS[3]} requests in flight, see *How the numbers are made*), 10 "
        "publications per publish call (Tether: one `/api/batch` "
        "request; peers: one message), as in the reference server's 10 frames per write. "
        "Deliveries/s is the median of 5 bursts. *Per server CPU-s* divides deliveries by the "
        "CPU seconds the server process used: it is the figure least disturbed by a busy machine."
    )
    w("")
    w(
        "| target | deliveries/s (median) | bursts | x ceiling | Tether ÷ target | server CPU | deliveries per server CPU-s | Tether ÷ target (per CPU-s) | loss / dup / order |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    fan_rows = [
        "ceiling",
        "ceiling-batch10",
        "tether",
        "tether-batch1",
        *ENCODING_ROWS,
        "tether-redis",
        "websockets",
        "python-socketio",
        "node-socketio",
    ]
    ceil = by.get(("fanout", "ceiling"), {})
    teth = by.get(("fanout", "tether"), {})
    for row in fan_rows:
        r = by.get(("fanout", row))
        if r is None:
            continue
        if "error" in r:
            w(f"| {row} | error: {r['error'][:80]!r} | | | | | | | |")
            continue
        dps = r.get("deliveries_per_s")
        cps = r.get("deliveries_per_server_cpu_s")
        xc = f"{dps / ceil['deliveries_per_s']:.2f}" if ceil.get("deliveries_per_s") else "-"
        tr = (
            f"{teth['deliveries_per_s'] / dps:.2f}" if teth.get("deliveries_per_s") and dps else "-"
        )
        trc = (
            f"{teth['deliveries_per_server_cpu_s'] / cps:.2f}"
            if teth.get("deliveries_per_server_cpu_s") and cps
            else "-"
        )
        bursts = ", ".join(fmt(b) for b in r.get("burst_deliveries_per_s", []))
        w(
            f"| {r['label']} | **{fmt(dps)}** | {bursts} | {xc} | {tr} | {r.get('server_cpu_percent', '-')}% | {fmt(cps)} | {trc} | {correctness(r)} |"
        )
    w("")
    w(
        f"The ceilings and Tether (each encoding, and over Redis) ran {FAN_RUNS} times, interleaved; each of those rows is "
        "its run with the median deliveries per server CPU-s (every run: "
        + "; ".join(
            f"{by[('fanout', row)]['label']} "
            + ", ".join(fmt(v) for v in by[("fanout", row)].get("run_per_cpu_s", []))
            for row in ("ceiling", "ceiling-batch10", "tether", *ENCODING_ROWS, "tether-redis")
            if by.get(("fanout", row), {}).get("run_per_cpu_s")
        )
        + "). *x ceiling* is against the per-tick ceiling of the same run."
    )
    w("")
    chart_rows = [
        by[("fanout", row)]
        for row in fan_rows
        if ("fanout", row) in by and "error" not in by[("fanout", row)]
    ]
    if chart_rows:
        plots.fanout_chart(chart_rows, out.with_name("benchmarks-fanout.svg"))
        w("![Fan-out: deliveries/s and per server CPU-s](benchmarks-fanout.svg)")
        w("")
    L.extend(connect_markdown(by))
    w("## Latency: 1,000 subscribers, publishing at half of the measured maximum")
    w("")
    w(
        "Each target is first driven at its maximum for 3 s (calibration, one publication per "
        "call as below), then published to "
        "at 50% of that rate for 8 s, one publication per call (Tether: `POST /api/publish`). "
        "Latency runs from the publication's *scheduled* send time to its arrival, measured on "
        f"100 of the 1,000 connections. {LATENCY_RUNS} rounds, targets interleaved; each row is "
        "the target's run with the median p99 (every run's p99 in the last column)."
    )
    w("")
    w(
        "| target | calibrated max deliveries/s | publications/s | p50 | p99 | p99.9 | max "
        "| loss / dup / order | p99 of each run |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    for row in PEERS:
        r = by.get(("latency", row))
        if r is None:
            continue
        if "error" in r:
            w(f"| {row} | error: {r['error'][:80]!r} | | | | | | |")
            continue
        lat = r.get("latency") or {}
        w(
            f"| {r['label']} | {fmt(r.get('calibrated_max_deliveries_per_s'))} | {r.get('rate')} | "
            f"{lat.get('p50_ms', '-')} ms | **{lat.get('p99_ms', '-')} ms** | {lat.get('p999_ms', '-')} ms | "
            f"{lat.get('max_ms', '-')} ms | {correctness(r)} | "
            + ", ".join("failed" if v is None else f"{v:g}" for v in r.get("run_p99_ms", []))
            + " ms |"
        )
    w("")
    L.extend(latency_equal_markdown(by, out))
    L.extend(capacity_markdown(by))
    w("## Rooms: 2,000 connections, personal channel + 10-member group channel")
    w("")
    w(
        "2,000 publications/s, alternately to a personal and a group channel (11,000 deliveries/s "
        "expected); offsets and latency checked on every connection."
    )
    w("")
    w("| target | deliveries/s | p50 | p99 | server CPU | loss / dup / order |")
    w("|---|---|---|---|---|---|")
    for row in PEERS:
        r = by.get(("rooms", row))
        if r is None:
            continue
        if "error" in r:
            w(f"| {row} | error: {r['error'][:80]!r} | | | | |")
            continue
        lat = r.get("latency") or {}
        w(
            f"| {r['label']} | {fmt(r.get('deliveries_per_s'))} | {lat.get('p50_ms', '-')} ms | "
            f"{lat.get('p99_ms', '-')} ms | {r.get('server_cpu_percent', '-')}% | {correctness(r)} |"
        )
    w("")
    w("## Idle: 10,000 connections x 2 channels")
    w("")
    w(
        "Connections are opened 256 at a time; an upgrade refused with 503 (Tether's admission "
        "control, 2,000 connects/s by default) is retried after its `Retry-After`, as SDKs do. "
        "Server RSS after the connections are set up and subscribed, minus RSS before, divided "
        "by the connections; then held for 5 s (heartbeats answered)."
    )
    w("")
    w(
        "| target | KiB per connection | RSS before → connected | connections/s (setup) "
        "| upgrades refused (503), retried | alive at end |"
    )
    w("|---|---|---|---|---|---|")
    for row in [*PEERS, "tether-protobuf"]:
        r = by.get(("idle", row))
        if r is None:
            continue
        if "error" in r:
            w(f"| {row} | error: {r['error'][:80]!r} | | | |")
            continue
        w(
            f"| {r['label']} | **{r.get('rss_per_connection_kib')}** | {r.get('server_rss_before_mib')} → "
            f"{r.get('server_rss_connected_mib')} MiB | {fmt(r.get('connect_per_s'))} | "
            f"{r.get('connect_refused_retried', '-')} | "
            f"{r.get('alive_at_end')} / {r.get('connections')} |"
        )
    w("")
    w("## Targets of issue 3")
    w("")
    for line in meta["verdicts"]:
        w(f"- {line}")
    w("")
    if encoding := encoding_verdicts(by) + delta_verdicts(meta.get("delta_bytes")):
        w("## Targets of issue 10 (encodings)")
        w("")
        for line in encoding:
            w(f"- {line}")
        w("")
        if meta.get("delta_bytes"):
            w(
                "Delta bytes: `python -m tether_bench.deltabytes --updates 100` (`make "
                "bench-delta` alone), in `make bench`: a 2 KiB JSON document published 100 "
                "times, each version changing one card; four subscribers of one channel "
                '(JSON and Protobuf, each with and without `delta: "fossil"`) count the '
                "bytes of every frame after their subscribe reply. Byte counts, not timings."
            )
            w("")
    L.extend(issue11_markdown(by, out))
    L.extend(hook_outage_markdown(by))
    L.extend(resilience_markdown(by, meta))
    w("## How the numbers are made")
    w("")
    w(
        "- The client is `tether-bench run` (`bench/src/tether_bench/`): one process, uvloop, a hand-written "
        "WebSocket client on `asyncio.Protocol`. Every connection counts deliveries with one "
        "`bytes.count` per read; a declared sample (64 of 2,000 in fan-out, 100 in latency, all "
        "in rooms) cuts frames and checks every offset (loss, duplicate, order) and latency. "
        "Connections outside the sample add losses and duplicates by count. That count is the "
        "client's main cost per delivery, and in fan-out the client, not the server, is the "
        "busiest process: each driver's marker is the cheapest constant needle measured for "
        "its frames, and the heartbeat count runs only on reads that hold the heartbeat "
        "frame's length byte (one `memchr`; `tests/unit/test_bench_counting.py` cuts every "
        "driver's stream at every byte). Until 2026-12-02 Tether's stream cost the client "
        "two substring scans per read (its marker and its heartbeat), the peers' one, which "
        "alone held Tether's fan-out near 0.5x of the ceiling by deliveries/s."
    )
    w(
        f"- Fan-out publishes with `{' '.join(FAN_HARNESS)}` (every row): the adaptive window "
        "keeps that many seconds of the delivery rate measured so far ahead of the average "
        "subscriber (at most 400 publications), and Tether's HTTP publisher may have that many "
        "requests of 10 publications in flight, so the window alone bounds it, as it bounds "
        "the peers' WebSocket publishers, which never wait for an answer. An adaptive window "
        "finds about capacity x (1 - publish-to-delivery latency / lag). The `@old` rows run "
        f"again with `{' '.join(OLD_HARNESS)}`, the harness of issue 11's before figures."
    )
    w(
        "- Tether: `tether serve --config bench/tether.bench.toml` (namespace `bench`: history "
        "100, recovery on, every connection with its own JWT); publications through the server "
        "HTTP API; offsets are Tether's stream offsets."
    )
    w(
        "- Peers (`bench/src/tether_bench/peers/`, `bench/js/`) relay the bench's JSON messages; the publisher "
        "numbers them per channel so loss/duplicate/order are checked the same way. The raw "
        "ceilings frame each publication once (see below for how they write)."
    )
    w(
        '- python-socketio: `AsyncServer(async_mode="aiohttp", transports=["websocket"], '
        "async_handlers=False)` on uvloop (with the default `async_handlers=True` consecutive "
        "publish events are handled concurrently and deliveries arrive out of order). "
        "Socket.IO on Node.js: one process, WebSocket transport, `bufferutil` + "
        "`utf-8-validate`, the initial request dropped (the Socket.IO performance-tuning "
        "guide). websockets: `broadcast()`, no compression, no keepalive pings."
    )
    w(
        "- The headline ceiling (`raw_ceiling.py per-tick`) coalesces exactly as Tether "
        "does: every frame a connection gets during one loop iteration is joined into one "
        "`write`, flushed by one `call_soon` per iteration. The second row (`raw_ceiling.py "
        "batch`) is the reference's server: each published batch of 10 is its own `write`, "
        "so it does less coalescing than Tether, which could 'beat' it (1.95x on the page "
        "before issue 11). Both ignore `pause_writing` and have no auth, history, "
        "heartbeats or queue bounds. Compare per server CPU-second as well as per second. "
        + ceiling_note(by.get(("fanout", "tether"), {}), by.get(("fanout", "ceiling"), {}))
    )
    w(
        "- "
        + batch_cost_note(by.get(("fanout", "tether"), {}), by.get(("fanout", "tether-batch1"), {}))
    )
    w(
        "- Hanging backend (`hook-outage`, `bench/src/tether_bench/hooks.py`): Tether with "
        "`bench/tether.hooks.toml` (namespace `hooked` with `publish_proxy`, `rpc_proxy`), its "
        "backend a real HTTP server in a process of its own "
        "(`bench/src/tether_bench/peers/hook_backend.py`) that the bench tells to hang "
        "`/publish` (accept, never answer) and later to answer again. The fan-out part is "
        "the latency scenario's paced publisher and subscribers, on a channel with no hook; "
        "the hook clients are other connections of the same bench process. Breaker state and "
        "hook counters come from `/metrics` (read every 50 ms in every measured phase), the "
        "requests that reached the backend from the backend's own count."
    )
    w(f"- Raw reports of every run: `docs/benchmarks.json`. {meta['fifty_k']}")
    w("")
    out.write_text(keep_scale_section(out, "\n".join(L)))


def connect_markdown(by: ByRow) -> list[str]:
    rows = [r for row in ("tether", "tether-redis") if (r := by.get(("connect-cost", row)))]
    if not rows:
        return []
    out = [
        "## Connect cost: upgrade, JWT connect, two recovering subscribes",
        "",
        "What a reconnecting phone costs the server: the WebSocket upgrade, `connect` with its "
        "own HS256 JWT (every token verified), and two subscribes with `recover: true` (a "
        "personal channel, and a 10-member group channel at its real offset and epoch). "
        "Admission control is lifted for this run (`TETHER_MAX_CONNECTS_PER_SECOND`), so the "
        "figure is the work per connection, not the admission rate. Server CPU over the "
        f"setup of every connection; {CONNECT_RUNS} runs per broker, interleaved, the median "
        "shown. Where the time goes (*Targets of issue 11*) is from one more run per broker "
        "under py-spy at 1,000 samples/s, counted in no median.",
        "",
        "Then every client is cut at once and reconnects with the same token and its "
        "positions (a reconnection storm): *reconnects per server CPU-s*.",
        "",
        "| target | connects per server CPU-s | server CPU per connect | reconnects per "
        "server CPU-s | connects/s (wall) | subscribes recovered | errors | every run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['row']} | error: {r['error'][:80]!r} | | | | | | |")
            continue
        runs = ", ".join(fmt(v) for v in r.get("run_connects_per_cpu_s", []))
        out.append(
            f"| {r['label']} | **{fmt(r.get('connects_per_server_cpu_s'))}** | "
            f"{r.get('server_cpu_us_per_connect')} µs | "
            f"{fmt(r.get('reconnects_per_server_cpu_s'))} | {fmt(r.get('connect_per_s'))} | "
            f"{r.get('subscribes_recovered')} / {2 * r.get('connected', 0)} | "
            f"{r.get('connect_errors')} | {runs} |"
        )
    out.append("")
    return out


def latency_equal_markdown(by: ByRow, page: Path) -> list[str]:
    rows = [(row, r) for row in PEERS if (r := by.get(("latency", f"{row}@equal")))]
    out: list[str] = []
    if rows:
        out += [
            f"### Latency at equal load: {EQUAL_RATE} publications/s to 1,000 subscribers",
            "",
            f"Every target at the same rate ({EQUAL_RATE} publications/s, "
            f"{EQUAL_RATE * 1000:,} deliveries/s), one that every peer sustains; one publication "
            "per call.",
            "",
            "| target | deliveries/s | p50 | p99 | p99.9 | max | loss / dup / order |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, r in rows:
            if "error" in r:
                out.append(f"| {r['row']} | error: {r['error'][:80]!r} | | | | | |")
                continue
            lat = r.get("latency") or {}
            out.append(
                f"| {r['label']} | {fmt(r.get('deliveries_per_s'))} | {lat.get('p50_ms', '-')} ms "
                f"| **{lat.get('p99_ms', '-')} ms** | {lat.get('p999_ms', '-')} ms | "
                f"{lat.get('max_ms', '-')} ms | {correctness(r)} |"
            )
        out.append("")
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for row in PEERS:
        for key in (row, *(f"{row}@{f}" for f in CURVE_FRACTIONS), f"{row}@equal"):
            r = by.get(("latency", key))
            lat = (r or {}).get("latency")
            if r is None or "error" in r or not lat or not r.get("deliveries_per_s"):
                continue
            point = (float(r["deliveries_per_s"]), lat["p50_ms"], lat["p99_ms"])
            curves.setdefault(r["label"].split(" (")[0], []).append(point)
    if curves:
        plots.latency_curves(curves, page.with_name("benchmarks-latency.svg"))
        fractions = ", ".join(str(f) for f in (*CURVE_FRACTIONS, 0.5))
        out += [
            "### Latency against throughput",
            "",
            f"Each target at {fractions} of its own calibrated maximum and at the equal "
            "load above: p99 (solid) and p50 (dashed) against deliveries/s.",
            "",
            "![Latency against throughput](benchmarks-latency.svg)",
            "",
        ]
    return out


def capacity_markdown(by: ByRow) -> list[str]:
    """The capacity runs and the line `tether capacity` draws through them."""
    rows = [r for n in CAPACITY_FANOUTS if (r := by.get(("latency", f"{CAPACITY_ROW}{n}")))]
    if not rows:
        return []
    out = [
        "### CPU per publication and per delivery (`tether capacity`)",
        "",
        "Tether paced well below its maximum, one publication per request, at two fan-outs "
        "(so that each publication is flushed on its own): the CPU per publication against "
        "the fan-out is the straight line `tether capacity` plans with "
        "(docs/howto/autoscale.md).",
        "",
        "| row | publications/s | fan-out | server CPU-s (measured s) | server CPU "
        "| deliveries per server CPU-s | CPU per publication | p99 | loss / dup / order |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['row']} | error: {r['error'][:80]!r} | | | | | | | |")
            continue
        pubs, dels, per_cpu = (
            r.get("publications"),
            r.get("deliveries"),
            r.get("deliveries_per_server_cpu_s"),
        )
        fanout = f"{dels / pubs:.0f}" if pubs and dels else "-"
        per_pub = f"{1e6 * dels / pubs / per_cpu:.0f} µs" if pubs and dels and per_cpu else "-"
        out.append(
            f"| `{r['row']}` | {r.get('rate')} | {fanout} | {r.get('server_cpu_s', '-')} s "
            f"({r.get('measured_s', '-')} s) | {r.get('server_cpu_percent', '-')}% | "
            f"{fmt(per_cpu)} | {per_pub} | {(r.get('latency') or {}).get('p99_ms', '-')} ms | "
            f"{correctness(r)} |"
        )
    out.append("")
    try:
        line = publication_line(rows)
    except CapacityError as exc:
        out += [f"No line: {exc}.", ""]
    else:
        out += [
            f"The line: **{line.per_publication * 1e6:.0f} µs per publication** on each node "
            f"holding a subscriber, plus **{line.per_delivery * 1e6:.3f} µs per delivery**.",
            "",
        ]
    return out


def _profile_lines(r: Report, title: str) -> list[str]:
    profile = r.get("profile")
    if not profile:
        return []
    run = profile.get("run", "the first run")
    out = []
    if profile.get("stages"):
        out += [
            f"{title}, by stage ({profile['samples']:,} py-spy samples of the measured phase "
            f"of {run}; a stage's share is of the samples that show it, and stages nest: "
            "the token is part of connect, recovery part of the subscribes):",
            "",
            "| stage | share of server CPU samples |",
            "|---|---|",
        ]
        out += [f"| {label} | {share:.1%} |" for label, share in profile["stages"]]
        out.append("")
    out += [
        f"{title} ({profile['samples']:,} py-spy samples of the measured phase of {run}; "
        "`self`: on top of the stack, `on stack`: anywhere in it):",
        "",
        "| function | self | on stack |",
        "|---|---|---|",
    ]
    for name, share, on_stack in profile["self"][:12]:
        out.append(f"| `{name}` | {share:.1%} | {on_stack:.1%} |")
    out.append("")
    return out


def issue11_markdown(by: ByRow, page: Path) -> list[str]:
    out = ["## Targets of issue 11", ""]
    out += [f"- {line}" for line in issue11_verdicts(by)]
    out.append("")
    before = page.with_name("benchmarks-before-issue11.json")
    if before.exists():
        saved = json.loads(before.read_text())
        out += [
            "Before and after. *Before*: today's main before issue 11's changes "
            f"({saved['commit'][:7]}), measured {saved['date']} with `{saved['command']}` "
            f"({saved['rounds']} interleaved rounds, medians; raw reports in "
            f"`docs/{before.name}`)"
            + (
                f"; its 10,000-client reconnect storm measured {saved['storm_date']} with "
                f"`{saved['storm_command']}` (one run, as `make bench` makes it)"
                if saved.get("storm_command")
                else ""
            )
            + ". *After*: this run.",
            "",
            "| figure | before | after |",
            "|---|---|---|",
        ]
        out += [f"| {a} | {b} | {c} |" for a, b, c in before_after_rows(saved["results"], by)]
        out.append("")
    out += ["### Where the time goes", ""]
    for scenario, row, title in (
        ("fanout", "tether", "Fan-out, memory broker"),
        ("fanout", "tether-redis", "Fan-out over Redis"),
        ("connect-cost", "tether", "Connect cost, memory broker"),
        ("connect-cost", "tether-redis", "Connect cost over Redis"),
    ):
        for r in [by.get((scenario, row), {})]:
            out += _profile_lines(r, title)
    return out


def keep_scale_section(out: Path, text: str) -> str:
    """``text`` plus the section tether-bench scale (`make bench-scale`) wrote into ``out``
    between its markers, which this page rewrite must not lose."""
    old = out.read_text() if out.exists() else ""
    begin, end = "<!-- scale:begin -->", "<!-- scale:end -->"
    if begin not in old or end not in old:
        return text
    section = begin + old.split(begin, 1)[1].split(end, 1)[0] + end
    return text.rstrip("\n") + "\n\n" + section + "\n"


def _ms(lat: dict[str, Any] | None, key: str) -> str:
    value = (lat or {}).get(key)
    return "-" if value is None else f"{value:g} ms"


def reconnect_storm_markdown(r: Report, w: Callable[[str], None]) -> None:
    w(
        f"{r['clients']:,} clients over {r['channels']} channel{'s' * (r['channels'] > 1)} "
        f"(recovery on), {r['rate']:g} publications/s throughout. Every client socket is "
        f"cut at once; after {r['outage_s']:g} s all reconnect together (an upgrade refused "
        "with 503 is retried after its `Retry-After` x a random 0.5-1.5) and resubscribe "
        "with `recover: true` and their last offset and epoch."
    )
    w("")
    w("| measure | value |")
    w("|---|---|")
    w(
        f"| time to full recovery (first reconnect → last client recovered) | "
        f"**{r['time_to_full_recovery_s']} s** ({r['time_from_cut_s']} s from the cut) |"
    )
    if r.get("admitted_server") is not None:
        seconds = max(r["time_to_full_recovery_s"], 1e-9)
        w(
            "| upgrades admitted by the server during the storm "
            "(`tether_connects_admitted_total`) | "
            f"{r['admitted_server']:,} ({r['admitted_server'] / seconds:,.0f}/s on average) |"
        )
    w(
        "| peak connects completed at the clients, any 1 s window (admitted clients "
        "finish connect + subscribe in bunches, so this can exceed the admission rate) | "
        f"{r['peak_connects_per_s']:,}/s |"
    )
    w(
        f"| upgrades refused with 503 (client count / `tether_connects_refused_total`) | "
        f"{r['refused_503']:,} / {r['connects_refused_server']:,} |"
    )
    w(
        f"| broker reads for recovery (`tether_recovery_broker_reads_total`) | "
        f"**{r['recovery_broker_reads']}** for {r['channels']} "
        f"channel{'s' * (r['channels'] > 1)} |"
    )
    w(f"| recovered true / false | {r['recovered_true']:,} / {r['recovered_false']:,} |")
    w(f"| clients that failed to reconnect | {r['reconnect_errors']} |")
    w(f"| loss / dup / order (offsets checked on every client) | **{correctness(r)}** |")
    w("")


def _lat_row(label: str, p: Report) -> str:
    lat = p.get("latency")
    rounds = ", ".join(f"{v:g}" for v in p.get("round_p99_ms", []) if v is not None)
    return (
        f"| {label} | {p.get('seconds', 0):g} s | {fmt(p.get('publications'))} | "
        f"{_ms(lat, 'p50_ms')} | **{_ms(lat, 'p99_ms')}** | {_ms(lat, 'p999_ms')} | "
        f"{_ms(lat, 'max_ms')} | {fmt((lat or {}).get('samples'))} | {rounds or '-'} ms |"
    )


def hook_outage_markdown(by: ByRow) -> list[str]:
    """Issue 14's hanging backend: plain fan-out latency before and during the hang, what
    the hook clients got, the breaker, the backend's count; then the verdicts."""
    r = by.get(("hook-outage", "tether-hooks"))
    if r is None:
        return []
    L = ["## Backend hooks: plain fan-out while the backend hangs", ""]
    w = L.append
    if "error" in r:
        w(f"hook-outage: error: `{r['error'][:300]!r}`")
        w("")
        return L
    proxy = r.get("proxy") or {}
    limits = (
        f"`timeout` {proxy['timeout']:g} s, `max_in_flight` {proxy['max_in_flight']}, "
        f"`breaker_failures` {proxy['breaker_failures']}, `breaker_reset` "
        f"{proxy['breaker_reset']:g} s"
        if proxy
        else "limits not recorded"
    )
    w(
        f"{r['subscribers']:,} subscribers of a plain channel (no hook on its path), "
        f"{r['rate']:g} publications/s through `POST /api/publish`, one per call, in every "
        f"phase ({r['rate'] * r['subscribers']:,.0f} deliveries/s). The node's `[proxies.app]` "
        f"({limits}) is a real HTTP server in a process of its own. {r['rounds']} "
        f"round{'s' * (r['rounds'] != 1)} of: "
        f"**baseline** ({r['phase_s']:g} s: backend healthy, no hook traffic), then **hang** "
        f"({r['phase_s']:g} s: the backend accepts `/publish` requests and never answers, "
        f"while {r['hook_clients']} connections publish into the hooked namespace at "
        f"{r['hook_publish_rate']:g}/s and {max(1, r['hook_clients'] // 4)} others call an RPC "
        f"at {r['hook_rpc_rate']:g}/s), then recovery (the backend answers again; not "
        "measured). The hang is split where `/metrics` first shows the publish hook's breaker "
        "open. Latency from each publication's scheduled send time, on "
        f"{r['checked_connections']} checked subscribers, pooled over the rounds. Command: "
        f"`{shown_command(r.get('command', ''))}`."
    )
    w("")
    w("| phase | seconds | publications | p50 | p99 | p99.9 | max | samples | p99 per round |")
    w("|---|---|---|---|---|---|---|---|---|")
    w(_lat_row("baseline (backend healthy, no hook traffic)", r["baseline"]))
    w(_lat_row("hang, whole", r["hang"]))
    w(_lat_row("hang, until the breaker opened", r["hang_opening"]))
    w(_lat_row("hang, breaker open", r["hang_open"]))
    w("")
    ratio, p50 = r.get("p99_ratio"), r.get("p50_ratio")
    if ratio is not None and p50 is not None:
        w(f"Hang / baseline: p99 **{ratio:.2f}x**, p50 {p50:.2f}x.")
        w("")
    pub, opening, opened, rpc = (
        r["hook_publish"],
        r["hook_publish_opening"],
        r["hook_publish_open"],
        r["hook_rpc"],
    )
    counters = r["publish_hook_server"]
    w("| during the hang | value |")
    w("|---|---|")
    w(
        "| breaker opened after (each round) | "
        + ", ".join("never" if x is None else f"{x:g} s" for x in r["breaker_opened_after_s"])
        + " |"
    )
    w(
        "| breaker state at the end of the hang (`tether_proxy_breaker_state`) | "
        + ", ".join(str(x) for x in r["breaker_state_end_of_hang"])
        + " |"
    )
    w(
        f"| hooked publishes answered | {pub['answered']:,}: **{pub['temporary_100']:,} error "
        f"100 (temporary)**, {pub['ok']:,} accepted, {pub['other_errors']} other errors, "
        f"{r['hook_calls_unanswered']} unanswered |"
    )
    w(
        f"| until the breaker opened: reply time p50 / max | "
        f"{_ms(opening.get('answer'), 'p50_ms')} / {_ms(opening.get('answer'), 'max_ms')} "
        f"({opening['answered']:,} calls, {opening['queued']:,} queued behind an earlier call "
        "of their connection) |"
    )
    w(
        f"| breaker open: reply time p50 / p99 / max, calls on a connection with no call "
        f"pending | {_ms(opened.get('unqueued_answer'), 'p50_ms')} / "
        f"{_ms(opened.get('unqueued_answer'), 'p99_ms')} / "
        f"{_ms(opened.get('unqueued_answer'), 'max_ms')} ({opened['unqueued']:,} calls; "
        f"{opened['slow_unqueued']} over 100 ms) |"
    )
    w(
        f"| `/publish` requests that reached the backend | "
        f"{r['backend_publish_requests_before_open']:,} before the breaker opened, "
        f"**{r['backend_publish_requests_after_open']:,} after** (its probes) |"
    )
    w(
        f"| publish hook (`tether_proxy_*_total` deltas) | {counters['requests']:,} requests, "
        f"{counters['timeouts']:,} timeouts, {counters['bulkhead_full']:,} bulkhead_full, "
        f"{counters['circuit_open']:,} circuit_open |"
    )
    w(
        f"| RPCs (own hook, own connections) | {rpc['ok']:,} of {rpc['answered']:,} answered "
        f"with their result, p50 / p99 {_ms(rpc.get('answer'), 'p50_ms')} / "
        f"{_ms(rpc.get('answer'), 'p99_ms')}; rpc hook failures at the node "
        f"{r['rpc_hook_failures_server']} |"
    )
    w(
        "| breaker closed again after the backend answered (each round) | "
        + ", ".join(
            "not within 30 s" if x is None else f"{x:g} s" for x in r["breaker_closed_after_heal_s"]
        )
        + " |"
    )
    w(f"| fan-out loss / dup / order | **{correctness(r)}** |")
    w("")
    lines = hook_outage_verdicts(r)
    if lines:
        w("### Targets of issue 14 (hanging backend)")
        w("")
        L.extend(f"- {line}" for line in lines)
        w("")
    return L


def resilience_markdown(by: ByRow, meta: dict[str, Any]) -> list[str]:
    """The resilience section (issue 5): one block per scenario, then the verdicts."""
    res = meta.get("resilience")
    if not res:
        return []
    L: list[str] = []
    w = L.append
    w("## Resilience: slow consumers, typing storm, reconnect storm, publish burst")
    w("")
    w(
        f"Measured {res['date']} ({res['wall_min']:.1f} min), load average (1 min) "
        f"{res['load_start']} at start, {res['load_end']} at end"
        + (
            " (the machine was shared: figures may be noisy)."
            if float(res["load_start"]) > 0.5
            else "."
        )
        + " Reproduce this section alone with `make bench-resilience` (`make bench` runs it "
        "too). Target: one Tether process, `tether serve --config bench/tether.resilience.toml` "
        f"(Redis broker on a local redis-server {res.get('redis', '?')}, so that publishes wait "
        "for the broker and lane limits can shed them; `outbound_queue_bytes` 256 KiB; "
        "1,000 connects/s, burst 1,000; standard lane limited to 64 publishes in flight), "
        "started fresh for each scenario. The exact commands:"
    )
    w("")
    w("```sh")
    for scenario in RESILIENCE:
        r = by.get((scenario, "tether-resilience"))
        if r and r.get("command"):
            w(shown_command(r["command"]))
    w("```")
    w("")
    w(
        "Counters come from the server's `GET /metrics` (deltas over the phase): "
        "`tether_slow_disconnects_total`, `tether_ephemeral_dropped_total`, "
        "`tether_ephemeral_coalesced_total`, `tether_connects_refused_total`, "
        "`tether_recovery_broker_reads_total`, `tether_publishes_shed_total`."
    )
    w("")

    def failed(scenario: str) -> Report | None:
        r = by.get((scenario, "tether-resilience"))
        if r is None:
            return None
        if "error" in r:
            w(f"{scenario}: error: `{r['error'][:300]!r}`")
            w("")
            return None
        return r

    w("### Slow consumers")
    w("")
    r = failed("slow-consumers")
    if r:
        w(
            f"{r['healthy']:,} healthy subscribers of one channel, {r['rate']:g} publications/s "
            f"of {r['payload_bytes']:,}-byte payloads for "
            f"{r['without_slow']['publications'] / r['rate']:g} s; "
            f"then {r['slow']} more subscribers that never read (SO_RCVBUF 4 KiB, reading "
            "paused) join and the same load runs again. Latency from each publication's "
            f"scheduled send time, on {r['checked_connections']} checked healthy subscribers."
        )
        w("")
        w("| phase | deliveries/s (healthy) | p50 | p99 | p99.9 | max | server CPU |")
        w("|---|---|---|---|---|---|---|")
        for label, key in (("healthy only", "without_slow"), (f"+ {r['slow']} slow", "with_slow")):
            p = r[key]
            lat = p.get("latency")
            w(
                f"| {label} | {fmt(p['deliveries_per_s'])} | {_ms(lat, 'p50_ms')} | "
                f"**{_ms(lat, 'p99_ms')}** | {_ms(lat, 'p999_ms')} | {_ms(lat, 'max_ms')} | "
                f"{p.get('server_cpu_percent', '-')}% |"
            )
        w("")
        w(
            f"- Slow clients cut off with 3008: **{r['slow_disconnects']} of {r['slow']}** "
            f"(`tether_slow_disconnects_total`); {r['slow_closed_3008_seen']} of them read "
            "up to the 3008 close frame within 5 s of reading again, after "
            f"{r['slow_received'] / max(r['slow'], 1):,.0f} publications each on average "
            "(what fit in their socket buffers and the 256 KiB queue)."
        )
        w(
            f"- Healthy subscribers, loss / dup / order: **{correctness(r)}** "
            f"({r['healthy']:,} x {r['publications']:,} publications)."
        )
        w("")
    w("### Typing storm")
    w("")
    r = failed("typing-storm")
    if r:
        w(
            f"{r['subscribers']:,} subscribers of a `chat:` channel (lane critical, history) and "
            f"a `typing:` channel (lane ephemeral, no history). Chat at {r['chat_rate']:g}/s "
            f"alone, then chat at {r['chat_rate']:g}/s plus typing at {r['typing_rate']:g}/s "
            f"from {r['typing_users']} simulated users (API `coalesce_key` = user), in "
            f"{r.get('rounds', 1)} interleaved rounds of {r['chat_only'].get('seconds', 0) / r.get('rounds', 1):g} s "
            f"per phase (calm, storm, calm, storm...). Chat latency on "
            f"{r['checked_connections']} checked subscribers, pooled over the rounds of a phase."
            + (
                f" Run {len(r['run_ratios'])} times, each against a fresh server; the table "
                "shows the run with the median chat p99 ratio (every run's ratio: "
                + ", ".join("failed" if x is None else f"{x:.3f}x" for x in r["run_ratios"])
                + ")."
                if r.get("run_ratios")
                else ""
            )
        )
        w("")
        w(
            "| phase | chat deliveries/s | chat p50 | chat p99 | p99.9 | max | p99 per round "
            "| server CPU |"
        )
        w("|---|---|---|---|---|---|---|---|")
        for label, key in (("chat only", "chat_only"), ("chat + typing storm", "with_typing")):
            p = r[key]
            lat = p.get("latency")
            rounds = ", ".join(f"{v:g}" for v in p.get("round_p99_ms", []) if v is not None)
            w(
                f"| {label} | {fmt(p['deliveries_per_s'])} | {_ms(lat, 'p50_ms')} | "
                f"**{_ms(lat, 'p99_ms')}** | {_ms(lat, 'p999_ms')} | {_ms(lat, 'max_ms')} | "
                f"{rounds} ms | {p.get('server_cpu_percent', '-')}% |"
            )
        w("")
        w(
            f"- Typing: {r['typing_accepted']:,} publications accepted "
            f"({r['typing_shed']} shed), {r['typing_expected_frames']:,} frames to deliver; "
            f"**{r['typing_delivered']:,} delivered, {r['typing_coalesced']:,} coalesced, "
            f"{r['typing_dropped']:,} dropped** (`tether_ephemeral_*_total`); slow "
            f"disconnects {r['slow_disconnects']}."
        )
        w(f"- Chat loss / dup / order: **{correctness(r)}**.")
        w("")
    w("### Reconnect storm")
    w("")
    for row in ("tether-resilience", "tether-resilience-10k"):
        r = by.get(("reconnect-storm", row))
        if r is None:
            continue
        if "error" in r:
            w(f"- {row}: failed: {r['error']}")
            w("")
            continue
        reconnect_storm_markdown(r, w)
    w("### Publish burst")
    w("")
    r = failed("publish-burst")
    if r:
        w(
            f"{r['subscribers']} subscribers of one channel. The sustainable rate is measured "
            "first (closed loop, 8 requests in flight, one publication per `POST /api/publish`, "
            "at most ~0.1 s of deliveries outstanding); then the API client offers "
            f"{r['factor']:g}x that rate, open loop, for {r['burst_s']:g} s over "
            f"{r['http_connections']} keep-alive sockets of a hand-written HTTP/1.1 client."
        )
        w("")
        w("| measure | value |")
        w("|---|---|")
        w(f"| sustainable rate | {r['sustainable_publications_per_s']:,} publications/s |")
        w(
            f"| offered | {r['offered']:,} requests, {r['offered_per_s']:,}/s "
            f"(target {r['burst_rate']:,}/s) |"
        )
        w(
            f"| shed with 429 (client / `tether_publishes_shed_total`) | "
            f"**{r['shed_429']:,}** / {r['shed_server']:,} |"
        )
        w(f"| accepted (2xx) | **{r['accepted']:,}** ({r['accepted_per_s']:,}/s) |")
        w(f"| other errors | {r['publish_errors']} |")
        lat, ack, wait = r.get("latency"), r.get("ack_latency"), r.get("client_wait")
        w(
            f"| delivery latency of accepted, from scheduled send: p50 / p99 / max | "
            f"{_ms(lat, 'p50_ms')} / **{_ms(lat, 'p99_ms')}** / {_ms(lat, 'max_ms')} |"
        )
        w(
            f"| of which waiting for a free client socket: p50 / p99 | "
            f"{_ms(wait, 'p50_ms')} / {_ms(wait, 'p99_ms')} (peak backlog "
            f"{r['client_backlog_peak']:,} requests) |"
        )
        w(
            f"| API answer time of accepted, from the request's write: p50 / p99 | "
            f"{_ms(ack, 'p50_ms')} / {_ms(ack, 'p99_ms')} |"
        )
        w(
            f"| loss / dup / order of accepted (every subscriber) | **{correctness(r)}**; "
            f"stream top offset {r['stream_top_offset']:,} = accepted "
            f"{r['publications']:,}: {r['offsets_match_accepted']} |"
        )
        w(f"| server CPU during the burst | {r.get('server_cpu_percent', '-')}% |")
        w("")
    notes = resilience_notes(by, resilience_ephemeral_window())
    lines = resilience_verdicts(by)
    if lines or notes:
        w("### Targets of issue 5")
        w("")
        for line in lines:
            w(f"- {line}")
        for note in notes:
            w(f"- {note}")
        w("")
    return L


def shared_note(load_start: str, results: list[Report]) -> str:
    """What the load averages say about other work on the machine during the run."""
    peak = max((float(r.get("load_before", 0)) for r in results), default=0.0)
    if float(load_start) > 0.5:
        return (
            f"The machine was shared with other work (load {load_start} before the first run; "
            f"up to {peak:.2f} before later runs, a 1-minute average that still counts the "
            "previous run's server and client): absolute figures may be depressed and noisy; "
            "per-CPU-second figures are the least disturbed."
        )
    return (
        f"The machine was quiet when the run started (load {load_start}); loads before later "
        f"runs (up to {peak:.2f}) still count the previous run's server and client. Other "
        "engineers share this machine, so work starting mid-run cannot be ruled out."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tether-bench compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny runs (a smoke test of the harness)"
    )
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument(
        "--only",
        nargs="*",
        help="rows to run: a target (tether: every row of it) or one row "
        "(tether@capacity-250); default: all",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the page from its .json, run nothing"
    )
    section = parser.add_mutually_exclusive_group()
    section.add_argument(
        "--resilience",
        action="store_true",
        help="run only the resilience section; the other sections are kept from the .json",
    )
    section.add_argument(
        "--hooks",
        action="store_true",
        help="run only the hook-outage scenario; every other section is kept from the .json",
    )
    section.add_argument(
        "--delta",
        action="store_true",
        help="measure only the delta bytes; every other section is kept from the .json",
    )
    section.add_argument(
        "--no-resilience",
        action="store_true",
        help="do not run the resilience section; keep it from the .json",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        out = ROOT / args.out
        saved = json.loads(out.with_suffix(".json").read_text())
        saved["meta"]["shared_note"] = shared_note(saved["meta"]["load_start"], saved["results"])
        write_markdown(saved["results"], saved["meta"], out)
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    # `timeout` (make bench) sends SIGTERM: unwind, so that every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logdir = Path(tempfile.gettempdir()) / "tether-bench-logs"
    logdir.mkdir(exist_ok=True)
    print(f"server logs in {logdir}", file=sys.stderr)
    out = ROOT / args.out
    if args.resilience:
        saved = json.loads(out.with_suffix(".json").read_text())
        results = [r for r in saved["results"] if r["scenario"] not in RESILIENCE]
        meta = saved["meta"]
        meta["resilience"], resilience_results = run_resilience(args.quick, logdir)
        results += resilience_results
        write_markdown(results, meta, out)
        out.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=1)
        )
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
        for line in resilience_verdicts({(r["scenario"], r["row"]): r for r in results}):
            print("  " + line.replace("**", ""), file=sys.stderr)
        return 0
    if args.delta:
        saved = json.loads(out.with_suffix(".json").read_text())
        saved["meta"]["delta_bytes"] = measure_delta_bytes()
        write_markdown(saved["results"], saved["meta"], out)
        out.with_suffix(".json").write_text(json.dumps(saved, indent=1))
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
        for line in delta_verdicts(saved["meta"]["delta_bytes"]):
            print("  " + line.replace("**", ""), file=sys.stderr)
        return 0
    if args.hooks:
        saved = json.loads(out.with_suffix(".json").read_text())
        steps = [s for s in plan(args.quick) if s[0] == "hook-outage"]
        fresh = run_steps(steps, logdir)
        results = [r for r in saved["results"] if r["scenario"] != "hook-outage"] + fresh
        write_markdown(results, saved["meta"], out)
        out.with_suffix(".json").write_text(
            json.dumps({"meta": saved["meta"], "results": results}, indent=1)
        )
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
        for r in fresh:
            for line in hook_outage_verdicts(r):
                print("  " + line.replace("**", ""), file=sys.stderr)
        return 0
    t0 = time.time()
    load_start = loadavg()
    steps = [
        s
        for s in plan(args.quick)
        if not args.only or s[1] in args.only or s[1].split("@")[0] in args.only
    ]
    PROFILE_DIR.mkdir(exist_ok=True)
    results = fold_runs(run_main_steps(steps, logdir))
    resilience_meta = None
    if not args.no_resilience and (not args.only or "tether-resilience" in args.only):
        resilience_meta, resilience_results = run_resilience(args.quick, logdir)
        results += resilience_results
    elif args.no_resilience and out.with_suffix(".json").exists():
        # The resilience section is kept from the last run (`make bench-resilience`).
        saved = json.loads(out.with_suffix(".json").read_text())
        resilience_meta = saved["meta"].get("resilience")
        results += [r for r in saved["results"] if r["scenario"] in RESILIENCE]
    main_results = [r for r in results if r["scenario"] not in RESILIENCE]
    by = {(r["scenario"], r["row"]): r for r in results}
    load_end = loadavg()
    shared = shared_note(load_start, main_results)
    fifty = (
        (
            "This machine caps open files per process at "
            f"{hard} (hard RLIMIT_NOFILE, not raisable here), so one server process cannot "
            "hold 50,000 or 100,000 connections: those runs use `tether serve --workers` "
            "and several bench processes (`make bench-scale`, section below)."
        )
        if hard < 50_500
        else ""
    )
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "wall_min": (time.time() - t0) / 60,
        "machine": machine(),
        "load_start": load_start,
        "load_end": load_end,
        "shared_note": shared,
        "verdicts": verdicts(by),
        "fifty_k": fifty,
        "resilience": resilience_meta,
        "delta_bytes": measure_delta_bytes(),
        "command": "make bench-main" if args.no_resilience else "make bench",
    }
    write_markdown(results, meta, out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    hooks = hook_outage_verdicts(by.get(("hook-outage", "tether-hooks"), {}))
    for line in meta["verdicts"] + resilience_verdicts(by) + hooks:
        print("  " + line.replace("**", ""), file=sys.stderr)
    return 0


def measure_delta_bytes() -> dict[str, Any]:
    """Bytes on the wire with and without delta (:mod:`tether_bench.deltabytes`: an
    in-process node on real sockets; byte counts only, so a busy machine does not move
    them)."""
    return asyncio.run(deltabytes.measure(100))


def run_resilience(quick: bool, logdir: Path) -> tuple[dict[str, Any], list[Report]]:
    """The resilience section: a private redis-server, then each scenario against a fresh
    Tether on it. Returns the section's meta and its reports."""
    from tether_bench.redisserver import RedisServer, RedisServerError

    t0 = time.time()
    load_start = loadavg()
    steps = resilience_plan(quick)
    redis = RedisServer()
    try:
        redis.start()
    except RedisServerError as exc:
        results = [{"scenario": s, "row": row, "error": str(exc)} for s, row, _ in steps]
    else:
        os.environ["BENCH_REDIS_URL"] = redis.url
        try:
            results = keep_median_runs(
                run_steps(steps, logdir, first_port=BASE_PORT + 100),
                "typing-storm",
                _chat_ratio,
                "run_ratios",
            )
        finally:
            redis.kill()
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "wall_min": (time.time() - t0) / 60,
        "load_start": load_start,
        "load_end": loadavg(),
        "redis": next((v[2:] for v in version if v.startswith("v=")), "?"),
    }
    return meta, results


def run_steps(
    steps: list[tuple[str, str, list[str]]], logdir: Path, first_port: int = BASE_PORT
) -> list[Report]:
    results: list[Report] = []
    for i, (scenario, row, extra) in enumerate(steps):
        port = first_port + 2 * (i % 40)
        print(
            f"[{i + 1}/{len(steps)}] {scenario:8} {row:16} ...", end="", flush=True, file=sys.stderr
        )
        r = run_one(scenario, row, extra, port, logdir)
        results.append(r)
        summary = r.get("error") or (
            f"{fmt(r.get('deliveries_per_s'))}/s"
            if scenario != "idle"
            else f"{r.get('rss_per_connection_kib')} KiB/conn"
        )
        if scenario == "latency" and r.get("latency"):
            summary += f" p99 {r['latency']['p99_ms']} ms"
        if scenario in RESILIENCE and "error" not in r:
            summary = f"loss/dup/order {correctness(r)}"
        if scenario == "hook-outage" and "error" not in r:
            summary = f"p99 hang/baseline {r.get('p99_ratio')}, loss/dup/order {correctness(r)}"
        print(
            f" {summary}  (load {r.get('load_before', '?')}->{r.get('load_after', '?')})",
            file=sys.stderr,
            flush=True,
        )
    return results


if __name__ == "__main__":
    sys.exit(main())
