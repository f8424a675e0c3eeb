"""The subscription state machine: pending -> live -> gone, as a table of events."""

from __future__ import annotations

import pytest

from tether.errors import LocalProtocolError
from tether.protocol.session import (
    SUBSCRIPTION_TRANSITIONS,
    SubscriptionEvent,
    SubscriptionState,
    next_subscription_state,
)

PENDING, LIVE, GONE = SubscriptionState.PENDING, SubscriptionState.LIVE, SubscriptionState.GONE
REPLIED, FAILED, LEFT = SubscriptionEvent.REPLIED, SubscriptionEvent.FAILED, SubscriptionEvent.LEFT
ALLOWED = {
    (PENDING, REPLIED): LIVE,
    (PENDING, FAILED): GONE,
    (PENDING, LEFT): GONE,
    (LIVE, LEFT): GONE,
}
ALL = [(state, event) for state in SubscriptionState for event in SubscriptionEvent]


def test_table_covers_every_state() -> None:
    assert set(SUBSCRIPTION_TRANSITIONS) == set(SubscriptionState)


@pytest.mark.parametrize(("state", "event"), list(ALLOWED))
def test_allowed_event_moves_the_subscription_on(
    state: SubscriptionState, event: SubscriptionEvent
) -> None:
    assert next_subscription_state(state, event) is ALLOWED[state, event]


@pytest.mark.parametrize(("state", "event"), [p for p in ALL if p not in ALLOWED])
def test_any_other_event_is_our_own_error(
    state: SubscriptionState, event: SubscriptionEvent
) -> None:
    # A live subscription cannot fail its subscribe, nor go live twice; nothing leaves GONE.
    with pytest.raises(LocalProtocolError, match="illegal subscription event"):
        next_subscription_state(state, event)
