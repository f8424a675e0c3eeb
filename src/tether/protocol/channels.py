"""Channel names: ``namespace:name``; a channel without ``:`` belongs to ``default``."""

from __future__ import annotations

from tether.errors import ClientError
from tether.protocol.codes import ErrorCode

NAMESPACE_SEPARATOR = ":"
DEFAULT_NAMESPACE = "default"


def namespace_of(channel: str) -> str:
    """The namespace a channel belongs to (``chat:room1`` -> ``chat``, ``room1`` -> default)."""
    ns, sep, _ = channel.partition(NAMESPACE_SEPARATOR)
    return ns if sep else DEFAULT_NAMESPACE


def check_channel_name(channel: str, *, max_length: int) -> None:
    """Raise ``ClientError(BAD_REQUEST)`` for an empty, too long or control-character name."""
    if not channel:
        raise ClientError(ErrorCode.BAD_REQUEST, "channel required")
    if len(channel) > max_length:
        raise ClientError(ErrorCode.BAD_REQUEST, f"channel name longer than {max_length}")
    if not channel.isprintable():
        raise ClientError(ErrorCode.BAD_REQUEST, "channel name has unprintable characters")
