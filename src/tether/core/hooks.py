"""The edges between a client session and the app's backend: hooks and events.

Declared here, beside the session that calls them, as the broker edge is; implemented by
:mod:`tether.proxy` (HTTP with Centrifugo's proxy shapes). Core never imports it.

:class:`Backend` contract (each method is one hook; see docs/howto/backend-hooks.md):

* A method returns the backend's answer as an outcome, or raises exactly one of
  :class:`~tether.errors.ClientError` (the backend refused: the client gets the backend's
  own error record, any code 100-1999), :class:`~tether.errors.DisconnectRequested` (the
  backend closes the connection with its code, 3000-4999),
  :class:`~tether.errors.BackendUnavailable` (the hook could not be checked: timeout,
  refused, bad answer, breaker open, bulkhead full).
* BackendUnavailable is never an acceptance: the session refuses the request with a
  temporary error (100), so the SDK retries with backoff. Only ``send``, which has no
  reply, drops the message (counted).
* A method returns within its proxy's ``timeout`` (plus retry backoff for the idempotent
  hooks) and never waits for a free slot: a full bulkhead is BackendUnavailable at once.

:class:`Events` contract: every method returns at once and never raises; delivery
(webhooks, offline push) happens later, from a bounded buffer owned by the implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tether.protocol.messages import ClientInfo


@dataclass(frozen=True, slots=True)
class Connection:
    """What a hook knows of the connection it is called for."""

    client: str
    user: str = ""
    transport: str = "websocket"
    protocol: str = "json"
    encoding: str = "json"
    """``json``: payloads are JSON (sent as ``data``); ``binary``: base64 (``b64data``)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers of the upgrade request (lower-case names); the hook forwards those its
    configuration names."""
    meta: bytes | None = None
    """``meta`` the connect hook returned (raw JSON), passed to every later hook."""
    remote: str = ""


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    user: str
    expire_at: float | None = None
    """Unix seconds; None: the connection does not expire."""
    info: bytes | None = None
    data: bytes | None = None
    channels: Sequence[str] = ()
    """Channels the connection is subscribed to by the server."""
    subs: Mapping[str, ServerSubscription] = field(default_factory=dict)
    """More server-side subscriptions, each with its channel info and push data."""
    meta: bytes | None = None


@dataclass(frozen=True, slots=True)
class ServerSubscription:
    """A server-side subscription a connect hook asked for (Centrifugo's ``subs``)."""

    info: bytes | None = None
    """Channel info of this subscriber (``chan_info`` in presence, join, publications)."""
    data: bytes | None = None
    """Sent to the client with the subscription (the ``subscribe`` of the connect
    result's ``subs``)."""


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    expired: bool = False
    expire_at: float | None = None
    info: bytes | None = None


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    expire_at: float | None = None
    info: bytes | None = None
    """Channel info of this subscriber (``chan_info`` in presence, join, publications)."""
    data: bytes | None = None
    """Sent to the client in the subscribe reply."""


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    data: bytes | None = None
    """Replacement data to broadcast and store instead of the client's; None: keep it."""
    skip_history: bool = False


class Backend(Protocol):
    """The app's backend in the loop. ``namespace`` picks the namespace's proxy."""

    def hooked(self, hook: str, namespace: str = "") -> bool:
        """Whether ``hook`` (``connect``, ``refresh``, ``subscribe``, ``sub_refresh``,
        ``publish``, ``rpc``, ``send``) has a proxy (per namespace for the channel hooks)."""
        ...

    async def connect(
        self,
        conn: Connection,
        *,
        data: bytes | None,
        name: str,
        version: str,
        channels: Sequence[str],
    ) -> ConnectOutcome: ...

    async def refresh(self, conn: Connection) -> RefreshOutcome: ...

    async def subscribe(
        self, conn: Connection, channel: str, namespace: str, *, token: str, data: bytes | None
    ) -> SubscribeOutcome: ...

    async def sub_refresh(
        self, conn: Connection, channel: str, namespace: str
    ) -> RefreshOutcome: ...

    async def publish(
        self, conn: Connection, channel: str, namespace: str, data: bytes
    ) -> PublishOutcome: ...

    async def rpc(self, conn: Connection, method: str, data: bytes | None) -> bytes | None:
        """The backend's answer data (raw JSON), or None for none."""
        ...

    async def send(self, conn: Connection, data: bytes) -> None: ...


class Events(Protocol):
    """What happened on this node, for webhooks and offline push."""

    def connected(self, conn: Connection) -> None: ...

    def disconnected(self, conn: Connection, code: int, reason: str) -> None: ...

    def subscribed(self, conn: Connection, channel: str) -> None: ...

    def unsubscribed(self, conn: Connection, channel: str) -> None: ...

    def published(
        self, channel: str, data: bytes, info: ClientInfo | None, offset: int, epoch: str
    ) -> None:
        """A publication this node accepted (from its API or its clients), once."""
        ...
