"""Channel names: ``namespace:name``; a channel without ``:`` belongs to ``default``.

User channels (Centrifugo's rules): ``#`` in a channel's name starts the list of the users
it belongs to, comma-separated: ``dm:room#alice,bob`` belongs to alice and bob. In a
namespace with ``allow_user_limited_channels`` only those users may subscribe to it (no
token needed). A user's *personal channel* is ``#<user>`` in the namespace
``user_personal_channel_namespace`` (``personal:#alice``), which every connection of the
user joins at connect when ``user_personal_channel`` is on.
"""

from __future__ import annotations

from tether.errors import ClientError
from tether.protocol.codes import ErrorCode

NAMESPACE_SEPARATOR = ":"
DEFAULT_NAMESPACE = "default"
USER_SEPARATOR = "#"
USERS_SEPARATOR = ","


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


def channel_users(channel: str) -> frozenset[str] | None:
    """The users a user channel belongs to: the comma-separated names after its last
    ``#`` (``dm:x#alice,bob`` -> alice, bob); None for a channel without ``#``. Empty
    names in the list are no user."""
    _, sep, users = channel.rpartition(USER_SEPARATOR)
    if not sep:
        return None
    return frozenset(u for u in users.split(USERS_SEPARATOR) if u)


def personal_channel(user: str, namespace: str) -> str:
    """The personal channel of ``user`` in ``namespace`` (``""``: the default one)."""
    name = USER_SEPARATOR + user
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name
