"""Error, disconnect and unsubscribe codes of the Centrifugo client protocol v2.

Each code lives in exactly one table. The numbers and their meanings are the protocol's
published ones, so a client SDK reacts to them the way it was written to:

* Error codes (in a reply's ``error``): 100-399 are the protocol's, 400-1999 are for
  applications. ``temporary`` tells the SDK that retrying later may succeed.
* Disconnect codes (WebSocket close code, or a ``disconnect`` push):
  3000-3499 and 4000-4499 mean "reconnect"; 3500-3999 and 4500-4999 mean "do not reconnect";
  the number range *is* the advice, see :func:`should_reconnect`.
* A frame larger than the configured limit is closed at the WebSocket layer with 1009
  ("message too big"), which SDKs treat as terminal.
* Unsubscribe codes (in an ``unsubscribe`` push): below 2500 the subscription ends,
  2500-2999 the SDK resubscribes.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class ErrorInfo(NamedTuple):
    message: str
    temporary: bool


class ErrorCode(enum.IntEnum):
    """Reply error codes. ``ERRORS[code]`` gives the message and whether it is temporary."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112


ERRORS: dict[ErrorCode, ErrorInfo] = {
    ErrorCode.INTERNAL: ErrorInfo("internal server error", temporary=True),
    ErrorCode.UNAUTHORIZED: ErrorInfo("unauthorized", temporary=False),
    ErrorCode.UNKNOWN_CHANNEL: ErrorInfo("unknown channel", temporary=False),
    ErrorCode.PERMISSION_DENIED: ErrorInfo("permission denied", temporary=False),
    ErrorCode.METHOD_NOT_FOUND: ErrorInfo("method not found", temporary=False),
    ErrorCode.ALREADY_SUBSCRIBED: ErrorInfo("already subscribed", temporary=False),
    ErrorCode.LIMIT_EXCEEDED: ErrorInfo("limit exceeded", temporary=False),
    ErrorCode.BAD_REQUEST: ErrorInfo("bad request", temporary=False),
    ErrorCode.NOT_AVAILABLE: ErrorInfo("not available", temporary=False),
    ErrorCode.TOKEN_EXPIRED: ErrorInfo("token expired", temporary=False),
    ErrorCode.EXPIRED: ErrorInfo("expired", temporary=False),
    ErrorCode.TOO_MANY_REQUESTS: ErrorInfo("too many requests", temporary=True),
    ErrorCode.UNRECOVERABLE_POSITION: ErrorInfo("unrecoverable position", temporary=False),
}


class DisconnectCode(enum.IntEnum):
    """Codes a connection is closed with. The range says whether the client reconnects."""

    # 3000-3499: the client reconnects (with backoff and jitter).
    CONNECTION_CLOSED = 3000
    SHUTDOWN = 3001
    SERVER_ERROR = 3004
    EXPIRED = 3005
    SUB_EXPIRED = 3006
    SLOW = 3008
    WRITE_ERROR = 3009
    INSUFFICIENT_STATE = 3010
    FORCE_RECONNECT = 3011
    NO_PONG = 3012
    TOO_MANY_REQUESTS = 3013
    # 3500-3999: terminal, the client stays disconnected.
    INVALID_TOKEN = 3500
    BAD_REQUEST = 3501
    STALE = 3502
    FORCE_NO_RECONNECT = 3503
    CONNECTION_LIMIT = 3504
    CHANNEL_LIMIT = 3505
    INAPPROPRIATE_PROTOCOL = 3506
    PERMISSION_DENIED = 3507
    NOT_AVAILABLE = 3508
    TOO_MANY_ERRORS = 3509


DISCONNECT_REASONS: dict[DisconnectCode, str] = {
    DisconnectCode.CONNECTION_CLOSED: "connection closed",
    DisconnectCode.SHUTDOWN: "shutdown",
    DisconnectCode.SERVER_ERROR: "internal server error",
    DisconnectCode.EXPIRED: "connection expired",
    DisconnectCode.SUB_EXPIRED: "subscription expired",
    DisconnectCode.SLOW: "slow",
    DisconnectCode.WRITE_ERROR: "write error",
    DisconnectCode.INSUFFICIENT_STATE: "insufficient state",
    DisconnectCode.FORCE_RECONNECT: "force reconnect",
    DisconnectCode.NO_PONG: "no pong",
    DisconnectCode.TOO_MANY_REQUESTS: "too many requests",
    DisconnectCode.INVALID_TOKEN: "invalid token",
    DisconnectCode.BAD_REQUEST: "bad request",
    DisconnectCode.STALE: "stale",
    DisconnectCode.FORCE_NO_RECONNECT: "force disconnect",
    DisconnectCode.CONNECTION_LIMIT: "connection limit",
    DisconnectCode.CHANNEL_LIMIT: "channel limit",
    DisconnectCode.INAPPROPRIATE_PROTOCOL: "inappropriate protocol",
    DisconnectCode.PERMISSION_DENIED: "permission denied",
    DisconnectCode.NOT_AVAILABLE: "not available",
    DisconnectCode.TOO_MANY_ERRORS: "too many errors",
}


def should_reconnect(code: int) -> bool:
    """Whether a client that was closed with ``code`` reconnects (protocol rule)."""
    return code < 3500 or code >= 5000 or 4000 <= code < 4500


class UnsubscribeCode(enum.IntEnum):
    """Codes of a server-side ``unsubscribe`` push. 2500-2999 make the SDK resubscribe."""

    SERVER = 2000
    INSUFFICIENT_STATE = 2500


UNSUBSCRIBE_REASONS: dict[UnsubscribeCode, str] = {
    UnsubscribeCode.SERVER: "server unsubscribe",
    UnsubscribeCode.INSUFFICIENT_STATE: "insufficient state",
}
