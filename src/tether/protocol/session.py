"""The state machines of a session, as tables: the connection, and each subscription.

The connection::

    CONNECTING --connect accepted--> CONNECTED
    CONNECTING --closed------------> CLOSED
    CONNECTED  --closed------------> CLOSED

Rules (protocol v2): the first command of a connection must be ``connect``; any other
command before it is a protocol violation (disconnect 3501). A second ``connect`` is one
too. Nothing leaves CLOSED.

A subscription (one channel of one connection), driven by events::

    PENDING --REPLIED--> LIVE      the subscribe reply (or push) is sent: live delivery
    PENDING --FAILED---> GONE      the subscribe failed (error reply, broker down)
    PENDING --LEFT-----> GONE      unsubscribed, or the connection closed, meanwhile
    LIVE    --LEFT-----> GONE      unsubscribed (client, server API), resubscribe (2500),
                                   or the connection closed

A PENDING subscription is in the hub already and buffers what is published while its
stream is read (the recovery invariant, docs/explanation/recovery.md); only a LIVE one
counts for the lane rules. Nothing leaves GONE: a channel subscribed again is a new
subscription.

Who broke a rule decides the error (h11's split): a command the peer may not send now is
a :class:`~tether.errors.ProtocolViolation` (3501, the peer's fault); a transition our own
code attempts and the table forbids is a :class:`~tether.errors.LocalProtocolError`, an
internal error (3004), never blamed on the client.
"""

from __future__ import annotations

import enum

from tether.errors import LocalProtocolError, ProtocolViolation


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.CONNECTING: frozenset({ConnectionState.CONNECTED, ConnectionState.CLOSED}),
    ConnectionState.CONNECTED: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


def advance(current: ConnectionState, new: ConnectionState) -> ConnectionState:
    """Return ``new`` if the table allows ``current -> new``; raise LocalProtocolError
    (the server's own code asked for it, see the module docstring)."""
    if new not in TRANSITIONS[current]:
        raise LocalProtocolError(f"illegal transition {current.value} -> {new.value}")
    return new


class SubscriptionState(enum.Enum):
    PENDING = "pending"
    LIVE = "live"
    GONE = "gone"


class SubscriptionEvent(enum.Enum):
    REPLIED = "replied"
    FAILED = "failed"
    LEFT = "left"


SUBSCRIPTION_TRANSITIONS: dict[SubscriptionState, dict[SubscriptionEvent, SubscriptionState]] = {
    SubscriptionState.PENDING: {
        SubscriptionEvent.REPLIED: SubscriptionState.LIVE,
        SubscriptionEvent.FAILED: SubscriptionState.GONE,
        SubscriptionEvent.LEFT: SubscriptionState.GONE,
    },
    SubscriptionState.LIVE: {SubscriptionEvent.LEFT: SubscriptionState.GONE},
    SubscriptionState.GONE: {},
}


def next_subscription_state(
    current: SubscriptionState, event: SubscriptionEvent
) -> SubscriptionState:
    """The state ``event`` moves a subscription to from ``current``; raise
    LocalProtocolError when the table has no such transition (only the server's own code
    drives subscriptions: a client's unsubscribe of a channel it is not subscribed to is
    no event at all, as the protocol says)."""
    new = SUBSCRIPTION_TRANSITIONS[current].get(event)
    if new is None:
        raise LocalProtocolError(f"illegal subscription event {event.value} in {current.value}")
    return new


def check_command_allowed(state: ConnectionState, request: str) -> None:
    """Raise ProtocolViolation when ``request`` may not be sent in ``state``."""
    if state is ConnectionState.CONNECTING and request != "connect":
        raise ProtocolViolation(f"{request} before connect")
    if state is ConnectionState.CONNECTED and request == "connect":
        raise ProtocolViolation("connect on a connected connection")
    if state is ConnectionState.CLOSED:
        raise ProtocolViolation(f"{request} on a closed connection")
