"""Error, disconnect and unsubscribe codes of the Centrifugo client protocol v2.

Each code is one record that carries everything a client SDK reads from it, and each kind
of code has one table (:class:`ErrorCode`, :class:`DisconnectCode`,
:class:`UnsubscribeCode`). The numbers and their meanings are the protocol's published
ones, so an SDK reacts to them the way it was written to.

Error codes (a reply's ``error``; :class:`ErrorInfo`):

    100-399     the protocol's (the table below)
    400-1999    for applications (Tether sends none)

    ``temporary`` tells the SDK that retrying later may succeed.

Disconnect codes (the WebSocket close code, or a ``disconnect`` push;
:class:`DisconnectInfo`). The number range *is* the reconnect advice, decided in one place,
:func:`should_reconnect`:

    3000-3499   the protocol's    the client reconnects (with backoff and jitter)
    3500-3999   the protocol's    terminal: the client stays disconnected
    4000-4499   an application's  the client reconnects
    4500-4999   an application's  terminal

    Below 3000 are the WebSocket's own codes (a frame over the size limit is closed with
    1009, "message too big", which SDKs treat as terminal); 5000 and up are reserved. A
    server closes with neither on purpose, so :func:`should_reconnect` refuses them.

Unsubscribe codes (an ``unsubscribe`` push; :class:`UnsubscribeInfo`): below 2500 the
subscription ends; 2500-2999 the SDK resubscribes (:func:`should_resubscribe`).
"""

from __future__ import annotations

import dataclasses
from typing import Final, TypeVar

# The disconnect ranges as a table: (first, last, reconnect). should_reconnect reads it.
_DISCONNECT_RANGES: Final = (
    (3000, 3499, True),
    (3500, 3999, False),
    (4000, 4499, True),
    (4500, 4999, False),
)


def is_disconnect_code(code: int) -> bool:
    """Whether a server may close a connection with ``code`` (3000-4999)."""
    return any(first <= code <= last for first, last, _ in _DISCONNECT_RANGES)


def should_reconnect(code: int) -> bool:
    """Whether a client closed with disconnect ``code`` reconnects (the protocol's range
    rule, see the module docstring).

    Raises :class:`ValueError` for a code outside 3000-4999: not one a server may close a
    connection with."""
    for first, last, reconnect in _DISCONNECT_RANGES:
        if first <= code <= last:
            return reconnect
    raise ValueError("disconnect code must be 3000-4999")


def should_resubscribe(code: int) -> bool:
    """Whether an SDK that got an ``unsubscribe`` push with ``code`` subscribes again."""
    return 2500 <= code <= 2999


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error a reply carries: ``code``, ``message`` and whether retrying may succeed."""

    code: int
    message: str
    temporary: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class DisconnectInfo:
    """Why a connection is closed: ``code`` (the WebSocket close code) and ``reason``.

    Any code from 3000 to 4999 makes a record, so an application's own disconnect (server
    API ``disconnect`` with 4xxx) is one too; any other code raises :class:`ValueError`."""

    code: int
    reason: str
    reconnect: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reconnect", should_reconnect(self.code))

    def because(self, reason: str) -> DisconnectInfo:
        """The same code with a more specific ``reason`` (what the client logs)."""
        return DisconnectInfo(self.code, reason)


@dataclasses.dataclass(frozen=True, slots=True)
class UnsubscribeInfo:
    """Why the server ended a subscription: ``code`` and ``reason``."""

    code: int
    reason: str
    resubscribe: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resubscribe", should_resubscribe(self.code))


class ErrorCode:
    """The reply error codes Tether answers with (the protocol's 100-399)."""

    INTERNAL: Final = ErrorInfo(100, "internal server error", temporary=True)
    UNAUTHORIZED: Final = ErrorInfo(101, "unauthorized")
    UNKNOWN_CHANNEL: Final = ErrorInfo(102, "unknown channel")
    PERMISSION_DENIED: Final = ErrorInfo(103, "permission denied")
    METHOD_NOT_FOUND: Final = ErrorInfo(104, "method not found")
    ALREADY_SUBSCRIBED: Final = ErrorInfo(105, "already subscribed")
    LIMIT_EXCEEDED: Final = ErrorInfo(106, "limit exceeded")
    BAD_REQUEST: Final = ErrorInfo(107, "bad request")
    NOT_AVAILABLE: Final = ErrorInfo(108, "not available")
    TOKEN_EXPIRED: Final = ErrorInfo(109, "token expired")
    EXPIRED: Final = ErrorInfo(110, "expired")
    TOO_MANY_REQUESTS: Final = ErrorInfo(111, "too many requests", temporary=True)
    UNRECOVERABLE_POSITION: Final = ErrorInfo(112, "unrecoverable position")


class DisconnectCode:
    """The disconnect codes of the protocol (3000-3999); the range says reconnect or not."""

    # 3000-3499: the client reconnects.
    CONNECTION_CLOSED: Final = DisconnectInfo(3000, "connection closed")
    SHUTDOWN: Final = DisconnectInfo(3001, "shutdown")
    SERVER_ERROR: Final = DisconnectInfo(3004, "internal server error")
    EXPIRED: Final = DisconnectInfo(3005, "connection expired")
    SUB_EXPIRED: Final = DisconnectInfo(3006, "subscription expired")
    SLOW: Final = DisconnectInfo(3008, "slow")
    WRITE_ERROR: Final = DisconnectInfo(3009, "write error")
    INSUFFICIENT_STATE: Final = DisconnectInfo(3010, "insufficient state")
    FORCE_RECONNECT: Final = DisconnectInfo(3011, "force reconnect")
    NO_PONG: Final = DisconnectInfo(3012, "no pong")
    TOO_MANY_REQUESTS: Final = DisconnectInfo(3013, "too many requests")
    # 3500-3999: terminal, the client stays disconnected.
    INVALID_TOKEN: Final = DisconnectInfo(3500, "invalid token")
    BAD_REQUEST: Final = DisconnectInfo(3501, "bad request")
    STALE: Final = DisconnectInfo(3502, "stale")
    FORCE_NO_RECONNECT: Final = DisconnectInfo(3503, "force disconnect")
    CONNECTION_LIMIT: Final = DisconnectInfo(3504, "connection limit")
    CHANNEL_LIMIT: Final = DisconnectInfo(3505, "channel limit")
    INAPPROPRIATE_PROTOCOL: Final = DisconnectInfo(3506, "inappropriate protocol")
    PERMISSION_DENIED: Final = DisconnectInfo(3507, "permission denied")
    NOT_AVAILABLE: Final = DisconnectInfo(3508, "not available")
    TOO_MANY_ERRORS: Final = DisconnectInfo(3509, "too many errors")


class UnsubscribeCode:
    """The codes of a server-side ``unsubscribe`` push."""

    SERVER: Final = UnsubscribeInfo(2000, "server unsubscribe")
    INSUFFICIENT_STATE: Final = UnsubscribeInfo(2500, "insufficient state")


_R = TypeVar("_R", ErrorInfo, DisconnectInfo, UnsubscribeInfo)


def _rows(table: type, kind: type[_R]) -> tuple[_R, ...]:
    return tuple(value for value in vars(table).values() if isinstance(value, kind))


# Every record of each table, in code order (for docs, tests and lookups).
ERRORS: Final = _rows(ErrorCode, ErrorInfo)
DISCONNECTS: Final = _rows(DisconnectCode, DisconnectInfo)
UNSUBSCRIBES: Final = _rows(UnsubscribeCode, UnsubscribeInfo)
