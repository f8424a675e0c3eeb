"""The connection state machine: a table of allowed transitions and commands."""

from __future__ import annotations

import pytest

from tether.errors import InternalError, LocalProtocolError, ProtocolViolation
from tether.protocol.messages import REQUEST_FIELDS
from tether.protocol.session import (
    TRANSITIONS,
    ConnectionState,
    advance,
    check_command_allowed,
)

CONNECTING, CONNECTED, CLOSED = (
    ConnectionState.CONNECTING,
    ConnectionState.CONNECTED,
    ConnectionState.CLOSED,
)
ALL_PAIRS = [(a, b) for a in ConnectionState for b in ConnectionState]
ALLOWED = [(CONNECTING, CONNECTED), (CONNECTING, CLOSED), (CONNECTED, CLOSED)]
OTHER_REQUESTS = [r for r in REQUEST_FIELDS if r != "connect"]


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(ConnectionState)


@pytest.mark.parametrize(("current", "new"), ALLOWED)
def test_allowed_transition_returns_the_new_state(
    current: ConnectionState, new: ConnectionState
) -> None:
    assert advance(current, new) is new


@pytest.mark.parametrize(("current", "new"), [p for p in ALL_PAIRS if p not in ALLOWED])
def test_illegal_transition_is_our_own_error_not_the_peers(
    current: ConnectionState, new: ConnectionState
) -> None:
    with pytest.raises(LocalProtocolError, match="illegal transition") as raised:
        advance(current, new)

    assert isinstance(raised.value, InternalError)
    assert not isinstance(raised.value, ProtocolViolation)  # never answered with 3501


def test_connect_is_allowed_while_connecting() -> None:
    check_command_allowed(CONNECTING, "connect")


@pytest.mark.parametrize("request_name", OTHER_REQUESTS)
def test_any_other_command_before_connect_is_a_violation(request_name: str) -> None:
    with pytest.raises(ProtocolViolation, match="before connect"):
        check_command_allowed(CONNECTING, request_name)


@pytest.mark.parametrize("request_name", OTHER_REQUESTS)
def test_commands_are_allowed_once_connected(request_name: str) -> None:
    check_command_allowed(CONNECTED, request_name)


def test_second_connect_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="connected connection"):
        check_command_allowed(CONNECTED, "connect")


@pytest.mark.parametrize("request_name", REQUEST_FIELDS)
def test_nothing_is_allowed_once_closed(request_name: str) -> None:
    with pytest.raises(ProtocolViolation, match="closed"):
        check_command_allowed(CLOSED, request_name)
