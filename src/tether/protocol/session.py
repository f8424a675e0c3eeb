"""The connection state machine, as a table.

::

    CONNECTING --connect accepted--> CONNECTED
    CONNECTING --closed------------> CLOSED
    CONNECTED  --closed------------> CLOSED

Rules (protocol v2): the first command of a connection must be ``connect``; any other
command before it is a protocol violation (disconnect 3501). A second ``connect`` is one
too. Nothing leaves CLOSED.

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


def check_command_allowed(state: ConnectionState, request: str) -> None:
    """Raise ProtocolViolation when ``request`` may not be sent in ``state``."""
    if state is ConnectionState.CONNECTING and request != "connect":
        raise ProtocolViolation(f"{request} before connect")
    if state is ConnectionState.CONNECTED and request == "connect":
        raise ProtocolViolation("connect on a connected connection")
    if state is ConnectionState.CLOSED:
        raise ProtocolViolation(f"{request} on a closed connection")
