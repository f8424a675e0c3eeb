"""The benchmark pages' verdicts follow the figures: each one, given figures that pass and
figures that fail, says so (``tether_bench.verdicts``; docs/benchmarks.md is rendered
from them)."""

from __future__ import annotations

from typing import Any

from tether_bench.hooks import breaker_state, hook_counter
from tether_bench.verdicts import (
    batch_cost_note,
    before_after_rows,
    caught_up_sentence,
    ceiling_note,
    client_storm_finding,
    cluster_rooms_finding,
    delta_verdicts,
    encoding_verdicts,
    fifty_delivered_clause,
    fifty_verdict,
    hook_outage_verdicts,
    hundred_verdict,
    issue11_verdicts,
    node_crash_finding,
    publish_burst_note,
    redis_share_clause,
    resilience_verdicts,
    rooms_workers_finding,
    shown_command,
    typing_frames_note,
    typing_rounds_note,
    verdicts,
    workers_fanout_verdict,
    workers_noise_clause,
)

CLEAN = {"losses": 0, "duplicates": 0, "order_violations": 0}


def fanout(dps: float, cps: float | None = None) -> dict[str, Any]:
    return {"deliveries_per_s": dps, "deliveries_per_server_cpu_s": cps or dps, **CLEAN}


def issue3_runs(tether_dps: float, idle_kib: float, p99: float) -> dict[tuple[str, str], Any]:
    by: dict[tuple[str, str], Any] = {
        ("fanout", "ceiling"): fanout(1_000_000),
        ("fanout", "tether"): fanout(tether_dps),
        ("fanout", "websockets"): fanout(100_000),
        ("idle", "tether"): {"rss_per_connection_kib": idle_kib, **CLEAN},
        ("latency", "tether"): {"latency": {"p99_ms": p99}, "run_p99_ms": [p99], **CLEAN},
    }
    for (scenario, row), r in by.items():
        r.update(scenario=scenario, row=row)
    return by


def test_issue3_targets_are_met_by_figures_that_meet_them() -> None:
    lines = verdicts(issue3_runs(tether_dps=800_000, idle_kib=5.1, p99=20))
    assert len(lines) == 5
    assert all("**met**" in line for line in lines), lines


def test_issue3_targets_are_missed_by_figures_that_miss_them() -> None:
    by = issue3_runs(tether_dps=200_000, idle_kib=7.5, p99=80)
    by[("fanout", "tether")]["losses"] = 3
    lines = verdicts(by)
    assert all("**MISSED**" in line for line in lines), lines
    assert "closest peer: websockets, Tether is 2.0x" in lines[1]


def slow_consumers(cut: int) -> dict[tuple[str, str], Any]:
    return {("slow-consumers", "tether-resilience"): {"slow": 20, "slow_disconnects": cut, **CLEAN}}


def test_slow_consumers_are_met_only_when_every_slow_client_is_cut() -> None:
    (met,) = resilience_verdicts(slow_consumers(cut=20))
    (missed,) = resilience_verdicts(slow_consumers(cut=19))
    assert met.count("**met**") == 2
    assert "**MISSED** (19 of 20)" in missed


def test_typing_rounds_that_move_are_called_unsteady_and_steady_ones_agree() -> None:
    assert "moved by 0.50 from round to round" in typing_rounds_note([0.9, 1.4, 1.1])
    assert "the rounds agree within 0.05" in typing_rounds_note([1.0, 1.05])


def typing(coalesced: int, dropped: int, users: int = 20, rate: float = 500) -> dict[str, Any]:
    return {
        "typing_users": users,
        "typing_rate": rate,
        "typing_coalesced": coalesced,
        "typing_dropped": dropped,
        "slow_disconnects": 0,
    }


def test_typing_frames_note_says_what_became_of_the_frames() -> None:
    calm = typing_frames_note(typing(0, 0), ephemeral_window_s=0.02)
    assert "no typing frame was coalesced or dropped" in calm
    assert "every 40 ms, longer than the 20 ms ephemeral window" in calm
    busy = typing_frames_note(typing(1200, 3, users=5), ephemeral_window_s=0.02)
    assert "1,200 typing frames coalesced and 3 dropped" in busy
    assert "every 10 ms, within the 20 ms ephemeral window" in busy


def burst(p99: float, answered: float, losses: int = 0) -> dict[str, Any]:
    return {
        "accepted_per_s": 2000,
        "sustainable_publications_per_s": 2500,
        "latency": {"p99_ms": p99},
        "client_wait": {"p99_ms": p99 / 2},
        "answered_per_s": answered,
        "offered_per_s": 20_000,
        "server_cpu_percent": 90,
        "offsets_match_accepted": losses == 0,
        **CLEAN,
        "losses": losses,
    }


def test_publish_burst_note_judges_speed_and_queueing_from_the_figures() -> None:
    good = publish_burst_note(burst(p99=12, answered=19_500))
    assert "and lost nothing" in good
    assert "Shedding kept accepted publications fast: p99 12 ms" in good
    assert "the server kept up with the requests offered" in good
    bad = publish_burst_note(burst(p99=900, answered=9_000, losses=4))
    assert "loss / dup / order 4 / 0 / 0" in bad
    assert "Shedding did not keep accepted publications fast: p99 900 ms" in bad
    assert "requests queued before the lane limit could refuse them" in bad


def test_the_cost_of_one_publication_per_call_is_the_measured_ratio() -> None:
    assert "cost 5.0x the server CPU" in batch_cost_note(fanout(5e6, 5e6), fanout(1e6, 1e6))
    assert "cost no more server CPU" in batch_cost_note(fanout(1e6, 1e6), fanout(2e6, 2e6))


def test_tether_is_placed_above_or_below_the_ceiling_by_the_figures() -> None:
    assert "above the ceiling: 1.50x" in ceiling_note(fanout(1.5e6), fanout(1e6))
    assert "below the ceiling: 0.50x" in ceiling_note(fanout(0.5e6), fanout(1e6))


def test_worker_counts_whose_runs_overlap_do_not_change_throughput() -> None:
    runs = {1: [500e3, 560e3], 2: [520e3, 540e3], 3: [490e3, 530e3]}
    assert "does not change fan-out throughput measurably" in workers_fanout_verdict(runs)
    assert "within the noise" in workers_noise_clause(runs)


def test_worker_counts_whose_runs_do_not_overlap_are_told_apart() -> None:
    runs = {1: [300e3, 320e3], 2: [500e3, 540e3], 3: [510e3, 530e3]}
    verdict = workers_fanout_verdict(runs)
    assert "highest with 2 or 3 workers here; 1 worker is slower beyond the noise" in verdict
    assert "not every worker count's runs overlap" in workers_noise_clause(runs)


def test_redis_is_called_idle_only_when_it_used_little_cpu() -> None:
    assert "nearly idle" in redis_share_clause(0.3, 11.0)
    assert "a real share of the work" in redis_share_clause(4.0, 11.0)


def rooms(n: int, delivered: int, late: int = 0) -> dict[str, Any]:
    return {
        "workers": n,
        "rate": 2000.0,
        "publications": 16_000,
        "deliveries": delivered,
        "expected_deliveries": 88_000,
        "publisher_late": late,
        "latency": {"p99_ms": 5.0 + n},
        "server_cpu_percent": 50 + n,
        **CLEAN,
    }


def test_rooms_finding_says_everything_was_delivered_only_when_it_was() -> None:
    full = rooms_workers_finding({n: rooms(n, 88_000) for n in (0, 1, 2, 3)})
    assert "every setup delivers the 11,000/s expected without loss" in full
    assert "the publisher was never late" in full
    short = rooms_workers_finding({0: rooms(0, 88_000), 1: rooms(1, 87_000, late=12)})
    assert "not every setup delivered everything: 1 (87000 of 88000" in short
    assert "the publisher was late for 12 publications" in short


def crash(resubscribed: int, refused: int = 0, behind: int = 0) -> dict[str, Any]:
    return {
        "victim_clients": 667,
        "resubscribed": resubscribed,
        "recovered_true": 1334,
        "recoveries": 1334,
        "refused_503_after_kill": refused,
        "connect_errors_after_kill": 0,
        "all_resubscribed_s": 0.66,
        "resubscribed_p50_s": 0.5,
        "publish_attempts_failed": 1,
        "stored_twice": 0,
        "clients_behind_at_end": behind,
        "catch_up_after_last_publish_s": 0.0,
        **CLEAN,
    }


def test_a_node_crash_is_absorbed_only_if_every_client_came_back() -> None:
    assert "**A node crash costs about 0.66 s**" in node_crash_finding(crash(667))
    assert "**A node crash was not absorbed cleanly**" in node_crash_finding(crash(660))
    assert "was not absorbed" in node_crash_finding(crash(667, refused=2))


def test_caught_up_only_when_no_client_is_behind() -> None:
    assert caught_up_sentence(crash(667)).startswith("Every client then had every")
    assert caught_up_sentence(crash(667, behind=3)).startswith("3 client(s) still lacked")


def storm(back: int, refused: int) -> dict[str, Any]:
    return {
        "clients": 2000,
        "reconnected": back,
        "recovered_false": 2000 - back,
        "refused_503": refused,
        "time_to_full_recovery_s": 0.9,
        **CLEAN,
    }


def test_a_client_storm_reports_the_503_path_as_measured() -> None:
    calm = client_storm_finding(storm(2000, refused=0))
    assert "all back and recovered" in calm
    assert "does not exercise the 503 path" in calm
    hard = client_storm_finding(storm(1990, refused=350))
    assert "1990 back, 10 not recovered" in hard
    assert "350 upgrades were refused with 503 and retried" in hard


def test_rooms_through_the_balancer_are_lossless_only_if_nothing_was_lost() -> None:
    clean = {1000.0: {"latency": {"p99_ms": 6}, "publisher_late": 0, **CLEAN}}
    assert "none sent late. Nothing was lost in any." in cluster_rooms_finding(clean)
    lossy = {2000.0: {"latency": {"p99_ms": 85}, "publisher_late": 288, **CLEAN, "losses": 2}}
    text = cluster_rooms_finding(lossy)
    assert "288 publications sent late" in text
    assert "API path through the balancer was saturated" in text
    assert "2,000/s 2 / 0 / 0" in text


def fifty(connected: int, delivered: int, asked: int = 50_000) -> dict[str, Any]:
    return {
        "connections": asked,
        "connected": connected,
        "alive_at_end": connected,
        "deliveries": delivered,
        "expected_deliveries": 296_950,
        "checked_connections": connected,
        "errors": [],
        **CLEAN,
    }


def test_fifty_thousand_connections_are_met_only_with_all_of_them_and_every_delivery() -> None:
    assert fifty_verdict(fifty(50_000, 296_950)) == "**50,000 connections: met.**"
    assert fifty_verdict(fifty(49_990, 296_950)) == "**50,000 connections: MISSED.**"
    assert fifty_verdict(fifty(50_000, 296_000)) == "**50,000 connections: MISSED.**"
    assert fifty_delivered_clause(fifty(50_000, 296_950)).startswith("every publication")
    assert fifty_delivered_clause(fifty(50_000, 296_000)).startswith("not every publication")


def test_a_hundred_thousand_connections_are_met_only_when_every_one_held_and_checked() -> None:
    met = fifty(100_000, 296_950, asked=100_000)
    assert hundred_verdict(met) == "**100,000 connections: met.**"
    assert fifty_verdict(met) == "**50,000 connections: met.**"  # more than issue 3 asked
    missed = "**100,000 connections: MISSED.**"
    assert hundred_verdict(fifty(50_000, 296_950)) == missed  # all of a smaller run held
    assert hundred_verdict(fifty(99_999, 296_950, asked=100_000)) == missed
    assert hundred_verdict({**met, "alive_at_end": 99_999}) == missed
    assert hundred_verdict({**met, "checked_connections": 1_000}) == missed
    assert hundred_verdict({**met, "duplicates": 1}) == missed
    assert hundred_verdict({**met, "order_violations": 1}) == missed
    assert hundred_verdict({**met, "errors": ["bench timed out"]}) == missed
    assert hundred_verdict({**met, "deliveries": 0, "expected_deliveries": 0}) == missed


def test_no_tether_run_gives_no_zero_loss_verdict() -> None:
    peers_only = {("fanout", "websockets"): {"scenario": "fanout", "row": "websockets", **CLEAN}}
    assert verdicts(peers_only) == []


def test_one_run_per_worker_count_tells_no_count_apart() -> None:
    runs = {1: [300e3], 2: [500e3], 3: [510e3]}
    assert "Too few runs per worker count" in workers_fanout_verdict(runs)
    assert workers_noise_clause(runs) == "single runs ranged 300k to 510k/s"


def test_commands_recorded_before_the_move_are_shown_as_typed_today() -> None:
    assert shown_command("bench fanout -n 10") == "tether-bench run fanout -n 10"
    assert shown_command(".venv/bin/tether bench rooms --json") == (
        ".venv/bin/tether-bench run rooms --json"
    )
    assert shown_command("tether-bench run idle -n 5") == "tether-bench run idle -n 5"


# -- issue 11 ---------------------------------------------------------------------------


def issue11_runs(tether_cps: float, redis_cps: float, connects: float) -> dict[Any, Any]:
    return {
        ("fanout", "ceiling"): fanout(1_000_000, 2_000_000),
        ("fanout", "tether"): fanout(tether_cps / 2, tether_cps),
        ("fanout", "tether-redis"): fanout(redis_cps / 2, redis_cps),
        ("connect-cost", "tether"): {"connects_per_server_cpu_s": connects},
        ("connect-cost", "tether-redis"): {"connects_per_server_cpu_s": connects / 2},
    }


def test_issue11_goals_are_met_or_missed_by_the_figures() -> None:
    met = issue11_verdicts(issue11_runs(1_600_000, 1_000_000, 12_000))
    assert len(met) == 4
    assert all("**met**" in line for line in met)
    assert "0.80x by deliveries/s, 0.80x per server CPU-second" in met[0]
    assert "12,000" in met[1]
    assert "83 µs" in met[1]
    missed = issue11_verdicts(issue11_runs(800_000, 100_000, 3_000))
    assert all("**MISSED**" in line for line in missed)
    assert "0.12x" in missed[3]


def test_the_fanout_goal_needs_both_the_rate_and_the_cpu_ratio() -> None:
    by = issue11_runs(1_600_000, 1_000_000, 12_000)
    by["fanout", "tether"] = fanout(1_000_000, 1_000_000)  # 1.0x by rate, 0.5x per CPU-s
    assert "**MISSED**" in issue11_verdicts(by)[0]


def test_before_after_takes_the_median_of_the_before_runs() -> None:
    before = [
        {"scenario": "fanout", "row": "ceiling", **fanout(1_000_000, 2_000_000)},
        *(
            {"scenario": "fanout", "row": "tether", **fanout(v, v)}
            for v in (400_000, 500_000, 900_000)
        ),
        {"scenario": "fanout", "row": "tether", "error": "bench timed out"},
    ]
    rows = {name: (b, a) for name, b, a in before_after_rows(before, issue11_runs(1.6e6, 1e6, 1))}
    assert rows["Tether ÷ per-tick ceiling, deliveries/s"] == ("0.50x", "0.80x")
    assert rows["Tether (memory) deliveries per server CPU-s"] == ("500k", "1.60M")
    assert rows["connects per server CPU-s, Redis"][0] == "-"


def test_before_after_compares_the_fanout_measured_with_the_before_harness() -> None:
    before = [
        {"scenario": "fanout", "row": "ceiling", **fanout(1_000_000, 2_000_000)},
        {"scenario": "fanout", "row": "tether", **fanout(500_000, 500_000)},
    ]
    after = issue11_runs(1.6e6, 1e6, 1)  # the new harness: Tether at 0.80x
    after[("fanout", "tether@old")] = {"scenario": "fanout", "row": "tether@old", **fanout(6e5)}
    after[("fanout", "ceiling@old")] = {"scenario": "fanout", "row": "ceiling@old", **fanout(1e6)}
    rows = {name: (b, a) for name, b, a in before_after_rows(before, after)}
    assert rows["Tether ÷ per-tick ceiling, deliveries/s"] == ("0.50x", "0.60x")
    (line,) = [v for v in issue11_verdicts(after) if "harness of the before" in v]
    assert "0.60x by deliveries/s" in line


def hook_outage(**changes: Any) -> dict[str, Any]:
    """A hook-outage report whose every figure meets issue 14's must-show."""

    def calls(answered: int, refused: int, slow: int = 0) -> dict[str, Any]:
        return {
            "answered": answered,
            "ok": answered - refused,
            "temporary_100": refused,
            "other_errors": 0,
            "queued": 0,
            "unqueued": answered,
            "slow_unqueued": slow,
            "answer": {"p50_ms": 1.0, "p99_ms": 9.0},
        }

    r: dict[str, Any] = {
        "row": "tether-hooks",
        "scenario": "hook-outage",
        "proxy": {"timeout": 1.0, "max_in_flight": 10, "breaker_failures": 5, "breaker_reset": 3},
        "hook_publish_rate": 50.0,
        "breaker_opened_after_s": [1.13, 1.14],
        "breaker_closed_after_heal_s": [2.1, 2.2],
        "hook_publish_open": calls(480, 480, slow=2),
        "backend_publish_requests_after_open": 2,
        "hook_calls_unanswered": 0,
        "hook_rpc": calls(120, 0),
        "rpc_hook_failures_server": 0,
        "baseline": {"latency": {"p99_ms": 10.0}, "round_p99_ms": [9.0, 14.0]},
        "hang": {"latency": {"p99_ms": 11.0}},
        **CLEAN,
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(r.get(key), dict):
            r[key] = {**r[key], **value}
        else:
            r[key] = value
    return r


def test_a_hanging_backend_run_that_shows_everything_meets_every_target() -> None:
    lines = hook_outage_verdicts(hook_outage())

    assert len(lines) == 5
    assert all("**met**" in line for line in lines), lines
    assert "window 1.35 s" in lines[0]  # 1 s timeout + 5 failures at 50/s + 0.25 s


def test_a_breaker_that_opens_late_or_never_misses_the_window() -> None:
    for opened in ([1.13, 1.9], [None, 1.1]):
        [first, *_] = hook_outage_verdicts(hook_outage(breaker_opened_after_s=opened))
        assert "**MISSED**" in first


def test_slow_refusals_beyond_the_probes_are_not_at_once() -> None:
    late = hook_outage(hook_publish_open={"slow_unqueued": 5})  # 5 slow, 2 probes
    assert "**MISSED**" in hook_outage_verdicts(late)[1]
    accepted = hook_outage(hook_publish_open={"other_errors": 3})
    assert "**MISSED**" in hook_outage_verdicts(accepted)[1]


def test_a_failed_rpc_during_the_hang_means_the_other_hook_did_not_keep_working() -> None:
    assert "**MISSED**" in hook_outage_verdicts(hook_outage(hook_rpc={"ok": 119}))[2]
    assert "**MISSED**" in hook_outage_verdicts(hook_outage(rpc_hook_failures_server=1))[2]


def test_fanout_latency_is_unchanged_within_the_bar_or_the_baselines_own_rounds() -> None:
    # 1.3x the pooled baseline, but inside the baseline rounds' range (9 to 14 ms)
    within_rounds = hook_outage(hang={"latency": {"p99_ms": 13.0}})
    assert "**met**" in hook_outage_verdicts(within_rounds)[3]
    slower = hook_outage(hang={"latency": {"p99_ms": 20.0}})
    assert "**MISSED**" in hook_outage_verdicts(slower)[3]
    lossy = hook_outage(losses=1)
    assert "**MISSED**" in hook_outage_verdicts(lossy)[3]


def test_a_breaker_that_stays_open_after_healing_is_reported() -> None:
    line = hook_outage_verdicts(hook_outage(breaker_closed_after_heal_s=[2.1, None]))[4]
    assert "**MISSED**" in line
    assert "not within 30 s" in line


def test_a_failed_hook_outage_run_gives_no_verdict() -> None:
    assert hook_outage_verdicts({"row": "tether-hooks", "error": "bench timed out"}) == []


METRICS = {
    'tether_proxy_breaker_state{hook="publish",proxy="app",state="closed"}': 0.0,
    'tether_proxy_breaker_state{hook="publish",proxy="app",state="open"}': 1.0,
    'tether_proxy_breaker_state{hook="rpc",proxy="app",state="closed"}': 1.0,
    'tether_proxy_breaker_state{hook="rpc",proxy="app",state="open"}': 0.0,
    'tether_proxy_rejections_total{hook="publish",proxy="app",reason="circuit_open"}': 7.0,
    'tether_proxy_rejections_total{hook="publish",proxy="app",reason="bulkhead_full"}': 2.0,
    'tether_proxy_rejections_total{hook="rpc",proxy="app",reason="circuit_open"}': 5.0,
}


def test_the_hook_outage_reads_each_hooks_breaker_and_counters_from_metrics() -> None:
    assert breaker_state(METRICS, "publish") == "open"
    assert breaker_state(METRICS, "rpc") == "closed"
    assert breaker_state(METRICS, "connect") is None
    assert hook_counter(METRICS, "rejections", "publish", "circuit_open") == 7
    assert hook_counter(METRICS, "rejections", "publish") == 9
    assert hook_counter(METRICS, "rejections", "rpc") == 5


def encoding_runs(json_dps: list[float], mixed_dps: list[float]) -> dict[tuple[str, str], Any]:
    return {
        ("fanout", "tether"): {**fanout(json_dps[0]), "run_deliveries_per_s": json_dps},
        ("fanout", "tether-mixed"): {**fanout(mixed_dps[0]), "run_deliveries_per_s": mixed_dps},
    }


def test_an_encoding_within_ten_percent_of_json_by_the_run_medians_meets_the_goal() -> None:
    # the first runs alone would say 0.5x: the medians of the runs decide
    (line,) = encoding_verdicts(encoding_runs([1e6, 2e6, 2e6], [1e6, 1.9e6, 1.8e6]))
    assert "half JSON, half Protobuf" in line
    assert "**met**" in line
    assert "0.90x" in line
    assert "3 runs" in line


def test_an_encoding_more_than_ten_percent_below_json_misses_the_goal() -> None:
    (line,) = encoding_verdicts(encoding_runs([2e6, 2e6, 2e6], [1.7e6, 1.9e6, 1.75e6]))
    assert "**MISSED**" in line
    assert "0.88x" in line


def test_no_encoding_rows_give_no_encoding_verdict() -> None:
    assert encoding_verdicts({("fanout", "tether"): fanout(1e6)}) == []


def delta_run(json_delta: int, protobuf_delta: int) -> dict[str, Any]:
    return {
        "updates": 100,
        "document_bytes": 2123,
        "bytes": {
            "json": 200_000,
            "json_delta": json_delta,
            "protobuf": 200_000,
            "protobuf_delta": protobuf_delta,
        },
    }


def test_delta_is_met_at_five_times_fewer_bytes_in_each_encoding_and_missed_below() -> None:
    json_line, protobuf_line = delta_verdicts(delta_run(40_000, 40_001))
    assert "**met**" in json_line
    assert "5.0x" in json_line
    assert "**MISSED**" in protobuf_line


def test_no_delta_run_gives_no_delta_verdict() -> None:
    assert delta_verdicts(None) == []


def test_before_after_shows_the_10k_reconnect_storm_when_both_measured_it() -> None:
    storm = {"scenario": "reconnect-storm", "row": "tether-resilience-10k"}
    before = [{**storm, "time_to_full_recovery_s": 14.2}]
    after = issue11_runs(1.6e6, 1e6, 1)
    label = "10,000-client reconnect storm: time to full recovery"
    assert {n: (b, a) for n, b, a in before_after_rows(before, after)}[label] == ("14.20 s", "-")
    after["reconnect-storm", "tether-resilience-10k"] = {**storm, "time_to_full_recovery_s": 10.8}
    assert {n: (b, a) for n, b, a in before_after_rows(before, after)}[label] == (
        "14.20 s",
        "10.80 s",
    )
