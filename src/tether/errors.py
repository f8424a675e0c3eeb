"""Tether's exception tree, split by what the caller can do about it.

::

    TetherError                   every error Tether raises on purpose
    ├── PeerError                 the peer broke a protocol: close it, blame it
    │   ├── ProtocolViolation     the Centrifugo protocol: close with 3501
    │   └── WebSocketError        RFC 6455: close with its ``code`` (1002, 1007, 1009)
    ├── HandshakeError            the upgrade is refused: answer its HTTP ``status``
    ├── ClientError               a request that cannot be served: answer its error code,
    │   │                         the connection stays
    │   ├── UnrecoverablePosition the stream no longer holds a position (112)
    │   └── ApiError              a server API request answered with an HTTP status too
    ├── DisconnectRequested       the connection must end with the code it carries
    ├── TokenError                a token is invalid (or expired, see ``expired``)
    ├── BrokerUnavailable         the broker did not answer: temporary, retry later
    ├── BackendUnavailable        a backend hook could not be checked: temporary
    ├── ConfigError               the configuration is invalid: the message names the key
    └── InternalError             Tether's own bug: log it with its traceback, close with
        └── LocalProtocolError    3004 (a reply: 100); never blame the peer for it

The split between :class:`PeerError` and :class:`LocalProtocolError` is h11's: a rule
broken by the remote side is answered to it (3501 tells the SDK its frames are wrong and
not to reconnect); a rule broken by our own code, such as an illegal transition of the
connection state machine, is an internal error the client can do nothing about, so it
gets the reconnect advice of 3004 "internal server error".
"""

from __future__ import annotations

from tether.protocol.codes import DisconnectInfo, ErrorCode, ErrorInfo

__all__ = [
    "ApiError",
    "BackendUnavailable",
    "BrokerUnavailable",
    "ClientError",
    "ConfigError",
    "DisconnectRequested",
    "HandshakeError",
    "InternalError",
    "LocalProtocolError",
    "PeerError",
    "ProtocolViolation",
    "TetherError",
    "TokenError",
    "UnrecoverablePosition",
    "WebSocketError",
]


class TetherError(Exception):
    """Root of every error Tether raises on purpose."""


class PeerError(TetherError):
    """The remote peer broke a protocol. Close the connection; nothing on our side is wrong."""


class ProtocolViolation(PeerError):
    """The peer sent something the Centrifugo protocol does not allow (malformed frame,
    command out of order): disconnect 3501 "bad request"."""


class WebSocketError(PeerError):
    """The peer broke RFC 6455; close the connection with the WebSocket ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class HandshakeError(TetherError):
    """The upgrade request is not acceptable now (malformed, wrong origin, node full or
    draining); answer with ``status`` and close. ``retry_after``: seconds for a
    ``Retry-After`` header (admission control)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{status}: {reason}")


class ClientError(TetherError):
    """A request that gets an error reply with a protocol error code."""

    def __init__(self, error: ErrorInfo, message: str | None = None) -> None:
        self.code = error.code
        self.message = message or error.message
        self.temporary = error.temporary
        super().__init__(f"{self.code}: {self.message}")


class UnrecoverablePosition(ClientError):
    """The stream no longer holds everything after a position (trimmed, expired, new epoch)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(ErrorCode.UNRECOVERABLE_POSITION, message)


class ApiError(ClientError):
    """A server API request answered with an HTTP ``status`` (400, 404) instead of 200,
    with the error code in the body."""

    def __init__(self, status: int, error: ErrorInfo, message: str) -> None:
        self.status = status
        super().__init__(error, message)


class DisconnectRequested(TetherError):
    """The connection must be closed with ``disconnect`` (``reason`` overrides its own)."""

    def __init__(self, disconnect: DisconnectInfo, reason: str | None = None) -> None:
        self.disconnect = disconnect.because(reason) if reason else disconnect
        super().__init__(f"{self.disconnect.code}: {self.disconnect.reason}")


class TokenError(TetherError):
    """A connection or subscription token that cannot be accepted."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        self.expired = expired
        super().__init__(message)


class BrokerUnavailable(TetherError):
    """The broker did not answer; the operation may succeed later."""


class BackendUnavailable(TetherError):
    """A backend hook could not be checked (timeout, refused, bad answer, breaker open,
    too many calls in flight); temporary, retry later. ``reason`` is one word for metrics
    and logs (see docs/howto/backend-hooks.md)."""

    def __init__(self, message: str, reason: str = "circuit_open") -> None:
        # The default is the circuit breaker's: it raises with a message only.
        self.reason = reason
        super().__init__(message)


class ConfigError(TetherError):
    """Invalid configuration. The message names the key and what is expected."""


class InternalError(TetherError):
    """Tether broke its own rule: a bug, never the peer's fault. Logged with its
    traceback; the connection closes with 3004 (the SDK reconnects)."""


class LocalProtocolError(InternalError):
    """Our side attempted what its own state machine forbids (an illegal transition)."""
