"""Tether's exception tree, split by what the caller can do about it.

* :class:`ProtocolViolation`: the remote peer broke the protocol. Close it (code 3501).
* :class:`ClientError`: a well-formed request that cannot be served. Answer it with the
  error code it carries; the connection stays.
* :class:`DisconnectRequested`: the connection must end with the code it carries.
* :class:`UnrecoverablePosition`: a history/recovery position the stream no longer holds.
* :class:`BrokerUnavailable`: the broker could not be reached; temporary, retry later.
* :class:`ConfigError`: the configuration is invalid; the message names the key.
* :class:`TokenError`: a token is invalid (or expired, see ``expired``).
"""

from __future__ import annotations

from tether.protocol.codes import DisconnectInfo, ErrorCode, ErrorInfo


class TetherError(Exception):
    """Root of every error Tether raises on purpose."""


class ProtocolViolation(TetherError):
    """The peer sent something the protocol does not allow (malformed frame, bad order)."""


class ClientError(TetherError):
    """A request that gets an error reply with a protocol error code."""

    def __init__(self, error: ErrorInfo, message: str | None = None) -> None:
        self.code = error.code
        self.message = message or error.message
        self.temporary = error.temporary
        super().__init__(f"{self.code}: {self.message}")


class DisconnectRequested(TetherError):
    """The connection must be closed with ``disconnect`` (``reason`` overrides its own)."""

    def __init__(self, disconnect: DisconnectInfo, reason: str | None = None) -> None:
        self.disconnect = disconnect.because(reason) if reason else disconnect
        super().__init__(f"{self.disconnect.code}: {self.disconnect.reason}")


class UnrecoverablePosition(ClientError):
    """The stream no longer holds everything after a position (trimmed, expired, new epoch)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(ErrorCode.UNRECOVERABLE_POSITION, message)


class BrokerUnavailable(TetherError):
    """The broker did not answer; the operation may succeed later."""


class ConfigError(TetherError):
    """Invalid configuration. The message names the key and what is expected."""


class TokenError(TetherError):
    """A connection or subscription token that cannot be accepted."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        self.expired = expired
        super().__init__(message)
