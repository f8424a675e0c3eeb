"""The saturation signal: each part is the fraction of one limit in use, the whole is the
most loaded part."""

from __future__ import annotations

import dataclasses

import pytest

from tether.saturation import LOOP_LAG_FULL, MIN_WINDOW, PARTS, Reading, Saturation, overall

IDLE = Reading(
    now=100.0,
    cpu_seconds=10.0,
    loop_lag=0.0,
    connections=0,
    max_connections=1000,
    connect_attempts=0,
    max_connects_per_second=100.0,
    queued_bytes=0,
    outbound_queue_bytes=1000,
)


def test_an_idle_node_reads_zero_on_every_part() -> None:
    parts = Saturation().update(IDLE)
    assert set(parts) == set(PARTS)
    assert overall(parts) == 0.0


def test_connections_part_is_the_share_of_max_connections() -> None:
    parts = Saturation().update(dataclasses.replace(IDLE, connections=250))
    assert parts["connections"] == pytest.approx(0.25)
    assert overall(parts) == pytest.approx(0.25)


def test_loop_part_is_full_at_the_lag_limit_and_clipped_beyond() -> None:
    half = Saturation().update(dataclasses.replace(IDLE, loop_lag=LOOP_LAG_FULL / 2))
    assert half["loop"] == pytest.approx(0.5)
    over = Saturation().update(dataclasses.replace(IDLE, loop_lag=LOOP_LAG_FULL * 30))
    assert over["loop"] == 1.0


def test_cpu_and_connects_are_rates_between_two_samples() -> None:
    saturation = Saturation()
    first = saturation.update(IDLE)
    assert first["cpu"] == 0.0  # no window yet
    later = dataclasses.replace(
        IDLE, now=IDLE.now + 2, cpu_seconds=IDLE.cpu_seconds + 1.5, connect_attempts=60
    )
    parts = saturation.update(later)
    assert parts["cpu"] == pytest.approx(0.75)  # 1.5 CPU seconds in 2 s
    assert parts["connects"] == pytest.approx(0.3)  # 30 per second of 100
    assert overall(parts) == pytest.approx(0.75)


def test_a_sample_sooner_than_the_minimum_window_repeats_the_previous_figures() -> None:
    saturation = Saturation()
    saturation.update(IDLE)
    busy = dataclasses.replace(IDLE, now=IDLE.now + 2, cpu_seconds=IDLE.cpu_seconds + 1)
    parts = saturation.update(busy)
    soon = dataclasses.replace(busy, now=busy.now + MIN_WINDOW / 10, cpu_seconds=busy.cpu_seconds)
    assert saturation.update(soon) == parts  # not a 0 % CPU from a 0.1 s window


def test_queue_part_is_how_full_the_average_queue_is() -> None:
    reading = dataclasses.replace(IDLE, connections=10, queued_bytes=2500)
    assert Saturation().update(reading)["queue"] == pytest.approx(0.25)
