"""The resilience scenarios of ``tether-bench run``: Tether under the failures it must absorb.

``slow-consumers``
    N healthy subscribers of one channel, published to at a fixed ``rate``; then K more
    subscribers that stop reading (small ``SO_RCVBUF``, reading paused) join, and the same
    rate runs again. Healthy subscribers' latency and deliveries per second in both phases,
    how many slow clients the server cut off with 3008 (its ``/metrics`` and the close
    frames the slow clients find when they read again), and losses / duplicates / order
    on the healthy ones.
``typing-storm``
    N subscribers of a ``chat:`` channel (critical lane, history) and a ``typing:`` channel
    (ephemeral lane, no history). Chat at ``rate`` alone, then chat at ``rate`` plus typing
    at ``factor`` times that rate from 20 simulated users (``coalesce_key`` per user), in
    ``bursts`` interleaved rounds of each (``duration`` split among them). Chat latency
    of each phase (pooled over its rounds), chat losses / duplicates / order, and typing frames
    delivered vs dropped and coalesced (the server's ``/metrics``).
``reconnect-storm``
    N clients spread over ``channels`` channels with recovery; publications at ``rate``
    throughout. Every client's socket is cut at once; after ``outage`` seconds all of them
    reconnect together (an upgrade refused with 503 is retried after its ``Retry-After``,
    with jitter) and resubscribe with ``recover: true`` and their last position. Time to
    full recovery, upgrades the server admitted (``tether_connects_admitted_total``) and
    refused with 503, the peak of connects completed at the clients over 1 s, the
    server's recovery reads from the broker, recovered true/false, losses and duplicates.
``publish-burst``
    N subscribers of one channel. First the sustainable publish rate (closed loop for
    ``calibrate`` seconds, one publication per request), then ``factor`` times that rate,
    open loop, for ``duration`` seconds. Requests shed with 429, publications accepted,
    latency of the accepted ones, and that every accepted publication reached every
    subscriber exactly once, in order.

Every scenario publishes through :class:`~tether_bench.publisher.LeanHttpPublisher` and
reads the server's counters from ``GET /metrics`` before and after (deltas), so it needs
a Tether target. Correctness fields are exact; timings depend on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tether_bench.publisher import LeanHttpPublisher
from tether_bench.scenarios import Run, _latency, _sample
from tether_bench.wsclient import BenchConnection, Stats, open_many

SLOW_RCVBUF = 4096
"""SO_RCVBUF of a slow client: its kernel takes little before the server must queue."""
TYPING_USERS = 20
CHAT_MARKER = b'"pub":{"data":{"t":'
"""Chat publications carry ``{"t": sent-at, ...}``; typing ones ``{"u": user, ...}``."""
TYPING_MARKER = b'"pub":{"data":{"u":'


# -- helpers ------------------------------------------------------------------------------


def _metrics_url(run: Run) -> str:
    if run.o.metrics_url:
        return run.o.metrics_url
    base = run.o.api_url.rstrip("/")
    if base.endswith("/api"):
        base = base[: -len("/api")]
    return base + "/metrics"


async def scrape(url: str) -> dict[str, float]:
    """The ``tether_*`` samples of a Prometheus text page: ``name{labels}`` -> value."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url) as response,
    ):
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tether_"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> int:
    return round(after.get(name, 0.0) - before.get(name, 0.0))


async def _publisher(run: Run, connections: int) -> LeanHttpPublisher:
    pub = LeanHttpPublisher(run.driver, run.o.api_url, run.o.api_key, connections)
    await pub.start()
    run.publisher = pub
    return pub


async def _paced(rate: float, seconds: float, fire: Callable[[int, int], None]) -> float:
    """Call ``fire(i, scheduled_us)`` for the i-th event at ``rate`` per second for
    ``seconds``, on schedule (open loop: nothing waits for an answer). Returns the
    seconds it took."""
    start = time.perf_counter()
    start_us = time.perf_counter_ns() // 1000
    total = int(rate * seconds)
    fired = 0
    while fired < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while fired < due:
            fire(fired, start_us + int(fired * 1e6 / rate))
            fired += 1
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


async def measured_phase(
    run: Run,
    pub: LeanHttpPublisher,
    subscribers: int,
    publishing: Callable[[], Awaitable[object]],
    *,
    profile: bool = True,
) -> dict[str, Any]:
    """Measure ``publishing()`` (the phase's publishers) until every publication the API
    accepted has reached the ``subscribers``: counts, whether it drained, the server's
    CPU and the client's (the raw latencies stay in ``run.stats.latencies``)."""
    run.stats.latencies.clear()
    before = run.stats.deliveries
    accepted0 = pub.total_accepted
    run.start_measure(profile=profile)
    await publishing()
    await pub.wait_idle()
    accepted = pub.total_accepted - accepted0
    drained = await run.drain(before + accepted * subscribers)
    measure = run.stop_measure()
    deliveries = run.stats.deliveries - before
    return {
        "publications": accepted,
        "deliveries": deliveries,
        "expected_deliveries": accepted * subscribers,
        "drained": drained,
        **run.server_report(measure, deliveries),
        **measure,
    }


async def _steady_phase(
    run: Run,
    pub: LeanHttpPublisher,
    channel: str,
    rate: float,
    subscribers: int,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Publish to ``channel`` at ``rate`` for ``seconds`` (default: ``duration``);
    deliveries, latency (the raw values stay in ``run.stats.latencies``)."""

    def fire(i: int, scheduled: int) -> None:
        pub.fire(channel, 1, sent_at=scheduled)

    duration = run.o.duration if seconds is None else seconds
    phase = await measured_phase(run, pub, subscribers, lambda: _paced(rate, duration, fire))
    return {
        "rate": rate,
        "deliveries_per_s": round(phase["deliveries"] / max(phase["wall_s"], 1e-9)),
        "latency": _latency(run.stats.latencies),
        **phase,
    }


async def _open_slow(
    run: Run, channels: list[str], count: int, stats: Stats, first_index: int
) -> list[BenchConnection]:
    """``count`` subscribers that read nothing once subscribed (reading paused, small
    receive buffer): the server's socket fills, then its queue for them."""
    loop = asyncio.get_running_loop()
    conns: list[BenchConnection] = []
    for i in range(count):
        setup = {"host": f"{run.host}:{run.port}", "token": run.token(first_index + i)}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (run.host, run.port))
        except BaseException:
            sock.close()
            raise

        # Checked, so that the close frame is found when the client reads again.
        def factory(setup: dict[str, Any] = setup) -> BenchConnection:
            return BenchConnection(run.driver, stats, channels, checked=True, setup=setup)

        _, conn = await loop.create_connection(factory, sock=sock)
        await asyncio.wait_for(conn.ready, 10)
        assert conn.transport is not None
        conn.transport.pause_reading()
        conns.append(conn)
    return conns


async def _caught_up(conns: list[BenchConnection], final: dict[str, int], within: float) -> None:
    """Until every checked connection has seen the last accepted offset of its channels
    (or ``within`` seconds)."""
    end = time.perf_counter() + within
    while time.perf_counter() < end:
        behind = any(
            check.last < final.get(channel.decode(), 0)
            for conn in conns
            for channel, check in conn.checks.items()
        )
        if not behind:
            return
        await asyncio.sleep(0.1)


def _peak_per_second(stamps: list[float]) -> int:
    """Most events in any window of one second."""
    stamps = sorted(stamps)
    best = lo = 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] > 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# -- slow-consumers -----------------------------------------------------------------------


async def slow_consumers(run: Run) -> dict[str, Any]:
    o = run.o
    channel = run.driver.channel(f"slow-{o.run_id}")
    n = o.connections
    # A small sample: checking a frame scans its payload, and these payloads are large.
    await run.connect([[channel]] * n, _sample(o, n, 20))
    healthy = len(run.conns)
    pub = await _publisher(run, o.http_connections or 16)
    pub.pad = "x" * (o.payload or 1000)
    rate = o.rate or 200.0
    metrics = _metrics_url(run)
    m0 = await scrape(metrics)
    run.phase = "healthy only"
    without = await _steady_phase(run, pub, channel, rate, healthy)
    run.phase = "with slow clients"
    slow_stats = Stats()
    slow = await _open_slow(run, [channel], o.slow, slow_stats, n)
    m1 = await scrape(metrics)
    with_slow = await _steady_phase(run, pub, channel, rate, healthy)
    m2 = await scrape(metrics)
    # The slow clients read again: each finds what the server sent, then its close frame.
    for conn in slow:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.resume_reading()
    for _ in range(50):  # up to 5 s: polled, the connections have no common event
        if all(c.lost for c in slow):
            break
        await asyncio.sleep(0.1)
    codes = [c.error or "" for c in slow]
    closed_3008 = sum(1 for e in codes if e.startswith("server closed: 3008"))
    for conn in slow:
        conn.close()
    total = pub.total_accepted
    report = run.base_report()
    report.update(
        healthy=healthy,
        slow=o.slow,
        payload_bytes=len(pub.pad),
        rate=rate,
        publications=total,
        publish_errors=pub.errors,
        publish_error_sample=pub.last_error or None,
        without_slow=without,
        with_slow=with_slow,
        slow_disconnects=_delta(m1, m2, "tether_slow_disconnects_total"),
        slow_disconnects_total=_delta(m0, m2, "tether_slow_disconnects_total"),
        slow_closed_3008_seen=closed_3008,
        slow_still_open=sum(1 for c in slow if not c.lost),
        slow_received=slow_stats.deliveries,
        **run.correctness(lambda conn: total),
    )
    return report


# -- typing-storm -------------------------------------------------------------------------


async def typing_storm(run: Run) -> dict[str, Any]:
    o = run.o
    chat = f"chat:room-{o.run_id}"
    typing = f"typing:room-{o.run_id}"
    run.driver.set_markers(CHAT_MARKER, TYPING_MARKER)
    n = o.connections
    await run.connect([[chat, typing]] * n, _sample(o, n, 50))
    subscribers = len(run.conns)
    pub = await _publisher(run, o.http_connections or 32)
    rate = o.rate or 50.0
    typing_rate = rate * o.factor
    metrics = _metrics_url(run)
    typed = {"accepted": 0, "shed": 0, "errors": 0}
    typing_name = typing.encode()

    def typed_answer(status: int, head: bytes, body: bytes) -> None:
        pub._answered()
        key = "accepted" if status == 200 and b'"result"' in body else "errors"
        typed["shed" if status == 429 else key] += 1

    def fire_typing(i: int, scheduled: int) -> None:
        user = i % TYPING_USERS
        body = b'{"channel":"%s","data":{"u":"u%d","s":%d},"coalesce_key":"u%d"}' % (
            typing_name,
            user,
            scheduled,
            user,
        )
        pub.request("publish", body, typed_answer)

    def fire_chat(i: int, scheduled: int) -> None:
        pub.fire(chat, 1, sent_at=scheduled)

    async def storm_phase(seconds: float) -> dict[str, Any]:
        async def publishing() -> None:
            await asyncio.gather(
                _paced(rate, seconds, fire_chat), _paced(typing_rate, seconds, fire_typing)
            )

        return await measured_phase(run, pub, subscribers, publishing)

    # Interleaved rounds (calm, storm, calm, storm...): a disturbance from outside hits
    # both phases alike instead of deciding the comparison.
    rounds = max(1, o.bursts)
    seconds = o.duration / rounds
    phases: dict[str, list[dict[str, Any]]] = {"chat_only": [], "with_typing": []}
    pooled: dict[str, list[int]] = {"chat_only": [], "with_typing": []}
    m0 = await scrape(metrics)
    extra0 = sum(c.extra for c in run.conns)
    for k in range(rounds):
        run.phase = f"chat only ({k + 1}/{rounds})"
        calm = await _steady_phase(run, pub, chat, rate, subscribers, seconds)
        phases["chat_only"].append(calm)
        pooled["chat_only"].extend(run.stats.latencies)
        run.phase = f"chat + typing storm ({k + 1}/{rounds})"
        storm = await storm_phase(seconds)
        storm["latency"] = _latency(run.stats.latencies)
        phases["with_typing"].append(storm)
        pooled["with_typing"].extend(run.stats.latencies)
    await asyncio.sleep(0.5)  # the last typing frames
    m1 = await scrape(metrics)
    typing_delivered = sum(c.extra for c in run.conns) - extra0

    def summary(name: str) -> dict[str, Any]:
        parts = phases[name]
        wall = sum(p["wall_s"] for p in parts)
        cpu = sum(p.get("server_cpu_s", 0.0) for p in parts)
        deliveries = sum(p["deliveries"] for p in parts)
        return {
            "rate": rate,
            "seconds": round(seconds * rounds, 3),
            "publications": sum(p["publications"] for p in parts),
            "deliveries": deliveries,
            "expected_deliveries": sum(p["expected_deliveries"] for p in parts),
            "deliveries_per_s": round(deliveries / max(wall, 1e-9)),
            "drained": all(p["drained"] for p in parts),
            "latency": _latency(pooled[name]),
            "round_p99_ms": [(p.get("latency") or {}).get("p99_ms") for p in parts],
            "server_cpu_percent": round(100 * cpu / max(wall, 1e-9), 1)
            if run.monitor.process is not None
            else None,
        }

    calm_summary, storm_summary = summary("chat_only"), summary("with_typing")
    p99_calm = (calm_summary.get("latency") or {}).get("p99_ms")
    p99_storm = (storm_summary.get("latency") or {}).get("p99_ms")
    total = pub.total_accepted
    typing_expected = typed["accepted"] * subscribers
    report = run.base_report()
    report.update(
        subscribers=subscribers,
        chat_rate=rate,
        typing_rate=typing_rate,
        typing_users=TYPING_USERS,
        rounds=rounds,
        chat_only=calm_summary,
        with_typing=storm_summary,
        chat_p99_ratio=round(p99_storm / p99_calm, 3) if p99_calm and p99_storm else None,
        publications=total,
        publish_errors=pub.errors + typed["errors"],
        publish_error_sample=pub.last_error or None,
        typing_accepted=typed["accepted"],
        typing_shed=typed["shed"],
        typing_expected_frames=typing_expected,
        typing_delivered=typing_delivered,
        typing_dropped=_delta(m0, m1, "tether_ephemeral_dropped_total"),
        typing_coalesced=_delta(m0, m1, "tether_ephemeral_coalesced_total"),
        slow_disconnects=_delta(m0, m1, "tether_slow_disconnects_total"),
        **run.correctness(lambda conn: total),
    )
    return report


# -- reconnect-storm ----------------------------------------------------------------------


async def reconnect_storm(run: Run) -> dict[str, Any]:
    o = run.o
    channels = [run.driver.channel(f"storm{j}-{o.run_id}") for j in range(max(1, o.channels))]
    n = o.connections
    # Every client checks its offsets: a recovering client needs its last position.
    await run.connect([[channels[i % len(channels)]] for i in range(n)], n)
    clients = len(run.conns)
    pub = await _publisher(run, o.http_connections or 16)
    rate = o.rate or 100.0
    metrics = _metrics_url(run)
    stop = asyncio.Event()

    async def publish_until_stopped() -> None:
        start = time.perf_counter()
        start_us = time.perf_counter_ns() // 1000
        fired = 0
        while not stop.is_set():
            due = int((time.perf_counter() - start) * rate) + 1
            while fired < due:
                scheduled = start_us + int(fired * 1e6 / rate)
                pub.fire(channels[fired % len(channels)], 1, sent_at=scheduled)
                fired += 1
            await asyncio.sleep(0.002)

    publishing = asyncio.get_running_loop().create_task(publish_until_stopped())
    try:
        run.phase = "live"
        await asyncio.sleep(2.0)
        m0 = await scrape(metrics)
        old = run.conns
        run.phase = "outage"
        cut_at = time.perf_counter()
        for conn in old:  # every socket at once, as when a network path dies
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(o.outage)
        run.phase = "reconnecting"
        ready_at: list[float] = []
        stats = run.stats
        driver = run.driver

        def factory_for(index: int, was: BenchConnection) -> Callable[[], BenchConnection]:
            epochs: dict[str, str] = was.setup.get("epochs", {})
            position = {
                ch: (was.checks[ch.encode()].last, epochs.get(ch, ""))
                for ch in was.channels
                if ch.encode() in was.checks
            }
            setup = {
                "host": f"{run.host}:{run.port}",
                "token": run.token(index),
                "recover": position,
            }

            def factory() -> BenchConnection:
                conn = BenchConnection(driver, stats, was.channels, checked=True, setup=setup)
                conn.checks = was.checks  # the checks go on across the reconnect
                return conn

            return factory

        def progressed(count: int) -> None:
            ready_at.append(time.perf_counter())

        reconnect_at = time.perf_counter()
        new, errors, refused = await open_many(
            [factory_for(i, was) for i, was in enumerate(old)],
            run.host,
            run.port,
            concurrency=max(o.connect_concurrency, clients),
            on_progress=progressed,
        )
        done_at = time.perf_counter()
        run.phase = "recovered"
        await asyncio.sleep(1.0)  # live delivery after the storm
    finally:
        stop.set()
        await publishing
    await pub.wait_idle()
    run.conns = new
    await _caught_up(new, pub.final, within=15.0)
    m1 = await scrape(metrics)
    recovered = [flag for c in new for flag in c.setup.get("recovered", {}).values()]
    report = run.base_report()
    report.update(
        clients=clients,
        channels=len(channels),
        rate=rate,
        outage_s=o.outage,
        publications=pub.total_accepted,
        publish_errors=pub.errors,
        publish_error_sample=pub.last_error or None,
        reconnected=len(new),
        reconnect_errors=len(errors),
        reconnect_error_sample=errors[:3],
        time_to_full_recovery_s=round(done_at - reconnect_at, 3),
        time_from_cut_s=round(done_at - cut_at, 3),
        peak_connects_per_s=_peak_per_second(ready_at),
        admitted_server=_delta(m0, m1, "tether_connects_admitted_total"),
        refused_503=refused,
        connects_refused_server=_delta(m0, m1, "tether_connects_refused_total"),
        recovery_broker_reads=_delta(m0, m1, "tether_recovery_broker_reads_total"),
        recovered_true=sum(recovered),
        recovered_false=len(recovered) - sum(recovered),
        **run.correctness(lambda conn: 0),
    )
    # Duplicates and reorderings seen before the cut count too.
    report["duplicates"] += sum(c.duplicates for c in old)
    report["order_violations"] += sum(c.order_violations for c in old)
    return report


# -- publish-burst ------------------------------------------------------------------------


async def publish_burst(run: Run) -> dict[str, Any]:
    o = run.o
    channel = run.driver.channel(f"burst-{o.run_id}")
    n = o.connections
    await run.connect([[channel]] * n, _sample(o, n, 50))
    subscribers = len(run.conns)
    pub = await _publisher(run, o.http_connections or 512)
    metrics = _metrics_url(run)
    run.phase = "calibrating"
    before = run.stats.deliveries
    concurrency = o.concurrency
    o.concurrency = 8  # the closed loop: a few requests in flight, as a healthy client
    t0 = time.perf_counter()
    await run.publish_max(channel, o.calibrate, subscribers)
    await run.drain(before + pub.total_accepted * subscribers)
    elapsed = time.perf_counter() - t0
    o.concurrency = concurrency
    sustainable = pub.total_accepted / elapsed
    calibration_accepted = pub.total_accepted
    await asyncio.sleep(0.5)
    m0 = await scrape(metrics)
    rate = o.rate or sustainable * o.factor
    run.phase = "burst"
    run.stats.latencies.clear()
    before = run.stats.deliveries
    shed0, errors0 = pub.shed, pub.errors
    pub.record_acks = True
    run.start_measure()
    fired = 0

    def fire(i: int, scheduled: int) -> None:
        nonlocal fired
        fired += 1
        pub.fire(channel, 1, sent_at=scheduled)

    burst_at = time.perf_counter()
    offered_s = await _paced(rate, o.duration, fire)
    with contextlib.suppress(TimeoutError):
        await pub.wait_idle(60)
    answered_s = time.perf_counter() - burst_at
    accepted = pub.total_accepted - calibration_accepted
    drained = await run.drain(before + accepted * subscribers)
    measure = run.stop_measure()
    m1 = await scrape(metrics)
    total = pub.total_accepted
    final = max(pub.final.values(), default=0)
    acks = sorted(pub.ack_latencies)
    report = run.base_report()
    report.update(
        subscribers=subscribers,
        sustainable_publications_per_s=round(sustainable, 1),
        factor=o.factor,
        burst_rate=round(rate, 1),
        offered=fired,
        offered_per_s=round(fired / max(offered_s, 1e-9), 1),
        burst_s=o.duration,
        answered_s=round(answered_s, 3),
        answered_per_s=round(fired / max(answered_s, 1e-9), 1),
        shed_429=pub.shed - shed0,
        shed_server=_delta(m0, m1, 'tether_publishes_shed_total{lane="standard"}'),
        accepted=accepted,
        accepted_per_s=round(accepted / max(offered_s, 1e-9), 1),
        publish_errors=pub.errors - errors0,
        publish_error_sample=pub.last_error or None,
        client_backlog_peak=pub.backlog_peak,
        http_connections=pub.size,
        publications=total,
        stream_top_offset=final,
        offsets_match_accepted=final == total,
        deliveries=run.stats.deliveries - before,
        expected_deliveries=accepted * subscribers,
        drained=drained,
        latency=_latency(run.stats.latencies),
        ack_latency=_latency(acks),
        client_wait=_latency(sorted(pub.client_waits)),
        **run.correctness(lambda conn: total),
        **run.server_report(measure, run.stats.deliveries - before),
    )
    return report


RUNNERS = {
    "slow-consumers": slow_consumers,
    "typing-storm": typing_storm,
    "reconnect-storm": reconnect_storm,
    "publish-burst": publish_burst,
}

__all__ = ["RUNNERS", "scrape"]
