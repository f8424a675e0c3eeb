"""The Broker and PresenceStore contracts every implementation keeps.

A node talks to exactly one Broker (channels, streams, fan-out between nodes) and one
PresenceStore (who is subscribed where). The embedded :mod:`memory` implementations serve
a single node; the Redis ones (issue 4) serve many. Every implementation must pass the
contract suite in :mod:`tether.testing.broker_contract`.

Streams. A channel whose namespace keeps history is a stream: every publication gets the
next ``offset`` (1, 2, 3, ...), and the stream has an ``epoch``, a string that changes
whenever the stream's continuity is lost (the stream expired, was removed, or the broker
lost its memory, as an in-memory broker does on restart). A position ``(offset, epoch)``
names a point in one stream; a position whose epoch differs from the stream's is in no
stream at all. Channels without history have no stream: their publications carry offset 0.

Fencing. A broker that may have lost acknowledged writes (a Redis failover to a replica
that lagged, a restart without persistence) gives every affected stream a new epoch
before it stores any publication under an offset it may have handed out already, so that
a position names one publication, ever. A stream fenced that way remembers where its
previous epoch ended on the surviving store (:attr:`HistoryPage.fence`): the publications
up to that offset are the same in both epochs, so a position of the previous epoch at or
below it continues in the new one; a position above it saw writes that are gone
(:class:`FencedPosition`). The rule and why it is race-free: docs/explanation/recovery.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from tether.errors import UnrecoverablePosition
from tether.protocol.messages import ClientInfo, Publication


class StreamPosition(NamedTuple):
    offset: int
    epoch: str


class PublishOptions(NamedTuple):
    history_size: int = 0
    """Keep at most this many publications (0: keep none, publication gets offset 0)."""
    history_ttl: float = 0
    """Seconds the stream's publications live after the latest publish."""
    idempotency_key: str = ""
    """If set, a publish with the same key on the same channel within ``idempotency_ttl``
    stores nothing, delivers nothing, and returns the first publish's position."""
    idempotency_ttl: float = 300
    wait_replicas: int = 0
    """Replicated stores: answer only once this many replicas hold the publication, or
    raise ``BrokerUnavailable`` after ``wait_timeout`` seconds (it may then be stored
    but not replicated: retry with the same idempotency key). 0: do not wait."""
    wait_timeout: float = 0.5
    delta: bool = False
    """Deliver it as a fossil delta to the subscribers that negotiated one (the server
    API's per-publish ``delta``): the publication reaches the event handler with
    ``delta=True``; what the stream stores and history returns never carries the flag."""


class PublishResult(NamedTuple):
    position: StreamPosition
    duplicate: bool
    """True when the idempotency key matched an earlier publish (nothing was stored)."""


class PublishItem(NamedTuple):
    """One publish of :meth:`BatchPublisher.publish_many`."""

    channel: str
    publication: Publication
    options: PublishOptions


class HistoryPage(NamedTuple):
    publications: list[Publication]
    position: StreamPosition
    """The stream's top: offset of its latest publication, and its epoch."""
    fence: StreamPosition | None = None
    """Set when the stream was fenced: the previous epoch and the top offset it had on the
    store that survived. Positions of that epoch up to that offset continue in this one."""


class FencedPosition(UnrecoverablePosition):
    """The position is in the stream's previous epoch, past what survived a possible loss
    of writes: the client saw publications the stream no longer has. ``resume`` is the
    position in the current epoch from which everything stored since the fence follows
    (what the client must still be given, with ``recovered: false``)."""

    def __init__(self, resume: StreamPosition) -> None:
        super().__init__("position is past what survived a broker failover")
        self.resume = resume


def select_history(
    publications: Sequence[Publication],
    top: StreamPosition,
    *,
    since: StreamPosition | None,
    limit: int,
    reverse: bool,
    fence: StreamPosition | None = None,
) -> HistoryPage:
    """The history rules every stream store shares, applied to the publications it still
    holds (oldest first, contiguous up to ``top``). Raises UnrecoverablePosition when
    ``since`` is in another epoch, ahead of the stream, or older than what is held;
    :class:`FencedPosition` when it is in the ``fence``'s epoch past the fence. A
    position of the fence's epoch at or below it is read as the same offset of ``top``'s
    epoch (see the module docstring, "Fencing").

    An empty ``since.epoch`` means any epoch (Centrifugo v6): the SDKs' ``getState`` flow
    subscribes with ``recover``, offset 0 and no epoch to get everything the stream holds."""
    selected: list[Publication]
    if since is not None and fence is not None and since.epoch == fence.epoch != top.epoch:
        if since.offset > fence.offset:
            raise FencedPosition(StreamPosition(fence.offset, top.epoch))
        since = StreamPosition(since.offset, top.epoch)
    if since is not None:
        if (since.epoch and since.epoch != top.epoch) or since.offset > top.offset:
            raise UnrecoverablePosition("position is not in the stream (other epoch)")
        first = publications[0].offset if publications else top.offset + 1
        if since.offset + 1 < first:
            raise UnrecoverablePosition("publications after the position are gone")
        selected = [p for p in publications if p.offset > since.offset]
    else:
        selected = list(publications)
    if reverse:
        selected.reverse()
    if limit >= 0:
        selected = selected[:limit]
    return HistoryPage(selected, top, fence)


class BrokerEventHandler(Protocol):
    """What a broker calls on the node, on the event loop, never concurrently."""

    def on_publication(self, channel: str, publication: Publication) -> None:
        """A publication for a channel this node subscribed to. Per channel, calls come in
        offset order, each publication exactly once. ``publication.delta`` is set when it
        was published with ``PublishOptions.delta`` (the handler's own copy: it may clear
        it)."""

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_resync(self, channels: set[str]) -> None:
        """The broker was deaf for a while (its subscriber connection broke and is back):
        publications of these channels may have been missed. The node must make every
        local subscriber catch up from the stream, or tell it that it cannot."""


class Broker(Protocol):
    """Channels, streams and fan-out between nodes.

    Contract (each point is a test in the contract suite):

    * ``publish`` is atomic: the idempotency check, the offset increment, the append to
      the stream and the delivery to subscribed nodes happen together or not at all. When it
      returns, the publication is in the stream (if the channel keeps history); when it
      raises :class:`~tether.errors.BrokerUnavailable`, nothing was stored or delivered
      that the caller may count on, and retrying with the same idempotency key is safe.
    * Per channel, publications reach every subscribed node's handler in offset order,
      exactly once, with no gaps while the node stays subscribed.
    * ``history`` and ``position`` never run ahead of delivery: when they return top
      offset N for a channel this node subscribes to, every publication up to N has already
      been handed to the handler. (The recovery invariant rests on this.)
    * ``history(since=...)`` returns the publications after ``since`` in offset order, or
      raises :class:`~tether.errors.UnrecoverablePosition` when the stream no longer holds
      all of them (trimmed, expired, or another epoch).
    * Reading a stream (``history``) that does not exist yet creates it, empty: the epoch
      that read reports is the epoch its first publication gets (a subscriber positioned
      on an empty channel must not be told "new epoch" by the first publication).
    * A stream's publications expire ``history_ttl`` seconds after its latest publish; the
      stream's offset and epoch are kept for ``meta_ttl`` seconds; after that the stream
      restarts at offset 1 with a new epoch.
    * Fencing: when the store loses acknowledged writes (failover, restart), no
      publication stored afterwards gets a position handed out before, whichever node
      publishes first; a position past what survived raises ``UnrecoverablePosition``.
    """

    @property
    def healthy(self) -> bool:
        """False while the broker cannot deliver (readiness turns false)."""

    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect; from now on deliver events of subscribed channels to ``handler``."""

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """This node has local subscribers of ``channel``: deliver its events here. When it
        returns, every later publish to the channel reaches the handler. Subscribe and
        unsubscribe calls take effect in the order they are made."""

    async def unsubscribe(self, channel: str) -> None:
        """This node has no local subscriber of ``channel`` any more."""

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> PublishResult:
        """Store (if history is kept) and deliver ``publication``; its ``offset`` is
        assigned here. Raises ``BrokerUnavailable``."""

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> HistoryPage:
        """Up to ``limit`` publications (0: none, only the position; -1: all) from the
        start of the stream (or after ``since``), newest first if ``reverse``.
        Raises ``UnrecoverablePosition`` (only with ``since``), ``BrokerUnavailable``."""

    async def remove_history(self, channel: str) -> None:
        """Drop the stream's publications (the offset and epoch stay)."""

    async def channels(self) -> set[str]:
        """Channels with subscribers on this node (the memory broker) or on any node."""


@runtime_checkable
class BatchPublisher(Protocol):
    """A broker that can publish several publications in one round trip (optional: use
    :func:`publish_all`, which falls back to one :meth:`Broker.publish` after another)."""

    async def publish_many(self, items: Sequence[PublishItem]) -> list[PublishResult]:
        """Publish ``items`` in order, as the same number of :meth:`Broker.publish` calls
        one after another would: each keeps ``publish``'s contract, and the publications
        of one channel get their offsets (and reach subscribers) in the order given.
        Raises ``BrokerUnavailable`` if any of them could not be confirmed; any of them
        may then be stored, as a single ``publish`` that raises it may be."""
        ...


async def publish_all(broker: Broker, items: Sequence[PublishItem]) -> list[PublishResult]:
    """:meth:`BatchPublisher.publish_many` on ``broker`` if it has it, else one
    :meth:`Broker.publish` after another."""
    if len(items) > 1 and isinstance(broker, BatchPublisher):
        return await broker.publish_many(items)
    return [await broker.publish(*item) for item in items]


class PresenceStore(Protocol):
    """Who is subscribed to a channel, keyed by client ID.

    Contract: ``add`` is idempotent (a second add refreshes the entry); ``remove`` of an
    absent entry is not an error; an entry that is not refreshed within the store's TTL
    disappears (for stores shared by nodes, so a dead node's clients vanish).
    """

    ttl: float | None
    """Seconds an entry lives unless added again (the owning node refreshes its entries
    every ttl/3); None: entries live until removed."""

    async def add(self, channel: str, client_id: str, info: ClientInfo) -> None: ...

    async def remove(self, channel: str, client_id: str) -> None: ...

    async def get(self, channel: str) -> dict[str, ClientInfo]: ...

    async def stats(self, channel: str) -> tuple[int, int]:
        """``(num_clients, num_users)`` of the channel."""

    async def close(self) -> None: ...
