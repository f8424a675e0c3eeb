"""Wire messages of the Centrifugo client protocol v2, JSON flavour, as typed structs.

Field names and numbers follow the protocol's ``client.proto``. In the JSON protocol every
``bytes`` field of the proto (``data``, ``conn_info``, ``chan_info``) carries embedded JSON,
so it is held here as :class:`msgspec.Raw`: validated once by the decoder, never re-parsed.

Client to server: a :class:`Command` with an ``id`` and exactly one request field.
Server to client: a :class:`Reply` with the same ``id`` and either ``error`` or one result
field, or a :class:`Reply` with no id and a ``push``. An empty object ``{}`` is a ping (from
the server) or a pong (from the client).

In requests an absent ``data`` is an empty ``Raw()`` (msgspec cannot put ``Raw`` in a
union with None); ``len(data) == 0`` means "not sent".

Requests reject unknown fields, so a typo in a hand-written client is a ``bad request``
rather than a silently ignored option. Every field the real SDKs send is declared.
"""

from __future__ import annotations

import msgspec
from msgspec import Raw


class _Request(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class _Out(msgspec.Struct, omit_defaults=True):
    pass


# ---------------------------------------------------------------------------------------
# Requests (client -> server)


class StreamPosition(_Request):
    offset: int = 0
    epoch: str = ""


class FilterNode(_Request):
    """Publication tags filter (accepted for compatibility; not evaluated yet)."""

    op: str = ""
    key: str = ""
    cmp: str = ""
    val: str = ""
    vals: list[str] = []
    nodes: list[FilterNode] = []


class SubscribeRequest(_Request):
    channel: str = ""
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: int = 0
    data: Raw = Raw()
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    tf: FilterNode | None = None
    flag: int = 0


class ConnectRequest(_Request):
    token: str = ""
    data: Raw = Raw()
    subs: dict[str, SubscribeRequest] = {}
    name: str = ""
    version: str = ""
    headers: dict[str, str] = {}
    flag: int = 0


class RefreshRequest(_Request):
    token: str = ""


class SubRefreshRequest(_Request):
    channel: str = ""
    token: str = ""


class UnsubscribeRequest(_Request):
    channel: str = ""


class PublishRequest(_Request):
    channel: str = ""
    data: Raw = Raw()


class PresenceRequest(_Request):
    channel: str = ""


class PresenceStatsRequest(_Request):
    channel: str = ""


class HistoryRequest(_Request):
    channel: str = ""
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


class PingRequest(_Request):
    pass


class SendRequest(_Request):
    data: Raw = Raw()


class RPCRequest(_Request):
    data: Raw = Raw()
    method: str = ""


REQUEST_FIELDS = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)


class Command(_Request):
    """One client command: an ``id`` and exactly one request (checked by the codec)."""

    id: int = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: UnsubscribeRequest | None = None
    publish: PublishRequest | None = None
    presence: PresenceRequest | None = None
    presence_stats: PresenceStatsRequest | None = None
    history: HistoryRequest | None = None
    ping: PingRequest | None = None
    send: SendRequest | None = None
    rpc: RPCRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: SubRefreshRequest | None = None


# ---------------------------------------------------------------------------------------
# Results and pushes (server -> client)


class ClientInfo(_Out):
    # Required fields are always written: Centrifugo writes user and client even when
    # empty (an anonymous user is ``"user": ""``).
    user: str
    client: str
    conn_info: Raw | None = None
    chan_info: Raw | None = None


class Publication(_Out):
    data: Raw = Raw(b"null")
    info: ClientInfo | None = None
    offset: int = 0
    tags: dict[str, str] | None = None
    delta: bool = False
    """``data`` is a fossil delta against the subscriber's previous publication of the
    channel (only to subscribers that negotiated ``delta: "fossil"``)."""
    time: int = 0


class Error(_Out):
    code: int
    message: str
    temporary: bool = False


class SubscribeResult(_Out):
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: list[Publication] = []
    recovered: bool = False
    offset: int = 0
    positioned: bool = False
    data: Raw | None = None
    was_recovering: bool = False
    delta: bool = False
    """The subscription gets fossil deltas (the client asked, the namespace allows it)."""


class ConnectResult(_Out):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0
    data: Raw | None = None
    subs: dict[str, SubscribeResult] | None = None
    ping: int = 0
    pong: bool = False
    session: str = ""
    node: str = ""
    time: int = 0


class RefreshResult(_Out):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0


class SubRefreshResult(_Out):
    expires: bool = False
    ttl: int = 0


class RPCResult(_Out):
    data: Raw | None = None


class EmptyResult(_Out):
    pass


class PresenceResult(_Out):
    presence: dict[str, ClientInfo]  # required: always sent, even empty (SDKs expect it)


class PresenceStatsResult(_Out):
    # Always written, zeros too, as Centrifugo does: the JS SDK reads numClients from it.
    num_clients: int
    num_users: int


class HistoryResult(_Out):
    # Always written, as Centrifugo does (an empty stream is publications [], offset 0).
    publications: list[Publication]
    epoch: str
    offset: int


class Join(_Out):
    info: ClientInfo


class Leave(_Out):
    info: ClientInfo


class Unsubscribe(_Out):
    code: int = 0
    reason: str = ""


class Subscribe(_Out):
    """Push telling the client it was subscribed server-side to a channel."""

    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    positioned: bool = False
    data: Raw | None = None


class Message(_Out):
    data: Raw


class Disconnect(_Out):
    code: int
    reason: str = ""


class Refresh(_Out):
    expires: bool = False
    ttl: int = 0


class Push(_Out):
    channel: str = ""
    pub: Publication | None = None
    join: Join | None = None
    leave: Leave | None = None
    unsubscribe: Unsubscribe | None = None
    message: Message | None = None
    subscribe: Subscribe | None = None
    disconnect: Disconnect | None = None
    refresh: Refresh | None = None


class Reply(_Out):
    id: int = 0
    error: Error | None = None
    push: Push | None = None
    connect: ConnectResult | None = None
    subscribe: SubscribeResult | None = None
    unsubscribe: EmptyResult | None = None
    publish: EmptyResult | None = None
    presence: PresenceResult | None = None
    presence_stats: PresenceStatsResult | None = None
    history: HistoryResult | None = None
    ping: EmptyResult | None = None
    rpc: RPCResult | None = None
    refresh: RefreshResult | None = None
    sub_refresh: SubRefreshResult | None = None
