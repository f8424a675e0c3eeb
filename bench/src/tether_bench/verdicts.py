"""The verdicts of the benchmark pages, computed from the measured figures.

Every sentence of docs/benchmarks.md that judges a result (a target met or missed,
nothing lost, a difference within the noise, a limit reached or not) is made here from
the figures it is about: the same function on other figures says something else. No
I/O: the page writers (:mod:`.compare`, :mod:`.scale`) pass the reports in, and
tests/unit/test_bench_verdicts.py drives each function both ways.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Report = dict[str, Any]
"""One run's report: the JSON object ``tether-bench run --json`` prints, plus its row."""
ByRow = Mapping[tuple[str, str], Report]
"""Reports by (scenario, row)."""

LATENCY_P99_TARGET_MS = 50.0
"""Issue 3's latency target, also the bar a burst's accepted publications are held to."""


def fmt(n: float | None, unit: str = "") -> str:
    """A figure as the pages print it: 2.80M, 482k, 981."""
    if n is None or (isinstance(n, float) and n != n):
        return "-"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M{unit}"
    if abs(n) >= 1e4:
        return f"{n / 1e3:.0f}k{unit}"
    return f"{n:g}{unit}"


LEGACY_COMMANDS = (".venv/bin/tether bench ", "tether bench ", "bench ")
"""How runs recorded before the bench left the product CLI name the load generator."""


def shown_command(recorded: str) -> str:
    """A recorded bench command as it is typed today. Runs recorded before the bench had
    its own distribution say ``tether bench SCENARIO ...``: the same options now go to
    ``tether-bench run SCENARIO ...``."""
    for old in LEGACY_COMMANDS:
        if recorded.startswith(old):
            venv = ".venv/bin/" if old.startswith(".venv/") else ""
            return f"{venv}tether-bench run {recorded[len(old) :]}"
    return recorded


def correctness(r: Mapping[str, Any]) -> str:
    """``losses / duplicates / order violations``, or ``error`` for a failed run."""
    if "error" in r:
        return "error"
    return f"{r.get('losses', 0)} / {r.get('duplicates', 0)} / {r.get('order_violations', 0)}"


def exact(r: Mapping[str, Any]) -> bool:
    """The run finished and lost, duplicated and reordered nothing."""
    return "error" not in r and not (
        r.get("losses") or r.get("duplicates") or r.get("order_violations")
    )


def _met(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


def resilience_verdicts(by: ByRow) -> list[str]:
    out = []
    slow = by.get(("slow-consumers", "tether-resilience"), {})
    if slow and "error" not in slow:
        clean = not (slow["losses"] or slow["duplicates"] or slow["order_violations"])
        out.append(
            f"Slow consumers: every slow client cut off with 3008: "
            f"{_met(slow['slow_disconnects'] == slow['slow'])} ({slow['slow_disconnects']} of "
            f"{slow['slow']}); healthy subscribers lose nothing (loss / dup / order "
            f"{correctness(slow)}): {_met(clean)}."
        )
    typing = by.get(("typing-storm", "tether-resilience"), {})
    if typing and "error" not in typing:
        ratio = typing.get("chat_p99_ratio")
        if ratio is not None:
            off = (ratio - 1) * 100
            runs = typing.get("run_ratios") or [ratio]
            spread = (
                f"; median of {len(runs)} runs: "
                + ", ".join("failed" if x is None else f"{x:.2f}x" for x in runs)
                if len(runs) > 1
                else ""
            )
            out.append(
                f"Typing storm: chat p99 with the storm within 20% of without: "
                f"{_met(ratio <= 1.2)} ({ratio:.2f}x, {off:+.0f}%{spread})."
            )
        clean = not (typing["losses"] or typing["duplicates"] or typing["order_violations"])
        out.append(
            f"Typing storm: chat loss / dup / order zero: {_met(clean)} ({correctness(typing)})."
        )
    for row in ("tether-resilience", "tether-resilience-10k"):
        storm = by.get(("reconnect-storm", row), {})
        if not storm or "error" in storm:
            continue
        reads, channels = storm["recovery_broker_reads"], storm["channels"]
        chans = f"{channels} channel{'s' * (channels > 1)}"
        what = f"Reconnect storm ({storm['clients']:,} clients, {chans})"
        out.append(
            f"{what}: about one broker read per channel for recovery: "
            f"{_met(reads <= 2 * channels)} ({reads} broker read{'s' * (reads != 1)} for "
            f"{chans} and {storm['reconnected']:,} recoveries)."
        )
        clean = not (storm["losses"] or storm["duplicates"] or storm["order_violations"])
        everyone = storm["recovered_false"] == 0 and storm["reconnect_errors"] == 0
        out.append(
            f"{what}: every client back with `recovered: true`, nothing lost or "
            f"duplicated: {_met(clean and everyone)} ({storm['recovered_true']:,} true, "
            f"{storm['recovered_false']} false; loss / dup / order {correctness(storm)})."
        )
    burst = by.get(("publish-burst", "tether-resilience"), {})
    if burst and "error" not in burst:
        clean = not (burst["losses"] or burst["duplicates"] or burst["order_violations"])
        out.append(
            f"Publish burst: every accepted publication delivered to every subscriber exactly "
            f"once, in order: {_met(clean and burst['offsets_match_accepted'])} "
            f"({burst['accepted']:,} accepted, {burst['shed_429']:,} shed with 429)."
        )
    return out


def resilience_notes(by: ByRow, ephemeral_window_s: float) -> list[str]:
    """What the figures say beyond the verdicts (``ephemeral_window_s``: the window of the
    resilience config's typing namespace)."""
    out = []
    slow = by.get(("slow-consumers", "tether-resilience"), {})
    if slow and "error" not in slow:
        calm = (slow["without_slow"].get("latency") or {}).get("p99_ms")
        busy = (slow["with_slow"].get("latency") or {}).get("p99_ms")
        if calm and busy:
            out.append(
                f"Slow consumers: healthy p99 {calm:g} ms without the slow clients, {busy:g} ms "
                f"with them ({busy / calm:.2f}x); no target was set for this ratio."
            )
    typing = by.get(("typing-storm", "tether-resilience"), {})
    if typing and "error" not in typing:
        calm = typing["chat_only"].get("round_p99_ms") or []
        storm = typing["with_typing"].get("round_p99_ms") or []
        ratios = [b / a for a, b in zip(calm, storm, strict=False) if a and b]
        if len(ratios) > 1:
            out.append(typing_rounds_note(ratios))
        out.append(typing_frames_note(typing, ephemeral_window_s))
    burst = by.get(("publish-burst", "tether-resilience"), {})
    if burst and "error" not in burst:
        out.append(publish_burst_note(burst))
    return out


def verdicts(by: ByRow) -> list[str]:
    out = []
    ceil = by.get(("fanout", "ceiling"), {})
    teth = by.get(("fanout", "tether"), {})
    if ceil.get("deliveries_per_s") and teth.get("deliveries_per_s"):
        ratio = teth["deliveries_per_s"] / ceil["deliveries_per_s"]
        cpu_ratio = (teth.get("deliveries_per_server_cpu_s") or 0) / max(
            ceil.get("deliveries_per_server_cpu_s") or 1, 1
        )
        out.append(
            f"Fan-out >= 0.7x the raw ceiling: **{'met' if ratio >= 0.7 else 'MISSED'}** "
            f"({ratio:.2f}x by deliveries/s; {cpu_ratio:.2f}x per server CPU-second)."
        )
        peers = [
            p
            for p in ("websockets", "python-socketio", "node-socketio")
            if by.get(("fanout", p), {}).get("deliveries_per_s")
        ]
        worst = (
            min(
                (teth["deliveries_per_s"] / by[("fanout", p)]["deliveries_per_s"], p) for p in peers
            )
            if peers
            else None
        )
        if worst:
            out.append(
                f"Fan-out >= 3x every peer: **{'met' if worst[0] >= 3 else 'MISSED'}** "
                f"(closest peer: {worst[1]}, Tether is {worst[0]:.1f}x)."
            )
    idle = by.get(("idle", "tether"), {})
    if idle.get("rss_per_connection_kib") is not None:
        k = idle["rss_per_connection_kib"]
        out.append(
            f"Idle <= 6 KiB server RSS per connection (10,000 x 2 channels): "
            f"**{'met' if k <= 6 else 'MISSED'}** ({k} KiB)."
        )
    lat = by.get(("latency", "tether"), {}).get("latency") or {}
    if lat:
        out.append(
            f"Latency p99 < 50 ms at half of max throughput: "
            f"**{'met' if lat['p99_ms'] < 50 else 'MISSED'}** (p99 {lat['p99_ms']} ms"
            + (
                ", the median of "
                + ", ".join(
                    "failed" if v is None else f"{v:g}"
                    for v in by[("latency", "tether")]["run_p99_ms"]
                )
                + " ms"
                if by[("latency", "tether")].get("run_p99_ms")
                else ""
            )
            + ")."
        )
    bad = [
        (r["scenario"], r["row"])
        for r in by.values()
        if r["row"].startswith("tether")
        and (r.get("losses") or r.get("duplicates") or r.get("order_violations"))
    ]
    if any(r["row"].startswith("tether") for r in by.values()):
        out.append(
            "Zero losses / duplicates / order violations (Tether, every scenario): "
            + ("**met**" if not bad else f"**MISSED** in {bad}")
        )
    return out


ROUND_SPREAD = 0.2
"""Round-to-round spread of the typing storm's p99 ratio (max - min) taken as unsteady."""


def typing_rounds_note(ratios: Sequence[float]) -> str:
    """The storm's chat p99 over the calm round's before it, round by round."""
    spread = max(ratios) - min(ratios)
    head = (
        f"Typing storm: round by round (median run), the storm's chat p99 was "
        f"{min(ratios):.2f}x to {max(ratios):.2f}x the calm round's before it"
    )
    if spread > ROUND_SPREAD:
        return (
            f"{head}: the ratio moved by {spread:.2f} from round to round, which is why the "
            "goal is judged on the median of several runs."
        )
    return f"{head}: the rounds agree within {spread:.2f}."


def typing_frames_note(typing: Mapping[str, Any], ephemeral_window_s: float) -> str:
    """What became of the typing frames, and why (each user's pace against the window)."""
    pace_ms = 1000 * typing["typing_users"] / typing["typing_rate"]
    window_ms = 1000 * ephemeral_window_s
    pace = (
        f"each simulated user types every {pace_ms:g} ms, "
        + ("longer than" if pace_ms > window_ms else "within")
        + f" the {window_ms:g} ms ephemeral window"
    )
    coalesced, dropped = typing["typing_coalesced"], typing["typing_dropped"]
    if not (coalesced or dropped):
        return (
            f"Typing storm: no typing frame was coalesced or dropped ({pace}); coalescing "
            "within a window and in a full socket's queue, and dropping, are guarded by the "
            "unit tests in docs/explanation/resilience.md section 3."
        )
    return (
        f"Typing storm: {_plural(coalesced, 'typing frame')} coalesced and {dropped:,} dropped "
        f"({pace}; slow disconnects {typing.get('slow_disconnects', 0)})."
    )


ANSWERED_SHARE = 0.9
"""A burst whose requests were answered below this share of the offered rate queued."""


def publish_burst_note(burst: Mapping[str, Any]) -> str:
    """What shedding with 429 did for the accepted publications during a burst."""
    share = burst["accepted_per_s"] / max(burst["sustainable_publications_per_s"], 1e-9)
    p99 = (burst.get("latency") or {}).get("p99_ms")
    wait = (burst.get("client_wait") or {}).get("p99_ms")
    lost = (
        "and lost nothing"
        if exact(burst) and burst.get("offsets_match_accepted")
        else f"and lost, duplicated or reordered some (loss / dup / order {correctness(burst)})"
    )
    text = (
        f"Publish burst: the server accepted {burst['accepted_per_s']:,.0f} publications/s "
        f"during the burst ({share:.2f}x the sustainable rate, which the closed loop "
        "measures with only 8 requests in flight and at most 0.1 s of deliveries "
        f"outstanding) {lost}. "
    )
    if p99 is None:
        text += "No delivery latency was measured. "
    elif p99 < LATENCY_P99_TARGET_MS:
        text += (
            f"Shedding kept accepted publications fast: p99 {p99:g} ms from the scheduled "
            f"send, under the {LATENCY_P99_TARGET_MS:g} ms latency target. "
        )
    else:
        text += (
            "Shedding did not keep accepted publications fast: p99 "
            f"{p99:g} ms from the scheduled send (target {LATENCY_P99_TARGET_MS:g} ms)"
            + (
                f", of which up to {wait:g} ms waiting in the API client for a free socket"
                if wait is not None
                else ""
            )
            + ". "
        )
    answered, offered = burst["answered_per_s"], burst["offered_per_s"]
    text += (
        f"The server answered {answered:,.0f} requests/s in all (429s included) against "
        f"{offered:,.0f}/s offered, at {burst.get('server_cpu_percent')}% CPU"
    )
    if answered < ANSWERED_SHARE * offered:
        return text + (
            ": requests queued before the lane limit could refuse them (a 429 is cheap but "
            "not free: the request is still read and parsed)."
        )
    return text + ": the server kept up with the requests offered."


def batch_cost_note(batched: Mapping[str, Any], single: Mapping[str, Any]) -> str:
    """One publication per API call against ten, per server CPU-second (fan-out rows)."""
    many = batched.get("deliveries_per_server_cpu_s")
    one = single.get("deliveries_per_server_cpu_s")
    head = (
        "Latency is measured with one publication per API call, so a publication's frame "
        "goes out as one `write` per subscriber"
    )
    if not (many and one):
        return head + "."
    factor = many / one
    if factor > 1:
        return (
            f"{head}: in this run that shape cost {factor:.1f}x the server CPU per delivery "
            "of the batched fan-out above (the two Tether fan-out rows)."
        )
    return (
        f"{head}: in this run that shape cost no more server CPU per delivery than the "
        f"batched fan-out above ({1 / factor:.2f}x its deliveries per CPU-second)."
    )


def ceiling_note(tether: Mapping[str, Any], ceiling: Mapping[str, Any]) -> str:
    """Where Tether's fan-out landed against the raw ceiling, per second and per CPU-second."""
    t, c = tether.get("deliveries_per_s"), ceiling.get("deliveries_per_s")
    if not (t and c):
        return "In this run there is no Tether and ceiling pair to compare."
    tc, cc = tether.get("deliveries_per_server_cpu_s"), ceiling.get("deliveries_per_server_cpu_s")
    per_cpu = f", {tc / cc:.2f}x per server CPU-second" if tc and cc else ""
    side = "above" if t > c else "below"
    return f"In this run Tether came out {side} the ceiling: {t / c:.2f}x by deliveries/s{per_cpu}."


# -- the scale-out section (make bench-scale) ------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return max(min(a), min(b)) <= min(max(a), max(b))


def _counts(ns: Sequence[int]) -> str:
    names = [str(n) for n in ns]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"{joined} worker{'s' * (len(ns) > 1 or ns[0] != 1)}"


def workers_fanout_verdict(runs: Mapping[int, Sequence[float]]) -> str:
    """Did the number of worker processes change fan-out throughput? ``runs``: deliveries/s
    of each run, by worker count. The range of single runs is the noise: a worker count
    differs from the best only when its runs and the best one's do not overlap."""
    present = {n: list(v) for n, v in sorted(runs.items()) if v}
    if len(present) < 2:
        return "**Too few worker counts measured to compare.**"
    if min(len(v) for v in present.values()) < 2:
        return "**Too few runs per worker count to tell the counts apart (no noise measured).**"
    best = max(present, key=lambda n: _median(present[n]))
    tied = [n for n in present if _overlap(present[n], present[best])]
    slower = [n for n in present if n not in tied]
    if not slower:
        return "**The number of workers does not change fan-out throughput measurably here.**"
    verb = "is" if len(slower) == 1 and slower[0] == 1 else "are"
    return (
        f"**Fan-out throughput is highest with {_counts(tied)} here; "
        f"{_counts(slower)} {verb} slower beyond the noise.**"
    )


def workers_noise_clause(runs: Mapping[int, Sequence[float]]) -> str:
    """The single runs' range, and whether it covers the differences between medians."""
    present = [list(v) for v in runs.values() if v]
    if not present:
        return "no single runs"
    every = [x for v in present for x in v]
    if min(len(v) for v in present) < 2:
        return f"single runs ranged {fmt(min(every))} to {fmt(max(every))}/s"
    overlap = all(_overlap(a, b) for a in present for b in present)
    return f"single runs ranged {fmt(min(every))} to {fmt(max(every))}/s, " + (
        "so the differences are within the noise"
        if overlap
        else "and not every worker count's runs overlap with the others'"
    )


REDIS_IDLE_SHARE = 0.1
"""Redis's CPU under this share of the workers' is called nearly idle."""


def redis_share_clause(redis_cpu_s: float | None, workers_cpu_s: float | None) -> str:
    if redis_cpu_s is None or not workers_cpu_s:
        return "Redis's CPU was not measured"
    share = redis_cpu_s / workers_cpu_s
    verdict = "nearly idle" if share < REDIS_IDLE_SHARE else "a real share of the work"
    return (
        f"Redis itself is {verdict} ({redis_cpu_s:g} CPU-s against {workers_cpu_s:g} for "
        f"the workers, medians; see *Redis CPU-s*)"
    )


def rooms_workers_finding(rooms: Mapping[int, Mapping[str, Any]]) -> str:
    """Rooms at a fixed rate for each worker count: delivered in full, at what cost."""
    ok = [
        n
        for n, r in rooms.items()
        if exact(r) and r.get("deliveries") == r.get("expected_deliveries")
    ]
    short = sorted(set(rooms) - set(ok))
    expected = _rooms_expected_per_s(rooms)
    if short:
        delivered = "not every setup delivered everything: " + ", ".join(
            f"{n} ({rooms[n].get('deliveries')} of {rooms[n].get('expected_deliveries')}, "
            f"loss / dup / order {correctness(rooms[n])})"
            for n in short
        )
    else:
        delivered = (
            f"every setup delivers the {expected:,.0f}/s expected without loss"
            if expected
            else "every setup delivers everything without loss"
        )
    cpu = ", ".join(f"{rooms[n].get('server_cpu_percent')}% ({n})" for n in (1, 2, 3) if n in rooms)
    p99s = [(r.get("latency") or {}).get("p99_ms") for r in rooms.values()]
    lat = [p for p in p99s if p is not None]
    late = sum(r.get("publisher_late") or 0 for r in rooms.values())
    rate = next(iter(rooms.values())).get("rate") or 0
    text = f"- At a fixed {rate:,.0f} publications/s (rooms) {delivered}"
    if cpu:
        text += (
            f"; over Redis it costs {cpu} of a core against "
            f"{rooms.get(0, {}).get('server_cpu_percent')}% on the memory broker"
        )
    if lat:
        text += f"; p99 latency {min(lat):g} to {max(lat):g} ms"
    if late:
        text += (
            f", and the publisher was late for {late:,} publications (the API path "
            "saturated before delivery)"
        )
    else:
        text += ", and the publisher was never late"
    return text + "."


def _rooms_expected_per_s(rooms: Mapping[int, Mapping[str, Any]]) -> float | None:
    """Deliveries/s the rate asks for: publications/s x deliveries per publication."""
    r = next(iter(rooms.values()))
    rate, pubs, expected = r.get("rate"), r.get("publications"), r.get("expected_deliveries")
    return float(rate) * expected / pubs if rate and pubs and expected else None


def node_crash_finding(s: Mapping[str, Any]) -> str:
    """A node killed under its clients: were they all back, recovered, with nothing lost?"""
    victims, back = s.get("victim_clients"), s.get("resubscribed")
    recovered, recoveries = s.get("recovered_true"), s.get("recoveries")
    refused = (s.get("refused_503_after_kill") or 0) + (s.get("connect_errors_after_kill") or 0)
    whole = back == victims and recovered == recoveries and not refused and exact(s)
    head = (
        f"- **A node crash costs about {s.get('all_resubscribed_s')} s**: "
        if whole
        else "- **A node crash was not absorbed cleanly**: "
    )
    return head + (
        f"{back} of the {victims} clients of the killed node resubscribed on the other two "
        f"within {s.get('all_resubscribed_s')} s of the SIGKILL (p50 "
        f"{s.get('resubscribed_p50_s')} s), {recovered} of {recoveries} subscriptions with "
        f"`recovered: true`, {refused} connect(s) refused or failed, loss / dup / order "
        f"{correctness(s)}; {s.get('publish_attempts_failed')} publish attempt(s) failed on "
        f"the dead node and were retried with the same idempotency key, stored twice: "
        f"{s.get('stored_twice')}."
    )


def caught_up_sentence(s: Mapping[str, Any]) -> str:
    """After the crash: did every client end with every accepted publication?"""
    behind = s.get("clients_behind_at_end")
    head = (
        "Every client then had every accepted publication of both its channels"
        if behind == 0
        else f"{behind} client(s) still lacked accepted publications at the end"
    )
    return (
        f"{head} ({behind} behind at the end, {s.get('catch_up_after_last_publish_s')} s "
        "after the last publish)"
    )


def client_storm_finding(c: Mapping[str, Any], admission_per_node: int = 2000) -> str:
    """Every client cut at once through the balancer: all back and recovered?"""
    clients, back = c.get("clients"), c.get("reconnected")
    whole = back == clients and not c.get("recovered_false") and exact(c)
    refused = c.get("refused_503") or 0
    head = (
        f"- Cutting all {clients} clients at once: all back and recovered "
        if whole
        else f"- Cutting all {clients} clients at once: {back} back, "
        f"{c.get('recovered_false')} not recovered, "
    )
    text = head + (
        f"{c.get('time_to_full_recovery_s')} s after they started reconnecting, "
        f"{refused} refused, loss / dup / order {correctness(c)}."
    )
    if refused:
        return text + (
            f" {refused:,} upgrades were refused with 503 and retried: the storm reached the "
            f"admission limit ({admission_per_node:,} connects/s per node)."
        )
    return text + (
        f" No upgrade was refused: at {clients} clients over three nodes the admission limit "
        f"({admission_per_node:,} connects/s per node) was not reached, so this storm does "
        "not exercise the 503 path."
    )


def cluster_rooms_finding(runs: Mapping[float, Mapping[str, Any]]) -> str:
    """Rooms through HAProxy at each rate: latency, lateness, losses."""
    parts = []
    for rate, r in sorted(runs.items()):
        p99 = (r.get("latency") or {}).get("p99_ms")
        late = r.get("publisher_late") or 0
        parts.append(
            f"at {rate:,.0f} publications/s p99 {p99} ms"
            + (f" with {late:,} publications sent late" if late else ", none sent late")
        )
    text = "- Rooms through HAProxy: " + "; ".join(parts)
    if any(r.get("publisher_late") for r in runs.values()):
        text += (
            ": where publications went out late the one-publication-per-request API path "
            "through the balancer was saturated (three node processes, HAProxy, Redis and "
            "the bench share the machine's cores)"
        )
    lossless = all(exact(r) for r in runs.values())
    return text + (
        ". Nothing was lost in any."
        if lossless
        else ". Loss / dup / order: "
        + ", ".join(f"{rate:,.0f}/s {correctness(r)}" for rate, r in sorted(runs.items()))
        + "."
    )


FIFTY_K = 50_000
HUNDRED_K = 100_000
"""Issue 3's goal (50,000 connections) and issue 11's (100,000), on this 2-core machine."""


def connections_verdict(f: Mapping[str, Any], goal: int) -> str:
    """``goal`` connections held: all asked for (at least ``goal``) set up, all alive at the
    end, every publication delivered, no loss, duplicate or order violation, no bench error,
    and offsets checked on every connection."""
    asked = f.get("connections") or 0
    ok = (
        asked >= goal
        and f.get("connected") == asked
        and f.get("alive_at_end") == asked
        and f.get("checked_connections") == asked
        and f.get("deliveries") == f.get("expected_deliveries")
        and (f.get("expected_deliveries") or 0) > 0
        and exact(f)
        and not f.get("errors")
    )
    return f"**{goal:,} connections: {'met' if ok else 'MISSED'}.**"


def fifty_verdict(f: Mapping[str, Any]) -> str:
    """Issue 3's 50,000 connections: all set up, all alive, everything delivered, exactly."""
    return connections_verdict(f, FIFTY_K)


def hundred_verdict(f: Mapping[str, Any]) -> str:
    """Issue 11's 100,000 connections, on the same terms."""
    return connections_verdict(f, HUNDRED_K)


def fifty_delivered_clause(f: Mapping[str, Any]) -> str:
    delivered = (
        "every publication delivered"
        if f.get("deliveries") == f.get("expected_deliveries") and exact(f)
        else "not every publication delivered exactly once"
    )
    return (
        f"{delivered} ({f.get('deliveries'):,} of {f.get('expected_deliveries'):,}, offsets "
        f"checked on all {f.get('checked_connections'):,} connections, loss / dup / order "
        f"{correctness(f)})"
    )


# -- issue 11: the fair ceiling, connect cost, the Redis path ------------------------------

FANOUT_CEILING_GOAL = 0.7
"""Tether's fan-out against the per-tick ceiling (deliveries/s and per server CPU-s)."""
CONNECT_GOALS = {"tether": 10_000, "tether-redis": 5_000}
"""Connects per server CPU-second (upgrade + JWT connect + two recovering subscribes)."""
REDIS_PATH_GOAL = 0.6
"""Redis-path deliveries per server CPU-s as a share of the memory broker's."""


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def issue11_figures(by: ByRow) -> dict[str, float | None]:
    """The figures issue 11's goals are about, from one run's reports."""
    ceil = by.get(("fanout", "ceiling"), {})
    teth = by.get(("fanout", "tether"), {})
    redis = by.get(("fanout", "tether-redis"), {})
    return {
        "fanout_x_ceiling": _ratio(teth.get("deliveries_per_s"), ceil.get("deliveries_per_s")),
        "fanout_x_ceiling_cpu": _ratio(
            teth.get("deliveries_per_server_cpu_s"), ceil.get("deliveries_per_server_cpu_s")
        ),
        "tether_per_cpu_s": teth.get("deliveries_per_server_cpu_s"),
        "redis_per_cpu_s": redis.get("deliveries_per_server_cpu_s"),
        "redis_x_memory_cpu": _ratio(
            redis.get("deliveries_per_server_cpu_s"), teth.get("deliveries_per_server_cpu_s")
        ),
        "connects_memory": by.get(("connect-cost", "tether"), {}).get("connects_per_server_cpu_s"),
        "connects_redis": by.get(("connect-cost", "tether-redis"), {}).get(
            "connects_per_server_cpu_s"
        ),
    }


def issue11_verdicts(by: ByRow) -> list[str]:
    """Issue 11's goals, met or missed, from the figures of this run."""
    f = issue11_figures(by)
    out = []

    def judged(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if f["fanout_x_ceiling"] is not None and f["fanout_x_ceiling_cpu"] is not None:
        ok = min(f["fanout_x_ceiling"], f["fanout_x_ceiling_cpu"]) >= FANOUT_CEILING_GOAL
        out.append(
            f"Fan-out >= {FANOUT_CEILING_GOAL}x the per-tick ceiling (deliveries/s and per "
            f"server CPU-s): **{judged(ok)}** ({f['fanout_x_ceiling']:.2f}x by deliveries/s, "
            f"{f['fanout_x_ceiling_cpu']:.2f}x per server CPU-second)."
        )
    old = issue11_figures(old_harness(by))
    if by.get(("fanout", "tether@old")) and old["fanout_x_ceiling"] is not None:
        cpu = old["fanout_x_ceiling_cpu"]
        out.append(
            "The same ratios with the harness of the before figures (the `@old` rows: 0.1 s "
            f"lag, 4 requests in flight): {old['fanout_x_ceiling']:.2f}x by deliveries/s, "
            + (f"{cpu:.2f}x per server CPU-second." if cpu is not None else "- per CPU-s.")
        )
    for row, label in (("tether", "memory broker"), ("tether-redis", "Redis")):
        got = f["connects_memory" if row == "tether" else "connects_redis"]
        if got is not None:
            goal = CONNECT_GOALS[row]
            out.append(
                f"Connects per server CPU-second on the {label} >= {goal:,}: "
                f"**{judged(got >= goal)}** ({got:,.0f}, {1e6 / got:.0f} µs each)."
            )
    if f["redis_x_memory_cpu"] is not None:
        x = f["redis_x_memory_cpu"]
        out.append(
            f"Redis-path deliveries per server CPU-s >= {REDIS_PATH_GOAL}x the memory "
            f"broker's: **{judged(x >= REDIS_PATH_GOAL)}** ({x:.2f}x: "
            f"{fmt(f['redis_per_cpu_s'])} against {fmt(f['tether_per_cpu_s'])})."
        )
    return out


ENCODING_GOAL = 0.9
"""Issue 10: fan-out with Protobuf, and with half JSON half Protobuf, within 10% of JSON."""


def _runs_median(r: Mapping[str, Any], runs: str, single: str) -> float | None:
    values = [v for v in r.get(runs) or () if v is not None]
    if not values:
        values = [r[single]] if r.get(single) is not None else []
    return _median(values) if values else None


DELTA_GOAL = 5.0
"""Issue 10: delta compression sends at least 5x fewer bytes for a document updated in
small parts."""


def delta_verdicts(delta: Mapping[str, Any] | None) -> list[str]:
    """Issue 10's delta goal from a ``tether_bench.deltabytes`` result (None: not run)."""
    if not delta:
        return []
    out = []
    for encoding, label in (("json", "JSON"), ("protobuf", "Protobuf")):
        full, patched = delta["bytes"][encoding], delta["bytes"][f"{encoding}_delta"]
        x = full / patched if patched else 0.0
        out.append(
            f"Delta compression, {label}: at least {DELTA_GOAL:g}x fewer bytes: "
            f"**{'met' if x >= DELTA_GOAL else 'MISSED'}** ({x:.1f}x: {full:,} bytes "
            f"without, {patched:,} with, {delta['updates']} updates of a "
            f"{delta['document_bytes']:,}-byte document)."
        )
    return out


def encoding_verdicts(by: ByRow) -> list[str]:
    """Issue 10's fan-out goal: each encoding row against Tether's JSON row of the same
    session, by the median of their interleaved runs' deliveries/s (and per server CPU-s,
    shown beside it)."""
    json_row = by.get(("fanout", "tether"), {})
    base = _runs_median(json_row, "run_deliveries_per_s", "deliveries_per_s")
    base_cpu = _runs_median(json_row, "run_per_cpu_s", "deliveries_per_server_cpu_s")
    out = []
    for row, label in (
        ("tether-protobuf", "Protobuf"),
        ("tether-mixed", "half JSON, half Protobuf"),
    ):
        r = by.get(("fanout", row), {})
        got = _runs_median(r, "run_deliveries_per_s", "deliveries_per_s")
        if not got or not base:
            continue
        x = got / base
        cpu = _ratio(_runs_median(r, "run_per_cpu_s", "deliveries_per_server_cpu_s"), base_cpu)
        runs = len(r.get("run_deliveries_per_s") or [got])
        out.append(
            f"Fan-out with {label} subscribers within 10% of JSON deliveries/s: "
            f"**{'met' if x >= ENCODING_GOAL else 'MISSED'}** ({x:.2f}x: {fmt(got)} against "
            f"{fmt(base)}, "
            + (f"medians of {_plural(runs, 'run')}" if runs > 1 else "one run each")
            + (f"; {cpu:.2f}x per server CPU-s" if cpu is not None else "")
            + ")."
        )
    return out


def old_harness(by: ByRow) -> ByRow:
    """``by`` with the fan-out rows measured again with the harness of the before figures
    (rows ``NAME@old``) in the places of ``NAME``: what compares with those figures."""
    out = dict(by)
    for (scenario, row), r in by.items():
        if scenario == "fanout" and row.endswith("@old"):
            out[scenario, row.removesuffix("@old")] = r
    return out


def before_after_rows(before: Sequence[Report], after: ByRow) -> list[tuple[str, str, str]]:
    """(figure, before, after) for issue 11's figures: ``before`` is the raw reports of the
    runs measured on main before the work (medians of their repeated runs); the after
    fan-out figures are those of the same harness (:func:`old_harness`) when measured."""
    grouped: dict[tuple[str, str], list[Report]] = {}
    for r in before:
        if "error" not in r:
            grouped.setdefault((r["scenario"], r["row"]), []).append(r)

    def med(key: tuple[str, str], field: str) -> float | None:
        values = [v for r in grouped.get(key, []) if (v := r.get(field)) is not None]
        return statistics.median(values) if values else None

    b: dict[tuple[str, str], Report] = {
        key: {
            "deliveries_per_s": med(key, "deliveries_per_s"),
            "deliveries_per_server_cpu_s": med(key, "deliveries_per_server_cpu_s"),
            "connects_per_server_cpu_s": med(key, "connects_per_server_cpu_s"),
        }
        for key in grouped
    }
    fb, fa = issue11_figures(b), issue11_figures(old_harness(after))
    storm = ("reconnect-storm", "tether-resilience-10k")
    fb["storm_s"] = med(storm, "time_to_full_recovery_s")
    fa["storm_s"] = after.get(storm, {}).get("time_to_full_recovery_s")
    names = [
        ("fanout_x_ceiling", "Tether ÷ per-tick ceiling, deliveries/s", "x"),
        ("fanout_x_ceiling_cpu", "Tether ÷ per-tick ceiling, per server CPU-s", "x"),
        ("tether_per_cpu_s", "Tether (memory) deliveries per server CPU-s", ""),
        ("redis_per_cpu_s", "Tether over Redis, deliveries per server CPU-s", ""),
        ("redis_x_memory_cpu", "Redis ÷ memory, per server CPU-s", "x"),
        ("connects_memory", "connects per server CPU-s, memory", ""),
        ("connects_redis", "connects per server CPU-s, Redis", ""),
        ("storm_s", "10,000-client reconnect storm: time to full recovery", "s"),
    ]

    def show(v: float | None, unit: str) -> str:
        if v is None:
            return "-"
        if unit == "s":
            return f"{v:.2f} s"
        return f"{v:.2f}x" if unit == "x" else fmt(round(v))

    return [(label, show(fb[key], unit), show(fa[key], unit)) for key, label, unit in names]


OPEN_SLACK_S = 0.25
"""hook-outage: beyond the configured window, what the breaker may take to show ``open``
in ``/metrics`` (read every 50 ms) on a shared machine."""
FANOUT_UNCHANGED = 1.2
"""hook-outage: fan-out p99 during the hang within 20% of the baseline's is "unchanged"
(the typing storm's bar), as is a p99 within the range of the baseline's own rounds."""


def breaker_window_s(r: Mapping[str, Any]) -> float | None:
    """When the publish hook's breaker should be open after the backend starts hanging:
    the first ``breaker_failures`` calls are sent within ``breaker_failures / rate``
    seconds and each fails ``timeout`` seconds after it was sent (None: the run did not
    record the proxy's limits)."""
    proxy = r.get("proxy") or {}
    rate = r.get("hook_publish_rate") or 0
    if not proxy or not rate:
        return None
    return float(proxy["timeout"]) + float(proxy["breaker_failures"]) / float(rate) + OPEN_SLACK_S


def fanout_unchanged(r: Mapping[str, Any]) -> tuple[bool, str]:
    """Is fan-out p99 during the hang the baseline's? (ok, why)"""
    base = r["baseline"].get("latency") or {}
    hang = r["hang"].get("latency") or {}
    if not base or not hang:
        return False, "no latency samples"
    ratio = hang["p99_ms"] / base["p99_ms"]
    rounds = [v for v in r["baseline"].get("round_p99_ms", []) if v is not None]
    if ratio <= FANOUT_UNCHANGED:
        return True, f"{ratio:.2f}x the baseline's p99, within {FANOUT_UNCHANGED:g}x"
    if rounds and len(rounds) > 1 and hang["p99_ms"] <= max(rounds):
        return True, (
            f"{ratio:.2f}x the pooled baseline p99, but within the baseline rounds' own range "
            f"({min(rounds):g} to {max(rounds):g} ms)"
        )
    return False, f"{ratio:.2f}x the baseline's p99, beyond {FANOUT_UNCHANGED:g}x"


def hook_outage_verdicts(r: Mapping[str, Any]) -> list[str]:
    """Issue 14's must-show for a hanging backend, judged on one hook-outage run."""
    if not r or "error" in r:
        return []
    out = []
    window = breaker_window_s(r)
    opened = r["breaker_opened_after_s"]
    shown = ", ".join("never" if x is None else f"{x:g} s" for x in opened)
    if window is None:
        out.append(f"Breaker opened after {shown} (the proxy's limits were not recorded).")
    else:
        ok = all(x is not None and x <= window for x in opened)
        proxy = r["proxy"]
        out.append(
            f"The publish hook's breaker opens within the configured window: {_met(ok)} "
            f"(opened {shown} after the backend began to hang; window {window:.2f} s = "
            f"timeout {proxy['timeout']:g} s + {proxy['breaker_failures']} failures at "
            f"{r['hook_publish_rate']:g} calls/s + {OPEN_SLACK_S:g} s)."
        )
    pub = r["hook_publish_open"]
    probes = r["backend_publish_requests_after_open"]
    clean = pub["other_errors"] == 0 and r["hook_calls_unanswered"] == 0
    refused = pub["temporary_100"]
    slow = pub["slow_unqueued"]
    out.append(
        "While it was open, clients got error 100 (temporary) at once: "
        f"{_met(clean and refused > 0 and slow <= probes)} ({refused:,} of "
        f"{pub['answered']:,} calls answered 100; of the {pub['unqueued']:,} sent on a "
        f"connection with no call pending, {slow} took over 100 ms; {probes} "
        f"request{'s' * (probes != 1)} reached the backend while it was open: the "
        "breaker's probes, each waiting out the timeout)."
    )
    rpc = r["hook_rpc"]
    rpc_ok = (
        rpc["answered"] > 0 and rpc["ok"] == rpc["answered"] and not r["rpc_hook_failures_server"]
    )
    out.append(
        f"Another hook (rpc) kept working: {_met(rpc_ok)} ({rpc['ok']:,} of "
        f"{rpc['answered']:,} RPCs during the hang answered with their result; p99 "
        f"{(rpc.get('answer') or {}).get('p99_ms', '-')} ms)."
    )
    ok, why = fanout_unchanged(r)
    out.append(
        f"Plain fan-out latency unchanged during the hang: {_met(ok and exact(r))} "
        f"(p99 {(r['hang'].get('latency') or {}).get('p99_ms', '-')} ms vs "
        f"{(r['baseline'].get('latency') or {}).get('p99_ms', '-')} ms: {why}; "
        f"loss / dup / order {correctness(r)})."
    )
    closed = r.get("breaker_closed_after_heal_s") or []
    if closed:
        back = all(x is not None for x in closed)
        out.append(
            f"The breaker closes again once the backend answers: {_met(back)} ("
            + ", ".join("not within 30 s" if x is None else f"{x:g} s" for x in closed)
            + " after it was healed)."
        )
    return out
