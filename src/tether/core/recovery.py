"""Recovery: give a resubscribing client exactly what it missed, or tell it it cannot.

Rules (protocol v2, and docs/explanation/recovery.md):

* The client sends the last position it saw, ``(offset, epoch)``.
* If the stream still holds every publication after that offset in the same epoch, and
  there are at most ``cap`` of them, the client gets them and ``recovered: true``.
* Otherwise (trimmed, expired, another epoch, or too many missed) it gets no publications,
  ``recovered: false`` and the stream's current position: the loss is reported, never silent.
"""

from __future__ import annotations

from tether.brokers.base import Broker, StreamPosition
from tether.errors import UnrecoverablePosition
from tether.protocol.messages import Publication


async def recover(
    broker: Broker, channel: str, since: StreamPosition, cap: int
) -> tuple[list[Publication], StreamPosition, bool]:
    """Returns ``(publications, top position, recovered)``."""
    try:
        page = await broker.history(channel, since=since, limit=cap + 1)
    except UnrecoverablePosition:
        page = await broker.history(channel, limit=0)
        return [], page.position, False
    if len(page.publications) > cap:
        return [], page.position, False
    return page.publications, page.position, True
