"""The ``hook-outage`` scenario of ``tether-bench run``: plain fan-out while a backend hangs.

N subscribers of a plain channel (namespace ``bench``: no hook on its path), published to
at ``rate`` per second through the server API, exactly as in the latency scenarios; a set
of ``hook_clients`` other connections call the hooked path: client publications into a
namespace with ``publish_proxy`` (``hook_rate`` per second, open loop), and a quarter as
many connections of their own call client RPCs (``rpc_proxy``, a fifth of that rate: the
RPC hook has its own bulkhead and breaker). The backend is a real HTTP server process
(:mod:`tether_bench.peers.hook_backend`, at ``backend_url``) that the scenario tells to
hang its ``/publish`` path and, later, to answer again. ``bursts`` rounds of:

``baseline``
    backend healthy, no hook traffic: fan-out latency.
``hang``
    the backend accepts ``/publish`` requests and never answers, while the hook clients
    keep publishing and calling RPCs: fan-out latency, split at the moment ``/metrics``
    first shows the publish hook's breaker open (``opening``: calls wait out the timeout
    or find the bulkhead full; ``open``: refused at once, but for the breaker's probe
    every ``breaker_reset``). What the hook clients got (error 100, temporary), how fast
    (a connection runs its commands in order: a call sent while an earlier one of its
    connection waits is counted as ``queued``), and the RPCs answered.
``recovery`` (not measured for latency)
    the backend answers again; hook traffic goes on until ``/metrics`` shows the breaker
    closed (its probe succeeded).

``/metrics`` is read every 50 ms during both measured phases alike; the backend counts
the requests that reached it. Latency runs from each publication's scheduled send time,
on the checked connections. Needs a Tether target configured like bench/tether.hooks.toml
(namespace ``hooked`` with ``publish_proxy = "app"``, ``rpc_proxy = "app"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tether_bench.publisher import LeanHttpPublisher
from tether_bench.resilience import _metrics_url, _paced, measured_phase
from tether_bench.scenarios import Run, _latency, _sample
from tether_bench.wsclient import now_us

PROXY = "app"
HUNG_PATH = "/hooks/publish"
"""The backend path that hangs (the proxy's url is the backend's root + ``/hooks``)."""
POLL_S = 0.05
"""How often ``/metrics`` is read while measuring."""
TEMPORARY = 100
"""The error a client gets when a hook call failed or was refused (temporary: true)."""
AT_ONCE_MS = 100.0
"""A reply within this is "at once": a call that reached the hung backend waits out the
whole ``timeout`` (1 s in bench/tether.hooks.toml)."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the backend and /metrics --------------------------------------------------------------


class BackendControl:
    """The hook backend's control endpoints (see :mod:`tether_bench.peers.hook_backend`)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        """The backend's root: ``http://host:port`` (the proxy's url is ``base/hooks``)."""

    async def hang(self, path: str) -> None:
        async with self.session.post(f"{self.base}/control/hang", json={"paths": [path]}) as r:
            r.raise_for_status()

    async def heal(self) -> None:
        async with self.session.post(f"{self.base}/control/heal") as r:
            r.raise_for_status()

    async def received(self, path: str) -> int:
        async with self.session.get(f"{self.base}/control/stats") as r:
            r.raise_for_status()
            stats = await r.json()
        return int(stats["received"].get(path, 0))


async def read_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The ``tether_proxy_*`` samples of the target's ``/metrics``."""
    async with session.get(url) as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tether_proxy_"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _labels(sample: str) -> dict[str, str]:
    inside = sample.partition("{")[2].rstrip("}")
    pairs = (part.split("=", 1) for part in inside.split(",") if "=" in part)
    return {k: v.strip('"') for k, v in pairs}


def breaker_state(samples: dict[str, float], hook: str, proxy: str = PROXY) -> str | None:
    """The state ``tether_proxy_breaker_state`` shows for one hook (None: not there)."""
    for name, value in samples.items():
        if name.startswith("tether_proxy_breaker_state{") and value == 1.0:
            labels = _labels(name)
            if labels.get("hook") == hook and labels.get("proxy") == proxy:
                return labels.get("state")
    return None


def hook_counter(samples: dict[str, float], family: str, hook: str, reason: str = "") -> int:
    """``tether_proxy_<family>_total`` of one hook (of one ``reason`` if given)."""
    total = 0.0
    for name, value in samples.items():
        if not name.startswith(f"tether_proxy_{family}_total{{"):
            continue
        labels = _labels(name)
        mine = labels.get("hook") == hook and labels.get("proxy") == PROXY
        if mine and (not reason or labels.get("reason") == reason):
            total += value
    return round(total)


# -- the hook clients ----------------------------------------------------------------------


@dataclass
class Answer:
    kind: str
    """``publish`` or ``rpc``."""
    sent: float
    """perf_counter() at the write."""
    micros: int
    """Write to reply."""
    code: int
    """0: a result; else the error code."""
    temporary: bool
    queued: bool
    """Sent while an earlier call of the same connection had no reply yet: a connection's
    commands run in order, so this one also waited for that one."""


@dataclass
class HookClients:
    """Connections that call the hooked paths over the Tether protocol (JSON): ``count``
    of them send client ``publish`` into ``channel``, ``count // 4`` others (at least one)
    client ``rpc``, on connections of their own: a connection runs its commands in order,
    so an RPC behind a hung publish of the same connection would wait for it. Replies are
    matched by id."""

    run: Run
    count: int
    channel: str
    answers: list[Answer] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=lambda: {"publish": 0, "rpc": 0})
    _pending: dict[int, tuple[str, float, int, int, bool]] = field(default_factory=dict)
    _pools: dict[str, list[int]] = field(default_factory=lambda: {"publish": [], "rpc": []})
    _sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)
    _busy: list[int] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _writes: set[asyncio.Task[None]] = field(default_factory=set)
    _next_id: int = 100

    async def open(self, session: aiohttp.ClientSession, first_index: int) -> None:
        url = self.run.o.url
        kinds = ["publish"] * self.count + ["rpc"] * max(1, self.count // 4)
        for i, kind in enumerate(kinds):
            ws = await _ws_connect(session, url)
            token = self.run.token(first_index + i)
            await ws.send_str(json.dumps({"id": 1, "connect": {"token": token}}))
            reply = json.loads((await ws.receive(timeout=10)).data.split("\n")[0])
            if "error" in reply:
                raise ConnectionError(f"hook client refused: {reply['error']}")
            self._pools[kind].append(len(self._sockets))
            self._sockets.append(ws)
            self._busy.append(0)
            self._readers.append(asyncio.get_running_loop().create_task(self._read(ws)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            for line in message.data.split("\n"):
                line = line.strip()
                if line == "{}":  # the server's heartbeat: answered with one
                    await ws.send_str("{}")
                    continue
                if not line:
                    continue
                reply = json.loads(line)
                pending = self._pending.pop(reply.get("id", 0), None)
                if pending is None:
                    continue
                kind, sent, sent_us, index, queued = pending
                self._busy[index] -= 1
                error = reply.get("error") or {}
                self.answers.append(
                    Answer(
                        kind,
                        sent,
                        now_us() - sent_us,
                        int(error.get("code", 0)),
                        bool(error.get("temporary", False)),
                        queued,
                    )
                )

    def fire(self, kind: str, i: int) -> None:
        pool = self._pools[kind]
        index = pool[i % len(pool)]
        self._next_id += 1
        cid = self._next_id
        if kind == "publish":
            command = {"id": cid, "publish": {"channel": self.channel, "data": {"n": i}}}
        else:
            command = {"id": cid, "rpc": {"method": "bench", "data": {"n": i}}}
        self._pending[cid] = (kind, time.perf_counter(), now_us(), index, self._busy[index] > 0)
        self._busy[index] += 1
        self.sent[kind] += 1
        # send_str only buffers the frame; the task is kept until it is done.
        task = asyncio.get_running_loop().create_task(
            self._sockets[index].send_str(json.dumps(command))
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def traffic(self, stop: asyncio.Event, publish_rate: float, rpc_rate: float) -> None:
        """Open loop until ``stop``: publish at ``publish_rate``, rpc at ``rpc_rate``."""
        start = time.perf_counter()
        fired = {"publish": 0, "rpc": 0}
        rates = {"publish": publish_rate, "rpc": rpc_rate}
        while not stop.is_set():
            elapsed = time.perf_counter() - start
            for kind, rate in rates.items():
                while rate > 0 and fired[kind] < int(elapsed * rate) + 1:
                    self.fire(kind, fired[kind])
                    fired[kind] += 1
            await asyncio.sleep(0.002)

    async def settle(self, within: float) -> None:
        """Until every call has its reply (or ``within`` seconds)."""
        end = time.perf_counter() + within
        # Replies arrive on many sockets; polled, as the other bench waits are.
        while self._pending and time.perf_counter() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        for ws in self._sockets:
            await ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _ws_connect(
    session: aiohttp.ClientSession, url: str, retries: int = 10
) -> aiohttp.ClientWebSocketResponse:
    """The upgrade; refused with 503 (admission control), retried after ``Retry-After``
    with jitter, as an SDK does."""
    for _ in range(retries):
        try:
            return await session.ws_connect(url, autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status != 503:
                raise
            wait = exc.headers.get("Retry-After", "1") if exc.headers else "1"
            await asyncio.sleep(float(wait) * random.uniform(0.5, 1.5))
    return await session.ws_connect(url, autoping=True, max_msg_size=0)


def answers_summary(answers: list[Answer], kind: str) -> dict[str, Any]:
    """Counts and reply times of one kind of call. ``unqueued``: the calls sent on a
    connection with no other call pending (their reply time is the hook's alone);
    ``slow_unqueued_ms``: those of them answered after more than :data:`AT_ONCE_MS`."""
    mine = [a for a in answers if a.kind == kind]
    temporary = [a for a in mine if a.code == TEMPORARY and a.temporary]
    alone = [a for a in mine if not a.queued]
    slow = sorted(a.micros for a in alone if a.micros > AT_ONCE_MS * 1000)
    return {
        "answered": len(mine),
        "ok": sum(1 for a in mine if a.code == 0),
        "temporary_100": len(temporary),
        "other_errors": sum(1 for a in mine if a.code and a not in temporary),
        "answer": _latency(sorted(a.micros for a in mine)),
        "queued": len(mine) - len(alone),
        "unqueued": len(alone),
        "unqueued_answer": _latency(sorted(a.micros for a in alone)),
        "slow_unqueued_ms": [round(us / 1000, 1) for us in slow[:20]],
        "slow_unqueued": len(slow),
    }


# -- the scenario --------------------------------------------------------------------------


@dataclass
class Watch:
    """``/metrics`` read every :data:`POLL_S` while a phase runs; the first time the
    publish hook's breaker shows ``open``: when, and how many latency samples were in."""

    opened_at: float | None = None
    split: int = 0
    backend_at_open: int = 0
    states: set[str] = field(default_factory=set)
    scrapes: int = 0


async def _watch(
    run: Run,
    session: aiohttp.ClientSession,
    backend: BackendControl,
    metrics: str,
    stop: asyncio.Event,
    watch: Watch,
) -> None:
    while not stop.is_set():
        samples = await read_metrics(session, metrics)
        watch.scrapes += 1
        state = breaker_state(samples, "publish")
        if state is not None:
            watch.states.add(state)
        if state == "open" and watch.opened_at is None:
            watch.opened_at = time.perf_counter()
            watch.split = len(run.stats.latencies)
            watch.backend_at_open = await backend.received(HUNG_PATH)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


async def _fanout(
    run: Run, pub: LeanHttpPublisher, channel: str, rate: float, seconds: float
) -> dict[str, Any]:
    """Publish at ``rate`` for ``seconds``, wait for the deliveries; the raw latencies stay
    in ``run.stats.latencies`` (in the order they arrived)."""

    def fire(i: int, scheduled: int) -> None:
        pub.fire(channel, 1, sent_at=scheduled)

    return await measured_phase(
        run, pub, len(run.conns), lambda: _paced(rate, seconds, fire), profile=False
    )


def _pool(parts: list[dict[str, Any]], latencies: list[int], seconds: float) -> dict[str, Any]:
    """One phase over every round: counts summed, latency pooled."""
    return {
        "seconds": round(seconds, 3),
        "publications": sum(p.get("publications", 0) for p in parts),
        "deliveries": sum(p.get("deliveries", 0) for p in parts),
        "expected_deliveries": sum(p.get("expected_deliveries", 0) for p in parts),
        "drained": all(p.get("drained", True) for p in parts),
        "latency": _latency(latencies),
        "round_p99_ms": [(p.get("latency") or {}).get("p99_ms") for p in parts],
    }


def _part(parts: list[dict[str, Any]], latencies: list[int], seconds: float) -> dict[str, Any]:
    """A part of the hang phase: its latency (publications are counted for the whole)."""
    pooled = _pool(parts, latencies, seconds)
    for key in ("publications", "deliveries", "expected_deliveries", "drained"):
        pooled.pop(key)
    return pooled


async def hook_outage(run: Run) -> dict[str, Any]:
    o = run.o
    if not o.backend_url:
        raise ValueError("hook-outage needs --backend-url (the hook backend's http://host:port)")
    channel = run.driver.channel(f"hookfan-{o.run_id}")
    n = o.connections
    await run.connect([[channel]] * n, _sample(o, n, 100))
    subscribers = len(run.conns)
    pub = LeanHttpPublisher(run.driver, o.api_url, o.api_key, o.http_connections or 8)
    await pub.start()
    run.publisher = pub
    rate = o.rate or 20.0
    hook_rate = o.hook_rate
    rpc_rate = hook_rate / 5
    rounds = max(1, o.bursts)
    metrics = _metrics_url(run)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        backend = BackendControl(session, o.backend_url)
        await backend.heal()
        hooks = HookClients(run, o.hook_clients, f"hooked:room-{o.run_id}")
        await hooks.open(session, first_index=n)
        try:
            result = await _rounds(
                run, pub, channel, rate, hooks, backend, session, metrics, rounds
            )
        finally:
            await backend.heal()
            await hooks.close()
    total = pub.total_accepted
    report = run.base_report()
    report.update(
        subscribers=subscribers,
        rate=rate,
        phase_s=o.duration,
        rounds=rounds,
        hook_clients=o.hook_clients,
        hook_publish_rate=hook_rate,
        hook_rpc_rate=rpc_rate,
        publications=total,
        publish_errors=pub.errors,
        publish_error_sample=pub.last_error or None,
        **result,
        **run.correctness(lambda conn: total),
    )
    return report


async def _rounds(
    run: Run,
    pub: LeanHttpPublisher,
    channel: str,
    rate: float,
    hooks: HookClients,
    backend: BackendControl,
    session: aiohttp.ClientSession,
    metrics: str,
    rounds: int,
) -> dict[str, Any]:
    o = run.o
    seconds = o.duration
    names = ("baseline", "hang", "opening", "open")
    phases: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    pooled: dict[str, list[int]] = {name: [] for name in names}
    opened_after: list[float | None] = []
    closed_after: list[float | None] = []
    states_at_end: list[str | None] = []
    hang_answers: list[Answer] = []
    opening_answers: list[Answer] = []
    open_answers: list[Answer] = []
    backend_before_open = backend_after_open = 0
    counters = {"requests": 0, "timeouts": 0, "bulkhead_full": 0, "circuit_open": 0}
    rpc_failures = 0
    unanswered = 0
    scrapes = 0
    for k in range(rounds):
        # -- baseline: healthy backend, no hook traffic ----------------------------------
        run.phase = f"baseline ({k + 1}/{rounds})"
        stop = asyncio.Event()
        watch = Watch()
        watcher = asyncio.get_running_loop().create_task(
            _watch(run, session, backend, metrics, stop, watch)
        )
        calm = await _fanout(run, pub, channel, rate, seconds)
        stop.set()
        await watcher
        scrapes += watch.scrapes
        calm["latency"] = _latency(run.stats.latencies)
        phases["baseline"].append(calm)
        pooled["baseline"].extend(run.stats.latencies)
        # -- hang: /publish never answers, hook clients keep calling ----------------------
        run.phase = f"backend hangs ({k + 1}/{rounds})"
        m0 = await read_metrics(session, metrics)
        received0 = await backend.received(HUNG_PATH)
        first_answer = len(hooks.answers)
        await backend.hang(HUNG_PATH)
        hung_at = time.perf_counter()
        stop, traffic_stop = asyncio.Event(), asyncio.Event()
        watch = Watch()
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(_watch(run, session, backend, metrics, stop, watch))
        traffic = loop.create_task(hooks.traffic(traffic_stop, o.hook_rate, o.hook_rate / 5))
        storm = await _fanout(run, pub, channel, rate, seconds)
        stop.set()
        await watcher
        scrapes += watch.scrapes
        ended_at = time.perf_counter()
        m1 = await read_metrics(session, metrics)
        received1 = await backend.received(HUNG_PATH)
        states_at_end.append(breaker_state(m1, "publish"))
        latencies = run.stats.latencies
        split = watch.split if watch.opened_at is not None else len(latencies)
        opened_at = watch.opened_at
        opened_after.append(None if opened_at is None else round(opened_at - hung_at, 3))
        phases["hang"].append(dict(storm, latency=_latency(latencies)))
        phases["opening"].append(dict(storm, latency=_latency(latencies[:split])))
        phases["open"].append(dict(storm, latency=_latency(latencies[split:])))
        pooled["hang"].extend(latencies)
        pooled["opening"].extend(latencies[:split])
        pooled["open"].extend(latencies[split:])
        if opened_at is not None:
            backend_before_open += watch.backend_at_open - received0
            backend_after_open += received1 - watch.backend_at_open
        else:
            backend_before_open += received1 - received0
        for key, family, reason in (
            ("requests", "requests", ""),
            ("timeouts", "errors", "timeout"),
            ("bulkhead_full", "rejections", "bulkhead_full"),
            ("circuit_open", "rejections", "circuit_open"),
        ):
            after = hook_counter(m1, family, "publish", reason)
            counters[key] += after - hook_counter(m0, family, "publish", reason)
        rpc_failures += hook_counter(m1, "errors", "rpc") - hook_counter(m0, "errors", "rpc")
        rpc_failures += hook_counter(m1, "rejections", "rpc") - hook_counter(
            m0, "rejections", "rpc"
        )
        # -- recovery: the backend answers again; traffic until the breaker closes --------
        run.phase = f"recovery ({k + 1}/{rounds})"
        await backend.heal()
        healed_at = time.perf_counter()
        limit = healed_at + 30.0
        closed: float | None = None
        while time.perf_counter() < limit:
            if breaker_state(await read_metrics(session, metrics), "publish") == "closed":
                closed = time.perf_counter()
                break
            await asyncio.sleep(POLL_S)
        closed_after.append(None if closed is None else round(closed - healed_at, 3))
        traffic_stop.set()
        await traffic
        await hooks.settle(within=3.0)
        unanswered += hooks.unanswered
        round_answers = hooks.answers[first_answer:]
        hang = [a for a in round_answers if hung_at <= a.sent < ended_at]
        hang_answers += hang
        cut = opened_at if opened_at is not None else ended_at
        opening_answers += [a for a in hang if a.sent < cut]
        open_answers += [a for a in hang if a.sent >= cut]
        if closed is None:
            _log("hook-outage: the publish hook's breaker did not close within 30 s of healing")
        await asyncio.sleep(0.3)
    until_open = [seconds if x is None else min(x, seconds) for x in opened_after]
    baseline = _pool(phases["baseline"], pooled["baseline"], seconds * rounds)
    hang_all = _pool(phases["hang"], pooled["hang"], seconds * rounds)
    b99 = (baseline.get("latency") or {}).get("p99_ms")
    b50 = (baseline.get("latency") or {}).get("p50_ms")
    h99 = (hang_all.get("latency") or {}).get("p99_ms")
    h50 = (hang_all.get("latency") or {}).get("p50_ms")
    return {
        "baseline": baseline,
        "hang": hang_all,
        "hang_opening": _part(phases["opening"], pooled["opening"], sum(until_open)),
        "hang_open": _part(phases["open"], pooled["open"], seconds * rounds - sum(until_open)),
        "p99_ratio": round(h99 / b99, 3) if b99 and h99 else None,
        "p50_ratio": round(h50 / b50, 3) if b50 and h50 else None,
        "breaker_opened_after_s": opened_after,
        "breaker_state_end_of_hang": states_at_end,
        "breaker_closed_after_heal_s": closed_after,
        "hook_publish": answers_summary(hang_answers, "publish"),
        "hook_publish_opening": answers_summary(opening_answers, "publish"),
        "hook_publish_open": answers_summary(open_answers, "publish"),
        "hook_rpc": answers_summary(hang_answers, "rpc"),
        "hook_calls_sent": dict(hooks.sent),
        "hook_calls_unanswered": unanswered,
        "rpc_hook_failures_server": rpc_failures,
        "backend_publish_requests_before_open": backend_before_open,
        "backend_publish_requests_after_open": backend_after_open,
        "publish_hook_server": counters,
        "metrics_scrapes": scrapes,
    }


RUNNERS = {"hook-outage": hook_outage}

__all__ = ["RUNNERS", "breaker_state", "hook_counter"]
