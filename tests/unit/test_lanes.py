"""The lane rules of :mod:`tether.core.lanes`: what each event class means."""

from __future__ import annotations

import pytest

from tether.config import Config
from tether.core.lanes import LANE_NAMES, Lane, LaneGate, may_shed_standard


def test_the_config_values_name_the_lanes_in_order() -> None:
    assert LANE_NAMES == ("critical", "standard", "ephemeral")
    assert [Lane.named(name) for name in LANE_NAMES] == list(Lane)
    with pytest.raises(KeyError):
        Lane.named("urgent")


def test_only_the_critical_lane_goes_with_replies_before_every_other_lane() -> None:
    assert [lane for lane in Lane if lane.urgent] == [Lane.CRITICAL]


def test_only_the_ephemeral_lane_is_coalesced_and_never_stored() -> None:
    assert [lane for lane in Lane if lane.coalesced] == [Lane.EPHEMERAL]
    assert [lane for lane in Lane if not lane.stored] == [Lane.EPHEMERAL]


def test_default_publish_limits_are_the_config_defaults() -> None:
    assert Config().lane_publish_limits == {"critical": 10000, "standard": 5000, "ephemeral": 1000}


def test_standard_lane_may_be_shed_to_keep_a_live_chat_when_every_feed_recovers() -> None:
    live = [(Lane.CRITICAL, False), (Lane.STANDARD, True), (Lane.STANDARD, True)]
    assert may_shed_standard(live)


def test_standard_lane_is_never_shed_without_a_critical_subscription_to_keep() -> None:
    assert not may_shed_standard([(Lane.STANDARD, True), (Lane.EPHEMERAL, False)])


def test_standard_lane_is_never_shed_when_one_feed_could_not_recover() -> None:
    assert not may_shed_standard(
        [(Lane.CRITICAL, True), (Lane.STANDARD, True), (Lane.STANDARD, False)]
    )


def test_nothing_is_shed_when_there_is_no_standard_subscription() -> None:
    assert not may_shed_standard([(Lane.CRITICAL, True), (Lane.EPHEMERAL, True)])


def test_a_saturated_lane_refuses_publishes_without_touching_the_others() -> None:
    gate = LaneGate({"critical": 1, "standard": 1, "ephemeral": 1})
    assert gate.enter(Lane.STANDARD)
    assert not gate.enter(Lane.STANDARD)
    assert gate.enter(Lane.CRITICAL)
    gate.leave(Lane.STANDARD)
    assert gate.enter(Lane.STANDARD)
    assert gate.shed == {Lane.CRITICAL: 0, Lane.STANDARD: 1, Lane.EPHEMERAL: 0}
