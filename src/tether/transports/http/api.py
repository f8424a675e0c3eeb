"""The server HTTP API: ``POST /api/<method>``, Centrifugo-compatible shapes.

Answers, as Centrifugo does (so ``cent`` and other API clients work unchanged):

* 200 with ``{"result": {...}}`` on success;
* 200 with ``{"error": {"code", "message"}}`` for a request the node refused (unknown
  channel 102, not available 108, unrecoverable position 112, ...);
* 400 with ``{"error": {"code": 107, ...}}`` for a body that is not valid JSON or not the
  method's shape (the message names the field);
* 401 with error 101 without a valid API key (``X-API-Key: KEY`` or
  ``Authorization: apikey KEY``); 404 with error 104 for an unknown method;
* 429 with ``Retry-After`` and error 111 (``temporary: true``) when the channel's lane has
  too many publishes in flight: refused before any work (load shedding);
* 503 with ``Retry-After`` and error 100 (``temporary: true``) when the broker is
  unavailable: nothing was published, the call may be retried with the same idempotency key.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web

from tether import cluster
from tether.core.channels import PublishRequest
from tether.core.node import Node
from tether.errors import ApiError, BrokerUnavailable, ClientError
from tether.protocol.codes import DisconnectCode, DisconnectInfo, ErrorCode, ErrorInfo
from tether.protocol.messages import StreamPosition

log = structlog.get_logger("tether.api")

NODE_KEY = web.AppKey("node", Node)


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    pass


class PublishBody(_Body):
    channel: str
    data: msgspec.Raw = msgspec.Raw()
    """Any JSON (absent: ``b64data`` gives the payload)."""
    b64data: str = ""
    """The payload as base64, for binary data: Protobuf clients get the bytes."""
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    coalesce_key: str = ""
    """Tether extension (ephemeral lane): queued frames with the same key replace each other."""
    delta: bool = False
    """Deliver as a fossil delta to the subscribers that negotiated one (Centrifugo v6)."""


class BroadcastBody(_Body):
    channels: list[str]
    data: msgspec.Raw = msgspec.Raw()
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    coalesce_key: str = ""
    delta: bool = False


class UserChannelBody(_Body):
    user: str
    channel: str
    client: str = ""


class DisconnectSpec(_Body):
    code: int = DisconnectCode.FORCE_NO_RECONNECT.code
    reason: str = DisconnectCode.FORCE_NO_RECONNECT.reason


class DisconnectBody(_Body):
    user: str
    client: str = ""
    whitelist: list[str] = []
    disconnect: DisconnectSpec | None = None


class ChannelBody(_Body):
    channel: str


class HistoryBody(_Body):
    channel: str
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


class ChannelsBody(_Body):
    pattern: str = ""


class InfoBody(_Body):
    pass


class BatchBody(_Body):
    commands: list[dict[str, msgspec.Raw]]
    parallel: bool = False


# A handler returns what goes under "result": a dict or a protocol struct.
Handler = Callable[[Node, Any], Awaitable[Any]]


def _payload(data: msgspec.Raw, b64data: str) -> bytes:
    """The bytes to publish: ``data`` (JSON) or ``b64data`` decoded, exactly one of them.
    Raises ApiError (HTTP 400, 107): a malformed body, like a missing field."""
    if len(data) and b64data:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "give data or b64data, not both")
    if not b64data:
        if not len(data):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "data or b64data required")
        return bytes(data)
    try:
        return base64.b64decode(b64data, validate=True)
    except binascii.Error:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "b64data is not base64") from None


def _request(body: PublishBody | BroadcastBody, channel: str, payload: bytes) -> PublishRequest:
    """What a publish or broadcast body asks of one channel."""
    return PublishRequest(
        channel,
        payload,
        idempotency_key=body.idempotency_key,
        tags=body.tags,
        skip_history=body.skip_history,
        coalesce_key=body.coalesce_key,
        delta=body.delta,
    )


async def _publish(node: Node, body: PublishBody) -> dict[str, Any]:
    request = _request(body, body.channel, _payload(body.data, body.b64data))
    result = await node.publish(**request._asdict())
    return {"offset": result.position.offset, "epoch": result.position.epoch}


async def _broadcast(node: Node, body: BroadcastBody) -> dict[str, Any]:
    payload = _payload(body.data, body.b64data)
    responses: list[dict[str, Any]] = []
    for channel in body.channels:
        try:
            result = await node.publish(**_request(body, channel, payload)._asdict())
        except ClientError as exc:
            responses.append({"error": {"code": exc.code, "message": exc.message}})
        else:
            position = result.position
            responses.append({"result": {"offset": position.offset, "epoch": position.epoch}})
    return {"responses": responses}


async def _subscribe(node: Node, body: UserChannelBody) -> dict[str, Any]:
    await node.subscribe_user(body.user, body.channel, body.client)
    return {}


async def _unsubscribe(node: Node, body: UserChannelBody) -> dict[str, Any]:
    await node.unsubscribe_user(body.user, body.channel, body.client)
    return {}


async def _disconnect(node: Node, body: DisconnectBody) -> dict[str, Any]:
    spec = body.disconnect or DisconnectSpec()
    try:
        disconnect = DisconnectInfo(spec.code, spec.reason)
    except ValueError as exc:  # not a code a server may close with (should_reconnect)
        raise ClientError(ErrorCode.BAD_REQUEST, str(exc)) from None
    node.disconnect_user(body.user, disconnect, body.client, body.whitelist)
    return {}


async def _presence(node: Node, body: ChannelBody) -> dict[str, Any]:
    result = await node.presence(body.channel)
    # Spelled out: the struct omits an empty map, but API clients (cent) require the
    # field even when nobody is subscribed.
    return {"presence": result.presence}


async def _presence_stats(node: Node, body: ChannelBody) -> Any:
    return await node.presence_stats(body.channel)


async def _history(node: Node, body: HistoryBody) -> Any:
    result = await node.history(
        body.channel, limit=body.limit, since=body.since, reverse=body.reverse
    )
    return result


async def _history_remove(node: Node, body: ChannelBody) -> dict[str, Any]:
    await node.remove_history(body.channel)
    return {}


async def _channels(node: Node, body: ChannelsBody) -> dict[str, Any]:
    channels = {
        name: {"num_clients": count}
        for name, count in node.hub.channels().items()
        if not body.pattern or fnmatch.fnmatchcase(name, body.pattern)
    }
    return {"channels": channels}


async def _info(node: Node, body: InfoBody) -> dict[str, Any]:
    # Every live node (tether.cluster): this one first with its figures now, the others
    # as they last announced themselves (at most a few seconds ago).
    return {"nodes": await cluster.live_nodes(node)}


METHODS: dict[str, tuple[type[_Body], Handler]] = {
    "publish": (PublishBody, _publish),
    "broadcast": (BroadcastBody, _broadcast),
    "subscribe": (UserChannelBody, _subscribe),
    "unsubscribe": (UserChannelBody, _unsubscribe),
    "disconnect": (DisconnectBody, _disconnect),
    "presence": (ChannelBody, _presence),
    "presence_stats": (ChannelBody, _presence_stats),
    "history": (HistoryBody, _history),
    "history_remove": (ChannelBody, _history_remove),
    "channels": (ChannelsBody, _channels),
    "info": (InfoBody, _info),
}


def _decode(method: str, raw: bytes) -> Any:
    spec = METHODS.get(method)
    if spec is None:
        raise ApiError(404, ErrorCode.METHOD_NOT_FOUND, f"unknown API method {method!r}")
    try:
        return msgspec.json.decode(raw or b"{}", type=spec[0])
    except msgspec.DecodeError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"invalid {method} body: {exc}") from None


async def call(node: Node, method: str, raw: bytes) -> dict[str, Any]:
    """Run one method on a raw JSON body: ``{"result": ...}`` or ``{"error": ...}``.
    Raises ApiError (400/404) and BrokerUnavailable."""
    body = _decode(method, raw)
    try:
        return {"result": await METHODS[method][1](node, body)}
    except ApiError:
        raise  # a malformed body found by the handler (publish's data/b64data): HTTP 400
    except ClientError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}


async def _batch(node: Node, raw: bytes) -> dict[str, Any]:
    """The commands in order. A run of consecutive publishes goes to the broker at once
    (:meth:`Node.publish_many <tether.core.node.Node.publish_many>`: one round trip on
    Redis), with the answers one publish after another would get."""
    try:
        batch = msgspec.json.decode(raw or b"{}", type=BatchBody)
    except msgspec.DecodeError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"invalid batch body: {exc}") from None
    for command in batch.commands:
        if len(command) != 1:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "each batch command holds one method")
    commands = [next(iter(command.items())) for command in batch.commands]
    replies: list[dict[str, Any]] = []
    i = 0
    while i < len(commands):
        run = i
        while run < len(commands) and commands[run][0] == "publish":
            run += 1
        if run - i > 1:
            replies.extend(await _publish_run(node, [bytes(body) for _, body in commands[i:run]]))
            i = run
            continue
        method, body = commands[i]
        answer = await call(node, method, bytes(body))
        replies.append({method: answer["result"]} if "result" in answer else answer)
        i += 1
    return {"replies": replies}


async def _publish_run(node: Node, bodies: list[bytes]) -> list[dict[str, Any]]:
    """Consecutive publish commands of a batch, published together."""
    requests = []
    for raw in bodies:
        body: PublishBody = _decode("publish", raw)
        requests.append(_request(body, body.channel, _payload(body.data, body.b64data)))
    replies: list[dict[str, Any]] = []
    for answer in await node.publish_many(requests):
        if isinstance(answer, ClientError):
            replies.append({"error": {"code": answer.code, "message": answer.message}})
        else:
            position = answer.position
            replies.append({"publish": {"offset": position.offset, "epoch": position.epoch}})
    return replies


def _authorized(request: web.Request, api_key: str) -> bool:
    given = request.headers.get("X-API-Key", "")
    if not given:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "apikey":
            given = value.strip()
    return bool(given) and hmac.compare_digest(given.encode(), api_key.encode())


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, error: ErrorInfo, message: str, **extra: Any) -> web.Response:
    return _json({"error": {"code": error.code, "message": message, **extra}}, status)


async def handle_api(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    if not _authorized(request, node.config.api_key):
        return _error(401, ErrorCode.UNAUTHORIZED, "missing or wrong API key")
    method = request.match_info["method"]
    raw = await request.read()
    try:
        if method == "batch":
            return _json(await _batch(node, raw))
        answer = await call(node, method, raw)
        error = answer.get("error")
        if error is not None and error["code"] == ErrorCode.TOO_MANY_REQUESTS.code:
            # Load shedding: refused before any work; retry after a pause.
            error["temporary"] = True
            return _json(answer, 429, headers={"Retry-After": "1"})
        return _json(answer)
    except ApiError as exc:
        return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status)
    except BrokerUnavailable as exc:
        log.warning("api call failed: broker unavailable", method=method, error=str(exc))
        response = _error(503, ErrorCode.INTERNAL, "broker unavailable", temporary=True)
        response.headers["Retry-After"] = "1"
        return response


def add_routes(app: web.Application, node: Node) -> None:
    app[NODE_KEY] = node
    app.router.add_post("/api/{method}", handle_api)
