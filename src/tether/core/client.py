"""One client connection: the protocol session pumped over a transport.

The client owns its bounded outbound queue (framed bytes, flushed once per loop tick by
the node's :class:`~tether.core.transport.Flusher`) and the one task that runs its commands
in order. Fan-out reaches it only through the queue's enqueue and attach methods, which
never await and never change hub membership. What a queue over its bound does is the
overflow rule (:class:`~tether.core.outbound.OverflowPolicy`); the client is its
:class:`~tether.core.outbound.QueueOwner`: it says whether its standard lane can be
recovered, resubscribes it after a shed, and closes itself with 3008 when slow.

A client never sees the node: it is handed a :class:`SessionContext` (the registry that
counts and pings it, the channel operations, the queue limits, the config), so this
module imports nothing that imports it back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from tether import __version__
from tether.auth import verify_connection_token, verify_subscription_token
from tether.config import Config, NamespaceConfig
from tether.core.admission import TokenBucket
from tether.core.channels import Channels, Subscription
from tether.core.hooks import Backend, Connection, Events, ServerSubscription
from tether.core.lanes import may_shed_standard
from tether.core.outbound import OutboundQueue, QueueLimits
from tether.core.registry import ENDED_BY_CLIENT, Registry
from tether.errors import (
    BackendUnavailable,
    BrokerUnavailable,
    ClientError,
    DisconnectRequested,
    ProtocolViolation,
    TokenError,
)
from tether.protocol.channels import channel_users, namespace_of, personal_channel
from tether.protocol.codec import request_of
from tether.protocol.codes import DisconnectCode, DisconnectInfo, ErrorCode, UnsubscribeCode
from tether.protocol.messages import (
    ClientInfo,
    Command,
    ConnectRequest,
    ConnectResult,
    EmptyResult,
    Error,
    HistoryRequest,
    HistoryResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    Push,
    RefreshRequest,
    RefreshResult,
    Reply,
    RPCRequest,
    RPCResult,
    SendRequest,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribeRequest,
    SubscribeResult,
    Unsubscribe,
    UnsubscribeRequest,
)
from tether.protocol.session import (
    ConnectionState,
    SubscriptionEvent,
    advance,
    check_command_allowed,
)
from tether.randomness import uuid4

if TYPE_CHECKING:
    from tether.core.transport import ClientTransport, WireFormat

log = structlog.get_logger("tether.client")

REFRESH_RETRY = 5.0
"""Seconds between tries of a server-side refresh the backend could not answer."""


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What a client session may use of its node, and nothing else: one per node, shared
    by every client (the node builds it when it starts)."""

    config: Config
    registry: Registry[Client]
    """Where the connection is counted, pinged and its expiries watched."""
    channels: Channels[Client]
    """The channel operations: namespaces, join/leave, publish, history, presence."""
    queue_limits: QueueLimits
    """What every outbound queue of the node shares (bounds, flusher, counters)."""
    loop: asyncio.AbstractEventLoop
    clock: Callable[[], float]
    node_name: str
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    """Run a task the node owns (cancelled when it closes; failures logged)."""
    backend: Backend | None = None
    """The app's backend hooks (tether.core.hooks), or None."""
    events: Events | None = None
    """Where this node's connection events go (webhooks), or None."""
    forwarded_headers: frozenset[str] = frozenset()
    """Upgrade headers (lower-case) some backend hook forwards; a session keeps only
    these (``cookie`` among them when a hook forwards cookies)."""


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _forwarded(headers: Mapping[str, str] | None, names: frozenset[str]) -> Mapping[str, str]:
    """The ``headers`` named in ``names``: what the backend hooks may forward. Without
    hooks nothing is kept, so an idle connection does not carry its upgrade headers."""
    if not headers or not names:
        return _NO_HEADERS
    return {name: value for name, value in headers.items() if name in names}


class Client(OutboundQueue):
    __slots__ = (
        "__weakref__",
        "_inbox",
        "_publish_bucket",
        "_refreshers",
        "_worker",
        "awaiting_pong",
        "conn_info",
        "connected_at",
        "ctx",
        "expire_at",
        "headers",
        "id",
        "meta",
        "state",
        "subs",
        "user",
        "wire_format",
    )

    def __init__(
        self,
        ctx: SessionContext,
        transport: ClientTransport,
        wire_format: WireFormat,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(ctx.queue_limits, transport, owner=self)
        self.ctx = ctx
        self.wire_format = wire_format
        """The codec this connection speaks and its framing, chosen by the transport at
        the handshake: every reply and push to it is encoded and framed with it."""
        self.id = uuid4()  # one per connection: one per connect of a storm
        self.user = ""
        self.conn_info: msgspec.Raw | None = None
        self.state = ConnectionState.CONNECTING
        self.subs: dict[str, Subscription] = {}
        self.expire_at: float | None = None
        self.connected_at = ctx.clock()
        self.awaiting_pong = False
        self._publish_bucket: TokenBucket | None = None  # made at the first publish
        self._inbox: deque[Command] | None = None  # while commands wait for the worker
        self._worker: asyncio.Task[None] | None = None
        self.headers: Mapping[str, str] = _forwarded(headers, ctx.forwarded_headers)
        """The upgrade request's headers that a backend hook forwards (lower-case names);
        an idle connection keeps no others."""
        self.meta: bytes | None = None
        """``meta`` the connect hook returned, passed to every later hook."""
        self._refreshers: dict[str, asyncio.Task[None]] | None = None  # at the first

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.user!r} {self.state.value}>"

    def connection(self) -> Connection:
        """This connection as the backend hooks see it."""
        codec = self.wire_format.codec
        return Connection(
            client=self.id,
            user=self.user,
            protocol=codec.name,
            encoding="binary" if codec.binary else "json",
            headers=self.headers,
            meta=self.meta,
            remote=self.transport.remote,
        )

    # -- what the registry asks (tether.core.registry.Connection) -----------------------

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def subscription_expires_at(self, channel: str) -> float | None:
        sub = self.subs.get(channel)
        return sub.expire_at if sub is not None else None

    def ping(self) -> None:
        """Queue the heartbeat (urgent: never shed with the standard lane); any message
        from the client answers it."""
        self.awaiting_pong = True
        self.enqueue_urgent(self.wire_format.ping)

    # -- outbound (the queue itself is OutboundQueue) -----------------------------------

    def send_reply(self, reply: Reply) -> None:
        """Encode, frame and queue a reply to this client; it goes before every lane."""
        self.enqueue_urgent(self.wire_format.reply(reply))

    def send_push(self, push: Push) -> None:
        """Encode, frame and queue a push to this client; it goes before every lane."""
        self.enqueue_urgent(self.wire_format.push(push))

    # -- the queue's owner (QueueOwner: what the overflow rule asks of the connection) --

    def close_slow(self) -> None:
        log.info("slow client disconnected", client=self.id, user=self.user)
        self.close(DisconnectCode.SLOW)

    def can_recover_standard(self) -> bool:
        """The lane rule (:func:`~tether.core.lanes.may_shed_standard`) on the live
        subscriptions: a live critical one to keep, and every live standard one the
        client's own with recovery. After a shed each standard subscription gets an
        ``unsubscribe`` push 2500 and the SDK resubscribes from its position, recovering
        exactly what was dropped."""
        return may_shed_standard((s.lane, s.resubscribable) for s in self.subs.values() if s.live)

    def _standard_subs(self) -> list[Subscription]:
        return [s for s in self.subs.values() if s.live and s.lane.sheddable]

    def resubscribe_standard(self) -> None:
        """The tick after a shed: every live standard subscription is resubscribed (2500),
        or, if one can no longer be recovered (it went live meanwhile), the connection is
        closed as slow."""
        if self.state is ConnectionState.CLOSED:
            return
        subs = self._standard_subs()
        if not all(sub.resubscribable for sub in subs):
            self.close(DisconnectCode.SLOW)
            return
        for sub in subs:
            self.resubscribe(sub.channel)
        self.end_shedding()
        self.stats.standard_resubscribes += len(subs)
        log.info("standard lane shed", client=self.id, user=self.user, channels=len(subs))

    # -- lifecycle --------------------------------------------------------------------

    def close(self, disconnect: DisconnectInfo, reason: str | None = None) -> None:
        """Flush what is queued, close the transport with ``disconnect`` (``reason``, if
        given, instead of its own), release everything."""
        if self.state is ConnectionState.CLOSED:
            return
        self._release(str(disconnect.code), disconnect.code, reason or disconnect.reason)
        if disconnect.code != DisconnectCode.SLOW.code:
            self.flush(force=True)
        self.stop_queue()
        self.transport.close(disconnect.code, reason or disconnect.reason)

    def on_transport_closed(self) -> None:
        """The socket is gone (peer closed, network error, or after :meth:`close`)."""
        gone = DisconnectCode.CONNECTION_CLOSED
        self._release(ENDED_BY_CLIENT, gone.code, gone.reason)

    def _release(self, ended_by: str, code: int, reason: str) -> None:
        """``ended_by``: the registry's label for how it ended; ``code``, ``reason``: what
        the disconnect event says (3000 when the client went away)."""
        if self.state is ConnectionState.CLOSED:
            return
        was_connected = self.state is ConnectionState.CONNECTED
        self.state = advance(self.state, ConnectionState.CLOSED)
        self.ctx.registry.count_end(ended_by)
        for refresher in (self._refreshers or {}).values():
            if refresher is not asyncio.current_task():
                refresher.cancel()
        events = self.ctx.events
        if events is not None and was_connected:
            events.disconnected(self.connection(), code, reason)
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        self._inbox = None
        self.ctx.registry.forget(self)
        subs, self.subs = self.subs, {}
        for sub in subs.values():
            sub.on(SubscriptionEvent.LEFT)
            self.ctx.channels.leave(self, sub)

    # -- inbound ----------------------------------------------------------------------

    def on_message(self, data: bytes) -> None:
        """One complete message from the transport: any message answers a ping."""
        self.awaiting_pong = False
        if self.state is ConnectionState.CLOSED:
            return
        try:
            commands = self.wire_format.codec.decode_commands(
                data, max_commands=self.ctx.config.max_commands_per_frame
            )
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if not commands:
            return
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.extend(commands)
        if self._worker is None:
            self._worker = self.ctx.loop.create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._inbox:
                await self._dispatch(self._inbox.popleft())
        finally:
            self._worker = None
            if not self._inbox:
                # An empty deque keeps its 64-slot block (760 B): an idle connection,
                # which sent its commands long ago, holds none.
                self._inbox = None

    def _violation(self, exc: ProtocolViolation) -> None:
        log.info("protocol violation", client=self.id, user=self.user, reason=str(exc))
        self.close(DisconnectCode.BAD_REQUEST, _short(str(exc)))

    async def _dispatch(self, command: Command) -> None:
        name, request = request_of(command)
        try:
            check_command_allowed(self.state, name)
            reply = await self._handle(name, request, command.id)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        except DisconnectRequested as exc:
            self.close(exc.disconnect)
            return
        except ClientError as exc:
            reply = Reply(
                id=command.id,
                error=Error(code=exc.code, message=exc.message, temporary=exc.temporary),
            )
        except BrokerUnavailable as exc:
            log.warning("broker unavailable", client=self.id, command=name, error=str(exc))
            reply = Reply(
                id=command.id,
                error=Error(
                    code=ErrorCode.INTERNAL.code, message="broker unavailable", temporary=True
                ),
            )
        except BackendUnavailable as exc:
            # Never accepted unchecked: a temporary error, and the SDK retries (backoff).
            log.info("backend hook unavailable", client=self.id, command=name, reason=exc.reason)
            reply = Reply(
                id=command.id,
                error=Error(
                    code=ErrorCode.INTERNAL.code, message="backend unavailable", temporary=True
                ),
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # an InternalError too: our bug, not the client's (3004, not 3501)
            log.exception("command failed", client=self.id, command=name)
            self.close(DisconnectCode.SERVER_ERROR)
            return
        if reply is not None and command.id and self.state is not ConnectionState.CLOSED:
            self.send_reply(reply)

    async def _handle(self, name: str, request: object, cid: int) -> Reply | None:
        match name:
            case "connect":
                assert isinstance(request, ConnectRequest)
                await self._connect(request, cid)
                return None
            case "subscribe":
                assert isinstance(request, SubscribeRequest)
                await self._subscribe(request, cid)
                return None
            case "unsubscribe":
                assert isinstance(request, UnsubscribeRequest)
                self.unsubscribe(request.channel)
                return Reply(id=cid, unsubscribe=EmptyResult())
            case "publish":
                assert isinstance(request, PublishRequest)
                await self._publish(request)
                return Reply(id=cid, publish=EmptyResult())
            case "presence":
                assert isinstance(request, PresenceRequest)
                return Reply(id=cid, presence=await self._presence(request.channel))
            case "presence_stats":
                assert isinstance(request, PresenceStatsRequest)
                return Reply(id=cid, presence_stats=await self._presence_stats(request.channel))
            case "history":
                assert isinstance(request, HistoryRequest)
                return Reply(id=cid, history=await self._history(request))
            case "refresh":
                assert isinstance(request, RefreshRequest)
                return Reply(id=cid, refresh=self._refresh(request))
            case "sub_refresh":
                assert isinstance(request, SubRefreshRequest)
                return Reply(id=cid, sub_refresh=self._sub_refresh(request))
            case "ping":
                return Reply(id=cid, ping=EmptyResult())
            case "send":
                assert isinstance(request, SendRequest)
                backend = self.ctx.backend
                if backend is not None and backend.hooked("send"):
                    # Fire and forget, off this connection's command queue: a slow
                    # backend must not hold the client's next commands.
                    self.ctx.spawn(self._send_to_backend(bytes(request.data)), "send hook")
                elif cid:
                    raise ClientError(ErrorCode.NOT_AVAILABLE, "send: no backend handler")
                return None
            case "rpc":
                assert isinstance(request, RPCRequest)
                backend = self.ctx.backend
                if backend is None or not backend.hooked("rpc"):
                    raise ClientError(ErrorCode.NOT_AVAILABLE, "rpc: no backend handler")
                data = await backend.rpc(
                    self.connection(), request.method, bytes(request.data) or None
                )
                return Reply(id=cid, rpc=RPCResult(data=msgspec.Raw(data) if data else None))
        raise ClientError(ErrorCode.METHOD_NOT_FOUND)

    # -- connect / refresh ------------------------------------------------------------

    def _verify_connect_token(
        self, token: str
    ) -> tuple[str, float | None, bytes | None, tuple[str, ...]]:
        config = self.ctx.config
        if not token:
            if config.allow_anonymous:
                return "", None, None, ()
            raise ClientError(ErrorCode.UNAUTHORIZED, "token required")
        try:
            claims = verify_connection_token(token, config.token_secret)
        except TokenError as exc:
            if exc.expired:
                raise ClientError(ErrorCode.TOKEN_EXPIRED) from None
            raise DisconnectRequested(DisconnectCode.INVALID_TOKEN) from None
        return claims.user, claims.expire_at, claims.info, claims.channels

    def _ttl(self) -> tuple[bool, int]:
        if self.expire_at is None:
            return False, 0
        return True, max(0, int(self.expire_at - time.time()))

    async def _connect(self, request: ConnectRequest, cid: int) -> None:
        backend = self.ctx.backend
        reply_data: bytes | None = None
        refreshed_by_backend = False
        server_subs: Mapping[str, ServerSubscription] = {}
        via_backend = not request.token and backend is not None and backend.hooked("connect")
        if via_backend and backend is not None:
            # The connect hook instead of a JWT (a connect with a token uses the token).
            outcome = await backend.connect(
                self.connection(),
                data=bytes(request.data) or None,
                name=request.name,
                version=request.version,
                channels=list(request.subs),
            )
            user, expire_at, info = outcome.user, outcome.expire_at, outcome.info
            server_subs = outcome.subs
            channels = (*outcome.channels, *(c for c in server_subs if c not in outcome.channels))
            self.meta, reply_data = outcome.meta, outcome.data
            if expire_at is not None and expire_at <= time.time():
                raise ClientError(ErrorCode.EXPIRED, "connect result expired already")
            refreshed_by_backend = expire_at is not None and backend.hooked("refresh")
        else:
            user, expire_at, info, channels = self._verify_connect_token(request.token)
        config = self.ctx.config
        if config.user_personal_channel and user:
            personal = personal_channel(user, config.user_personal_channel_namespace)
            if personal not in channels:
                channels = (*channels, personal)
        self.ctx.registry.claim_user(self, user)
        self.user = user
        # Refreshed by the backend, server-side: the node does not expire it on its own.
        self.expire_at = None if refreshed_by_backend else expire_at
        self.conn_info = msgspec.Raw(info) if info is not None else None
        prepared: list[tuple[str, SubscribeResult, int]] = []
        try:
            for channel in channels:
                sub_request = request.subs.get(channel) or SubscribeRequest(channel=channel)
                result, after = await self._prepare_subscription(
                    channel, sub_request, authorized=True, server=server_subs.get(channel)
                )
                prepared.append((channel, result, after))
        except BaseException:
            for channel, _, _ in prepared:
                self.unsubscribe(channel)
            self.ctx.registry.release_user(self)
            raise
        self.state = advance(self.state, ConnectionState.CONNECTED)
        self.ctx.registry.register(self)
        if refreshed_by_backend and expire_at is not None:
            self._watch_expiry("", expire_at)
        # The SDK refreshes with a token only for a JWT connection; one the backend
        # authenticated expires (3005) and reconnects through the connect hook again.
        expires, ttl = (False, 0) if via_backend else self._ttl()
        connect = ConnectResult(
            client=self.id,
            version=__version__,
            expires=expires,
            ttl=ttl,
            subs={ch: r for ch, r, _ in prepared} or None,
            data=msgspec.Raw(reply_data) if reply_data is not None else None,
            ping=config.ping_interval,
            pong=True,
            node=self.ctx.node_name,
            time=int(time.time() * 1000),
        )
        self.send_reply(Reply(id=cid, connect=connect))
        for channel, _, after in prepared:
            self.go_live(channel, after)
        if self.ctx.events is not None:
            self.ctx.events.connected(self.connection())

    def _refresh(self, request: RefreshRequest) -> RefreshResult:
        user, expire_at, info, _ = self._verify_connect_token(request.token)
        if user != self.user:
            raise DisconnectRequested(DisconnectCode.INVALID_TOKEN, "token of another user")
        self.expire_at = expire_at
        if info is not None:
            self.conn_info = msgspec.Raw(info)
        self.ctx.registry.track_expiry(self)
        expires, ttl = self._ttl()
        return RefreshResult(client=self.id, version=__version__, expires=expires, ttl=ttl)

    def _verify_sub_token(
        self, channel: str, token: str, *, subscribing: bool
    ) -> tuple[float | None, bytes | None]:
        """As Centrifugo v6 does: an expired token is error 109; a token that does not
        verify is error 103 on subscribe (the SDK's subscription error and unsubscribed
        callbacks fire, the connection stays) and disconnect 3500 on sub_refresh; a valid
        token for another channel or user is disconnect 3500."""
        try:
            claims = verify_subscription_token(token, self.ctx.config.token_secret)
        except TokenError as exc:
            if exc.expired:
                raise ClientError(ErrorCode.TOKEN_EXPIRED) from None
            if subscribing:
                raise ClientError(ErrorCode.PERMISSION_DENIED, "invalid token") from None
            raise DisconnectRequested(DisconnectCode.INVALID_TOKEN) from None
        if claims.channel != channel or claims.user != self.user:
            raise DisconnectRequested(
                DisconnectCode.INVALID_TOKEN, "token for another channel or user"
            )
        return claims.expire_at, claims.info

    def _sub_refresh(self, request: SubRefreshRequest) -> SubRefreshResult:
        sub = self.subs.get(request.channel)
        if sub is None:
            raise ClientError(ErrorCode.PERMISSION_DENIED, "not subscribed")
        expire_at, _ = self._verify_sub_token(request.channel, request.token, subscribing=False)
        sub.expire_at = expire_at
        self.ctx.registry.track_sub_expiry(self, request.channel, expire_at)
        if expire_at is None:
            return SubRefreshResult()
        return SubRefreshResult(expires=True, ttl=max(0, int(expire_at - time.time())))

    # -- backend hooks (docs/howto/backend-hooks.md) -----------------------------------

    def _watch_expiry(self, channel: str, expire_at: float) -> None:
        """Refresh the connection (``channel`` "") or one subscription through the
        backend when ``expire_at`` comes (server-side, as Centrifugo's refresh proxy)."""
        if self._refreshers is None:
            self._refreshers = {}
        old = self._refreshers.pop(channel, None)
        if old is not None:
            old.cancel()
        task = self.ctx.loop.create_task(self._refresh_when_due(channel, expire_at))
        self._refreshers[channel] = task
        task.add_done_callback(lambda t: self._forget_refresher(channel, t))

    def _forget_refresher(self, channel: str, task: asyncio.Task[None]) -> None:
        if self._refreshers is not None and self._refreshers.get(channel) is task:
            del self._refreshers[channel]
        if not task.cancelled() and task.exception() is not None:
            log.error("refresh failed", client=self.id, exc_info=task.exception())

    async def _refresh_when_due(self, channel: str, expire_at: float) -> None:
        """The failure rule of refresh and sub_refresh: a refresh that cannot be checked
        (backend unavailable) is retried every :data:`REFRESH_RETRY` seconds; once
        ``expired_close_delay`` has passed since ``expire_at`` unchecked, the connection
        is closed 3005 (or 3006): the SDK reconnects through the connect hook."""
        backend = self.ctx.backend
        assert backend is not None
        expired = DisconnectCode.SUB_EXPIRED if channel else DisconnectCode.EXPIRED
        while True:
            await asyncio.sleep(max(0.0, expire_at - time.time()))
            give_up = expire_at + self.ctx.config.expired_close_delay
            while True:
                try:
                    if channel:
                        sub = self.subs.get(channel)
                        if sub is None:
                            return
                        ns_name = namespace_of(channel)
                        outcome = await backend.sub_refresh(self.connection(), channel, ns_name)
                    else:
                        outcome = await backend.refresh(self.connection())
                    break
                except BackendUnavailable as exc:
                    if time.time() >= give_up:
                        log.info("refresh unchecked: closing", client=self.id, reason=exc.reason)
                        self.close(expired)
                        return
                    await asyncio.sleep(min(REFRESH_RETRY, max(0.1, give_up - time.time())))
                except ClientError:
                    self.close(expired)
                    return
                except DisconnectRequested as exc:
                    self.close(exc.disconnect)
                    return
            if outcome.expired or outcome.expire_at is None:
                if outcome.expired:
                    self.close(expired)
                return
            expire_at = outcome.expire_at
            if outcome.info is not None and not channel:
                self.conn_info = msgspec.Raw(outcome.info)

    async def _send_to_backend(self, data: bytes) -> None:
        """The failure rule of send: an async message the backend cannot take is dropped
        (the endpoint counts it); a disconnect from the backend closes the connection."""
        backend = self.ctx.backend
        assert backend is not None
        try:
            await backend.send(self.connection(), data)
        except (BackendUnavailable, ClientError) as exc:
            log.info("send hook: message dropped", client=self.id, error=str(exc))
        except DisconnectRequested as exc:
            self.close(exc.disconnect)

    # -- subscriptions ----------------------------------------------------------------

    async def _subscribe(self, request: SubscribeRequest, cid: int) -> None:
        result, after = await self._prepare_subscription(request.channel, request, authorized=False)
        self.send_reply(Reply(id=cid, subscribe=result))
        self.go_live(request.channel, after)

    async def prepare_server_subscription(self, channel: str) -> tuple[SubscribeResult, int]:
        """A subscription the server makes (API subscribe): no token needed."""
        return await self._prepare_subscription(
            channel, SubscribeRequest(channel=channel), authorized=True
        )

    async def _prepare_subscription(
        self,
        channel: str,
        request: SubscribeRequest,
        *,
        authorized: bool,
        server: ServerSubscription | None = None,
    ) -> tuple[SubscribeResult, int]:
        """Check, join the hub as pending, read the stream. Returns the reply and the
        offset the reply brings the client to; the caller sends the reply, then calls
        :meth:`go_live` (with no await in between). ``server``: the channel info and data
        a connect hook gave this server-side subscription."""
        ns = self.ctx.channels.namespace(channel)
        if channel in self.subs:
            raise ClientError(ErrorCode.ALREADY_SUBSCRIBED)
        if len(self.subs) >= self.ctx.config.max_subscriptions:
            raise ClientError(ErrorCode.LIMIT_EXCEEDED, "too many subscriptions")
        expire_at: float | None = None
        token_info: bytes | None = None
        reply_data: bytes | None = None
        checked_by_backend = False
        backend = self.ctx.backend
        namespace = namespace_of(channel)
        if server is not None:
            token_info, reply_data = server.info, server.data
        if request.token:
            expire_at, token_info = self._verify_sub_token(channel, request.token, subscribing=True)
        elif not authorized and backend is not None and backend.hooked("subscribe", namespace):
            outcome = await backend.subscribe(
                self.connection(), channel, namespace, token="", data=bytes(request.data) or None
            )
            expire_at, token_info, reply_data = outcome.expire_at, outcome.info, outcome.data
            checked_by_backend = True
            if channel in self.subs:  # subscribed meanwhile (server-side): as if before
                raise ClientError(ErrorCode.ALREADY_SUBSCRIBED)
        elif not authorized:
            users = channel_users(channel) if ns.allow_user_limited_channels else None
            if users is not None:
                # A user channel: its users may subscribe, nobody else without a token.
                if not self.user or self.user not in users:
                    raise ClientError(ErrorCode.PERMISSION_DENIED)
            elif not ns.allow_subscribe:
                raise ClientError(ErrorCode.PERMISSION_DENIED)
        info = self._client_info(token_info)
        sub = Subscription(
            channel=channel, namespace=ns, info=info, expire_at=expire_at, server_side=authorized
        )
        self.subs[channel] = sub
        try:
            result, after = await self.ctx.channels.join(self, sub, request)
        except BaseException:
            if self.subs.get(channel) is sub:
                del self.subs[channel]
                sub.on(SubscriptionEvent.FAILED)
                self.ctx.channels.leave(self, sub)
            raise
        if reply_data is not None:
            result.data = msgspec.Raw(reply_data)
        if expire_at is None:
            return result, after
        if not checked_by_backend:  # a token's expiry: the SDK refreshes it (sub_refresh)
            self.ctx.registry.track_sub_expiry(self, channel, expire_at)
            result.expires = True
            result.ttl = max(0, int(expire_at - time.time()))
        elif backend is not None and backend.hooked("sub_refresh", namespace):
            self._watch_expiry(channel, expire_at)  # refreshed server-side
        else:
            self.ctx.registry.track_sub_expiry(self, channel, expire_at)  # then 3006
        return result, after

    def _client_info(self, chan_info: bytes | None) -> ClientInfo:
        """This connection as a new subscription's joins, leaves, presence and
        publications name it. Subscriptions without channel info share one (a ClientInfo
        is never changed): an idle connection would otherwise hold one per channel."""
        if chan_info is None:
            for sub in self.subs.values():
                info = sub.info
                if info.chan_info is None and info.conn_info is self.conn_info:
                    return info  # a refresh that changed conn_info gets a new one
        raw = msgspec.Raw(chan_info) if chan_info is not None else None
        return ClientInfo(user=self.user, client=self.id, conn_info=self.conn_info, chan_info=raw)

    def go_live(self, channel: str, after_offset: int) -> None:
        sub = self.subs.get(channel)
        if sub is None or self.state is ConnectionState.CLOSED:
            return
        self.ctx.channels.go_live(self, sub, after_offset)
        if self.ctx.events is not None:
            self.ctx.events.subscribed(self.connection(), channel)

    def resubscribe(self, channel: str) -> None:
        """Leave ``channel`` and tell the client to subscribe again from its position
        (``unsubscribe`` push 2500, insufficient state): the SDK resubscribes and
        recovers what it missed. For client subscriptions only."""
        self.unsubscribe(channel)
        why = UnsubscribeCode.INSUFFICIENT_STATE
        unsubscribe = Unsubscribe(code=why.code, reason=why.reason)
        self.send_push(Push(channel=channel, unsubscribe=unsubscribe))

    def unsubscribe(self, channel: str) -> None:
        """Leave ``channel`` (no error if not subscribed, as in the protocol)."""
        sub = self.subs.pop(channel, None)
        if sub is not None:
            sub.on(SubscriptionEvent.LEFT)
            self.ctx.channels.leave(self, sub)
            refresher = self._refreshers.pop(channel, None) if self._refreshers else None
            if refresher is not None and refresher is not asyncio.current_task():
                refresher.cancel()
            if self.ctx.events is not None:
                self.ctx.events.unsubscribed(self.connection(), channel)

    def _subscribed(self, channel: str) -> Subscription:
        sub = self.subs.get(channel)
        if sub is None:
            self.ctx.channels.namespace(channel)  # unknown channel is reported before permission
            raise ClientError(ErrorCode.PERMISSION_DENIED, "not subscribed")
        return sub

    # -- channel operations -----------------------------------------------------------

    async def _publish(self, request: PublishRequest) -> None:
        ns = self.ctx.channels.namespace(request.channel)
        if not request.data:
            raise ClientError(ErrorCode.BAD_REQUEST, "data required")
        sub = self.subs.get(request.channel)
        backend = self.ctx.backend
        namespace = namespace_of(request.channel)
        hooked = backend is not None and backend.hooked("publish", namespace)
        if not hooked and (not ns.allow_publish or sub is None):
            raise ClientError(ErrorCode.PERMISSION_DENIED)
        self._take_publish_token()
        data, skip_history = bytes(request.data), False
        if hooked and backend is not None:
            # The backend decides (instead of allow_publish), and may replace the data.
            outcome = await backend.publish(self.connection(), request.channel, namespace, data)
            data = outcome.data or data
            skip_history = outcome.skip_history
        info = sub.info if sub is not None else ClientInfo(self.user, self.id, self.conn_info)
        # An ephemeral publication (a cursor, a typing flag) from one client replaces
        # that client's previous one in a slow reader's queue.
        await self.ctx.channels.publish(
            request.channel, data, info=info, coalesce_key=self.id, skip_history=skip_history
        )

    def _take_publish_token(self) -> None:
        """Per-connection publish rate limit (token bucket): error 111 beyond it."""
        bucket = self._publish_bucket
        if bucket is None:
            config = self.ctx.config
            bucket = TokenBucket(
                config.client_publish_rate, config.client_publish_burst, self.ctx.clock
            )
            self._publish_bucket = bucket
        if bucket.take():
            raise ClientError(ErrorCode.TOO_MANY_REQUESTS, "publish rate limit")

    def _check_read_access(self, channel: str) -> NamespaceConfig:
        ns = self.ctx.channels.namespace(channel)
        sub = self._subscribed(channel)
        if not ns.allow_history:
            raise ClientError(ErrorCode.PERMISSION_DENIED)
        return sub.namespace

    async def _presence(self, channel: str) -> PresenceResult:
        self._check_read_access(channel)
        return await self.ctx.channels.presence(channel)

    async def _presence_stats(self, channel: str) -> PresenceStatsResult:
        self._check_read_access(channel)
        return await self.ctx.channels.presence_stats(channel)

    async def _history(self, request: HistoryRequest) -> HistoryResult:
        self._check_read_access(request.channel)
        return await self.ctx.channels.history(
            request.channel, limit=request.limit, since=request.since, reverse=request.reverse
        )


def _short(reason: str) -> str:
    # Close reasons travel in a close frame: at most 123 bytes.
    return reason.encode()[:120].decode(errors="ignore")
