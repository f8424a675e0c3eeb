"""Channel operations: every rule about a channel, for client sessions and the server API.

Namespace resolution (unknown channel 102, bad name 107), joining and leaving (with the
single-flight broker subscribe, presence, join/leave pushes), the subscribe result with
recovery, publish with lane admission, history, presence, and the delivery of what the
broker hears to the hub.

The recovery invariant lives here, in :mod:`tether.core.hub` and in
:mod:`tether.core.recovery`, and nowhere else: a subscriber that recovers gets every
publication after its position exactly once, whether it was published before its
history read, during it, or after (docs/explanation/recovery.md, guarded by
``tests/unit/test_recovery_invariant.py``). It holds because :meth:`Channels.join`

1. adds the member to the hub as *pending* before anything is read, so every
   publication delivered from then on is buffered for it, with its offset;
2. makes sure the broker subscription is active (the first local subscriber makes it,
   every other one waits for that same subscribe: single flight) before reading the
   stream, so nothing published after the read can be missed;
3. reads the stream (through the recovery cache, :func:`~tether.core.recovery.recover`)
   and returns the offset the reply brings the client to;

and the caller sends the reply and calls :meth:`Channels.go_live` with no await in
between, which replays the buffered publications above that offset and nothing else
(:meth:`tether.core.hub.Hub.go_live`). :meth:`Channels.deliver` keeps the recovery
cache's tail current with what the hub delivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import msgspec
import structlog

from tether.brokers.base import (
    Broker,
    PresenceStore,
    PublishItem,
    PublishOptions,
    PublishResult,
    StreamPosition,
    publish_all,
)
from tether.config import Config, NamespaceConfig
from tether.core.flight import Flight
from tether.core.hooks import Events
from tether.core.hub import Hub, Member
from tether.core.lanes import Lane, LaneGate
from tether.core.recovery import RecoveryCache, recover
from tether.errors import BrokerUnavailable, ClientError
from tether.protocol.channels import check_channel_name, namespace_of
from tether.protocol.codes import ErrorCode
from tether.protocol.messages import (
    ClientInfo,
    HistoryResult,
    Join,
    Leave,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    Push,
    SubscribeRequest,
    SubscribeResult,
)
from tether.protocol.messages import StreamPosition as WirePosition
from tether.protocol.session import SubscriptionEvent, SubscriptionState, next_subscription_state

log = structlog.get_logger("tether.channels")

FLAG_REJECT_UNRECOVERED = 2
"""Subscribe flag bit of the protocol (SubscribeRequest.flag): refuse (error 112) rather
than subscribe when the missed publications cannot all be recovered."""

COALESCE_TAG = "coalesce_key"

RECOVERY_OUTCOMES = ("recovered", "not_recovered", "failed")
"""What a subscribe asking to recover got: everything missed (``recovered: true``); the
stream no longer holds it, or more than ``recovery_max_publications`` (``recovered:
false``, the loss reported); the broker could not be read (error 100, the SDK retries)."""
"""Publication tag carrying an ephemeral publication's coalescing key."""


class PublishRequest(NamedTuple):
    """One publish of :meth:`Channels.publish_many` (the arguments of :meth:`Channels.publish`)."""

    channel: str
    data: bytes
    info: ClientInfo | None = None
    idempotency_key: str = ""
    tags: dict[str, str] | None = None
    skip_history: bool = False
    coalesce_key: str = ""
    delta: bool = False


@dataclass(slots=True)
class Subscription:
    """One channel of one connection. Its life is the table in
    :mod:`tether.protocol.session`: PENDING (in the hub, buffering, while its stream is
    read) -> LIVE (reply sent) -> GONE."""

    channel: str
    namespace: NamespaceConfig
    info: ClientInfo
    expire_at: float | None = None
    state: SubscriptionState = SubscriptionState.PENDING
    server_side: bool = False
    """Made by the server (token ``channels`` claim, API subscribe), not by the client."""
    joined: bool = False
    """A join was published for it, so leaving publishes a leave."""
    delta: bool = False
    """It negotiated delta compression (``delta: "fossil"``, allowed by the namespace)."""

    def on(self, event: SubscriptionEvent) -> None:
        """Move on by ``event``; raises LocalProtocolError if the table forbids it."""
        self.state = next_subscription_state(self.state, event)

    @property
    def live(self) -> bool:
        return self.state is SubscriptionState.LIVE

    @property
    def lane(self) -> Lane:
        return Lane.named(self.namespace.lane)

    @property
    def resubscribable(self) -> bool:
        """The client can resubscribe it and recover what it missed."""
        return not self.server_side and self.namespace.recover


class ChannelMember(Member, Protocol):
    """A subscriber as the channel operations see it: a hub member with a client ID (the
    key of its presence entry)."""

    @property
    def id(self) -> str: ...


M = TypeVar("M", bound=ChannelMember)

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
"""Runs a coroutine as a task its owner (the node) cancels on close."""


class Channels(Generic[M]):
    """The channel operations of one node over its broker, presence store and hub."""

    def __init__(
        self,
        config: Config,
        broker: Broker,
        presence: PresenceStore,
        hub: Hub[M],
        recovery: RecoveryCache,
        spawn: Spawn,
    ) -> None:
        self._config = config
        self._broker = broker
        self._presence = presence
        self._hub = hub
        self._spawn = spawn
        self.recovery = recovery
        self.events: Events | None = None
        """Told of every publication stored here (webhooks, offline push), or None."""
        self.lanes = LaneGate(config.lane_publish_limits)
        """Publishes in flight per lane; ``lanes.shed``: refused because it was full."""
        self.recoveries = dict.fromkeys(RECOVERY_OUTCOMES, 0)
        """Subscribes that asked to recover, by outcome (see RECOVERY_OUTCOMES)."""
        self._subscribing: dict[str, Flight[None]] = {}
        self._leaving: dict[tuple[str, str], asyncio.Task[None]] = {}
        """(channel, client id) -> the task finishing that subscription's leave."""

    # -- rules ------------------------------------------------------------------------

    def namespace(self, channel: str) -> NamespaceConfig:
        """Options of the channel's namespace. Raises ClientError (102, 107)."""
        check_channel_name(channel, max_length=self._config.max_channel_length)
        ns = self._config.namespace(namespace_of(channel))
        if ns is None:
            raise ClientError(ErrorCode.UNKNOWN_CHANNEL)
        return ns

    def lane(self, channel: str) -> Lane:
        """The channel's lane (standard for a channel of no configured namespace)."""
        ns = self._config.namespace(namespace_of(channel))
        return Lane.named(ns.lane) if ns is not None else Lane.STANDARD

    # -- joining and leaving ----------------------------------------------------------

    async def _ensure_broker_subscribed(self, channel: str, first: bool) -> None:
        if first:
            flight: Flight[None] = Flight()
            self._subscribing[channel] = flight
            try:
                await self._broker.subscribe(channel)
            finally:
                del self._subscribing[channel]
                flight.finish(None)
        elif (making := self._subscribing.get(channel)) is not None:
            # Another subscriber is making the broker subscription: reading the stream
            # before it is active could miss a publication.
            await making.wait()

    async def join(
        self, member: M, sub: Subscription, request: SubscribeRequest
    ) -> tuple[SubscribeResult, int]:
        """Join ``member`` to ``sub.channel`` as pending and build its subscribe result
        (steps 1-3 of the module docstring). Raises ClientError (112 with
        FLAG_REJECT_UNRECOVERED), BrokerUnavailable.

        Returns the result and the offset it brings the client to. The caller sends the
        result, then calls :meth:`go_live` with no await in between; if this raises, the
        caller calls :meth:`leave`.
        """
        channel, ns = sub.channel, sub.namespace
        # Delta compression: granted when the namespace allows the type asked for; any
        # other request subscribes without it (the SDK then applies no delta).
        sub.delta = bool(request.delta) and request.delta in ns.allowed_delta_types
        first = self._hub.add_pending(channel, member, delta=sub.delta)
        leaving = self._leaving.get((channel, member.id))
        if leaving is not None:
            # The same client left this channel a moment ago: its presence remove and
            # leave push must land before this join's add and join push, or the late
            # remove deletes the new entry and the old leave follows the new join.
            await asyncio.wait([leaving])
        await self._ensure_broker_subscribed(channel, first)
        has_history = ns.history_size > 0
        recoverable = has_history and (ns.recover or request.recoverable)
        positioned = has_history and (recoverable or request.positioned)
        result = SubscribeResult()
        after = 0
        if positioned:
            if recoverable and request.recover:
                since = StreamPosition(request.offset, request.epoch)
                try:
                    pubs, position, recovered = await recover(
                        self.recovery,
                        channel,
                        since,
                        cap=self._config.recovery_max_publications,
                        size=ns.history_size,
                        ttl=ns.history_ttl,
                    )
                except BrokerUnavailable:
                    self.recoveries["failed"] += 1
                    raise
                self.recoveries["recovered" if recovered else "not_recovered"] += 1
                if not recovered and request.flag & FLAG_REJECT_UNRECOVERED:
                    raise ClientError(ErrorCode.UNRECOVERABLE_POSITION)
                if sub.delta:  # recovered publications are full, in the delta form
                    codec = member.wire_format.codec
                    pubs = [codec.delta_publication(p, None) for p in pubs]
                result.publications = pubs
                result.recovered = recovered
                result.was_recovering = True
            else:
                position = (await self._broker.history(channel, limit=0)).position
            result.recoverable = recoverable
            result.positioned = positioned
            result.offset, result.epoch = position.offset, position.epoch
            after = position.offset
        result.delta = sub.delta
        if ns.presence:
            await self._presence.add(channel, member.id, sub.info)
        if ns.join_leave:
            await self._broker.publish_join(channel, sub.info)
            sub.joined = True
        return result, after

    def go_live(self, member: M, sub: Subscription, after_offset: int) -> None:
        """The reply went out: ``sub`` is live, and what was buffered for it above
        ``after_offset`` is delivered first."""
        sub.on(SubscriptionEvent.REPLIED)
        self._hub.go_live(
            sub.channel, member, after_offset=after_offset, lane=sub.lane, delta=sub.delta
        )

    def leave(self, member: M, sub: Subscription) -> None:
        """Remove ``member`` from the channel now; presence, leave push and broker
        unsubscribe follow in a task the node owns."""
        self._hub.remove(sub.channel, member)
        if not (sub.namespace.presence or sub.joined) and self._hub.has_local(sub.channel):
            # Nothing to take back (no presence entry, no join pushed), and the broker
            # subscription stays for the others: a reconnection storm leaves group
            # channels this way thousands of times, without a task each.
            return
        key = (sub.channel, member.id)
        task = self._spawn(self._after_leave(sub, member.id), "leave")
        self._leaving[key] = task
        task.add_done_callback(lambda done: self._leave_done(key, done))

    def _leave_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._leaving.get(key) is task:
            del self._leaving[key]

    async def _after_leave(self, sub: Subscription, client_id: str) -> None:
        channel, ns = sub.channel, sub.namespace
        try:
            if ns.presence:
                await self._presence.remove(channel, client_id)
            if sub.joined:  # never a leave for a subscribe that failed before its join
                await self._broker.publish_leave(channel, sub.info)
        except BrokerUnavailable as exc:
            # Expected while the broker is away (no traceback: a storm of them would starve
            # the loop). The presence entry lapses after presence_ttl, since nobody
            # refreshes it; the leave push is lost (pushes are not recoverable). The broker
            # unsubscribe below must still happen.
            log.warning("leave not propagated", channel=channel, error=str(exc))
        # Checked right before the call (same tick): a subscriber that arrived meanwhile
        # keeps the broker subscription.
        if not self._hub.has_local(channel):
            self.recovery.drop(channel)
            await self._broker.unsubscribe(channel)

    async def refresh_presence(self, entries: Iterable[tuple[str, Subscription]]) -> None:
        """Re-add the presence entry of each ``(client id, subscription)`` in a namespace
        with presence. Raises BrokerUnavailable (the round stops there)."""
        for client_id, sub in entries:
            if sub.namespace.presence:
                await self._presence.add(sub.channel, client_id, sub.info)

    # -- what the broker hears ----------------------------------------------------------

    def deliver(self, channel: str, publication: Publication) -> None:
        """A publication from the broker: the recovery cache's tail first, then every
        local subscriber through the hub (ephemeral ones coalesced by their key; as a
        fossil delta to those that negotiated it, in a namespace with delta_publish or when
        its publisher asked: the broker then hands it over with ``delta`` set, a flag
        this clears, since from here on ``delta`` means the wire's "data is a delta")."""
        asked_delta = publication.delta
        if asked_delta:
            publication.delta = False  # a copy of the broker's own: the stream's is clear
        self.recovery.on_publication(channel, publication)
        ns = self._config.namespace(namespace_of(channel))
        lane = Lane.named(ns.lane) if ns is not None else Lane.STANDARD
        key = None
        if lane.coalesced and publication.tags:
            key = publication.tags.get(COALESCE_TAG)
        delta = asked_delta or (ns is not None and ns.delta_publish)
        self._hub.broadcast_publication(channel, publication, lane, key, delta=delta)

    def deliver_join(self, channel: str, info: ClientInfo) -> None:
        push = Push(channel=channel, join=Join(info=info))
        self._hub.broadcast_push(channel, push, self.lane(channel))

    def deliver_leave(self, channel: str, info: ClientInfo) -> None:
        push = Push(channel=channel, leave=Leave(info=info))
        self._hub.broadcast_push(channel, push, self.lane(channel))

    def resync(self, channel: str) -> list[M]:
        """The broker may have missed publications of ``channel``: forget the cached tail
        and return the local subscribers, who must each recover from the stream."""
        self.recovery.drop(channel)
        return self._hub.subscribers(channel)

    # -- operations shared by client sessions and the server API ------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        coalesce_key: str = "",
        delta: bool = False,
    ) -> PublishResult:
        """Publish raw JSON ``data``. Raises ClientError, BrokerUnavailable.

        ``skip_history`` delivers without storing (offset 0, not recoverable).
        ``coalesce_key`` (ephemeral lane only): frames with the same key replace each
        other within an ephemeral window and in a slow client's queue (newest wins).
        ``delta``: delivered as a fossil delta to the subscribers that negotiated one, as
        the namespace's ``delta_publish`` does for every publication.
        Refused with error 111 (temporary) before any work when the channel's lane
        already has its limit of publishes in flight (load shedding)."""
        request = PublishRequest(
            channel, data, info, idempotency_key, tags, skip_history, coalesce_key, delta
        )
        lane, item = self._admit(request)
        try:
            result = await self._broker.publish(*item)
        finally:
            self.lanes.leave(lane)
        self._published(request, result)
        return result

    async def publish_many(
        self, requests: Sequence[PublishRequest]
    ) -> list[PublishResult | ClientError]:
        """Several publishes, in order, as :meth:`publish` one after another would (each
        admitted or refused on its own: a refusal is its ClientError in the list), sent
        to the broker at once (:func:`~tether.brokers.base.publish_all`: one round trip
        on Redis, so the publications reach subscribers in one tick). Raises
        BrokerUnavailable."""
        out: list[PublishResult | ClientError | None] = []
        admitted: list[tuple[int, Lane, PublishItem]] = []
        for request in requests:
            try:
                lane, item = self._admit(request)
            except ClientError as exc:
                out.append(exc)
                continue
            admitted.append((len(out), lane, item))
            out.append(None)
        try:
            results = await publish_all(self._broker, [item for _, _, item in admitted])
        finally:
            for _, lane, _ in admitted:
                self.lanes.leave(lane)
        for (i, _, _), result in zip(admitted, results, strict=True):
            out[i] = result
            self._published(requests[i], result)
        return [answer for answer in out if answer is not None]

    def _admit(self, request: PublishRequest) -> tuple[Lane, PublishItem]:
        """The namespace's checks and the lane's admission (entered: the caller leaves
        it), and what to hand the broker. Raises ClientError."""
        ns = self.namespace(request.channel)
        lane = Lane.named(ns.lane)
        if not self.lanes.enter(lane):
            raise ClientError(ErrorCode.TOO_MANY_REQUESTS, f"{lane} lane is saturated")
        tags = request.tags
        if request.coalesce_key and lane.coalesced:
            tags = {**(tags or {}), COALESCE_TAG: request.coalesce_key}
        publication = Publication(
            data=msgspec.Raw(request.data), info=request.info, tags=tags or None
        )
        options = PublishOptions(
            history_size=0 if request.skip_history else ns.history_size,
            history_ttl=ns.history_ttl,
            idempotency_key=request.idempotency_key,
            idempotency_ttl=self._config.idempotency_ttl,
            wait_replicas=ns.wait_replicas,
            wait_timeout=ns.wait_timeout,
            delta=request.delta,
        )
        return lane, PublishItem(request.channel, publication, options)

    def _published(self, request: PublishRequest, result: PublishResult) -> None:
        if self.events is not None and not result.duplicate:
            position = result.position
            self.events.published(
                request.channel, request.data, request.info, position.offset, position.epoch
            )

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: WirePosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """A page of the channel's stream. Raises ClientError (108 without history),
        UnrecoverablePosition, BrokerUnavailable."""
        ns = self.namespace(channel)
        if ns.history_size == 0:
            raise ClientError(ErrorCode.NOT_AVAILABLE, "history is off in this namespace")
        max_limit = self._config.history_max_limit
        limit = max_limit if limit < 0 or limit > max_limit else limit
        position = StreamPosition(since.offset, since.epoch) if since is not None else None
        page = await self._broker.history(channel, since=position, limit=limit, reverse=reverse)
        return HistoryResult(
            publications=page.publications,
            epoch=page.position.epoch,
            offset=page.position.offset,
        )

    async def remove_history(self, channel: str) -> None:
        self.namespace(channel)
        self.recovery.drop(channel)
        await self._broker.remove_history(channel)

    def _check_presence(self, channel: str) -> None:
        if not self.namespace(channel).presence:
            raise ClientError(ErrorCode.NOT_AVAILABLE, "presence is off in this namespace")

    async def presence(self, channel: str) -> PresenceResult:
        self._check_presence(channel)
        entries = await self._presence.get(channel)
        if len(entries) > self._config.max_presence_entries:
            raise ClientError(ErrorCode.LIMIT_EXCEEDED, "too many presence entries")
        return PresenceResult(presence=entries)

    async def presence_stats(self, channel: str) -> PresenceStatsResult:
        self._check_presence(channel)
        clients, users = await self._presence.stats(channel)
        return PresenceStatsResult(num_clients=clients, num_users=users)
