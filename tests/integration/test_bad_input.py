"""Bad input over real sockets: each gets its documented answer, and nobody else notices.

Every test sends one kind of bad input from one connection, asserts the outcome the
protocol documents for it (an error reply, a close code, an HTTP status), then checks that
a bystander, a client connected all along to the same node, still receives publications.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from tether.auth import mint_connection_token, mint_subscription_token
from tether.server import Server
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether.testing.wsclient import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeRejected,
    WSClient,
    client_frame,
    http_exchange,
    upgrade_request,
)

pytestmark = pytest.mark.integration

WATCHED = "chat:watched"


def token(user: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": user, **claims}, TEST_SECRET, algorithm="HS256")


async def open_session(server: Server, user: str = "alice") -> WSClient:
    """A connected session (connect reply received)."""
    ws = await WSClient.open(server.port)
    reply = await ws.call("connect", {"token": mint_connection_token(TEST_SECRET, user)})
    assert "connect" in reply, reply
    return ws


async def closed_with(ws: WSClient, data: bytes | None = None) -> int | None:
    """Send ``data`` (if any) and return the code the server closes with. The server may
    close while the bytes are still going out; that is part of the outcome, not an error."""
    if data is not None:
        with contextlib.suppress(ConnectionError):
            await ws.send_raw(data)
    return await ws.wait_closed()


async def next_publication(ws: WSClient) -> dict[str, Any]:
    """The next ``pub`` push (the join and leave pushes of the namespace are skipped)."""
    while "pub" not in (push := await ws.next_push()):
        pass
    return push


class ServerApi:
    """The node's HTTP API over a real socket."""

    def __init__(self, session: aiohttp.ClientSession, server: Server) -> None:
        self.session = session
        self.url = f"http://127.0.0.1:{server.http_port}/api"

    async def post(
        self, method: str, body: bytes | dict[str, Any], *, key: str | None = TEST_API_KEY
    ) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"X-API-Key": key} if key is not None else {}
        async with self.session.post(f"{self.url}/{method}", data=data, headers=headers) as r:
            return r.status, await r.json()

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        status, answer = await self.post("publish", {"channel": channel, "data": data})
        assert status == 200, answer
        assert "result" in answer, answer
        return answer


class Bystander:
    """A client subscribed to :data:`WATCHED` from before the bad input until after it."""

    def __init__(self, ws: WSClient, api: ServerApi) -> None:
        self.ws = ws
        self.api = api

    async def still_receives_publications(self) -> None:
        marker = {"marker": uuid.uuid4().hex}
        await self.api.publish(WATCHED, marker)
        push = await next_publication(self.ws)
        assert push["channel"] == WATCHED
        assert push["pub"]["data"] == marker


@pytest.fixture
async def api(server: Server) -> AsyncIterator[ServerApi]:
    async with aiohttp.ClientSession() as session:
        yield ServerApi(session, server)


@pytest.fixture
async def bystander(server: Server, api: ServerApi) -> AsyncIterator[Bystander]:
    ws = await open_session(server, "bystander")
    reply = await ws.call("subscribe", {"channel": WATCHED})
    assert "subscribe" in reply, reply
    try:
        yield Bystander(ws, api)
    finally:
        await ws.close()


@pytest.fixture
async def session(server: Server) -> AsyncIterator[WSClient]:
    """A connected session of user alice: the one that misbehaves."""
    ws = await open_session(server)
    try:
        yield ws
    finally:
        await ws.close()


@pytest.fixture
async def fresh(server: Server) -> AsyncIterator[WSClient]:
    """An upgraded connection that has not sent connect yet."""
    ws = await WSClient.open(server.port)
    try:
        yield ws
    finally:
        await ws.close()


def text(data: bytes | str) -> bytes:
    """One masked text frame."""
    return client_frame(OP_TEXT, data.encode() if isinstance(data, str) else data)


# -- malformed commands: disconnect 3501 (bad request) ----------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"{not json",
        b'{"id":2,"ping":{},"bogus":1}',
        b'{"id":2,"subscribe":{"channel":"chat:a","bogus":1}}',
        b'{"id":2,"subscribe":{"channel":"chat:a"},"publish":{"channel":"chat:a","data":1}}',
        b'{"id":"2","ping":{}}',
        b'{"id":2,"subscribe":{"channel":123}}',
        b'{"id":2,"subscribe":[]}',
        b'{"id":2}',
        b'{"subscribe":{"channel":"chat:a"}}',
        b'{"id":2,"connect":{}}',
        b"\n".join(b'{"id":%d,"ping":{}}' % i for i in range(2, 103)),
    ],
    ids=[
        "malformed-json",
        "unknown-field",
        "unknown-nested-field",
        "two-requests",
        "id-wrong-type",
        "channel-wrong-type",
        "request-wrong-type",
        "id-without-request",
        "no-id",
        "second-connect",
        "more-than-max-commands",
    ],
)
async def test_malformed_command_closes_with_3501(
    session: WSClient, bystander: Bystander, frame: bytes
) -> None:
    assert await closed_with(session, text(frame)) == 3501
    await bystander.still_receives_publications()


@pytest.mark.parametrize(
    "command",
    [
        {"id": 1, "subscribe": {"channel": "chat:a"}},
        {"id": 1, "publish": {"channel": "chat:a", "data": {}}},
        {"id": 1, "ping": {}},
    ],
    ids=["subscribe", "publish", "ping"],
)
async def test_command_before_connect_closes_with_3501(
    fresh: WSClient, bystander: Bystander, command: dict[str, Any]
) -> None:
    assert await closed_with(fresh, text(json.dumps(command))) == 3501
    await bystander.still_receives_publications()


async def test_malformed_json_before_connect_closes_with_3501(
    fresh: WSClient, bystander: Bystander
) -> None:
    assert await closed_with(fresh, text(b"\x00garbage")) == 3501
    await bystander.still_receives_publications()


# -- broken WebSocket frames: RFC 6455 close codes ------------------------------------------


async def test_frame_over_max_message_size_closes_with_1009(
    server: Server, session: WSClient, bystander: Bystander
) -> None:
    size = server.config.max_message_size + 1
    assert await closed_with(session, text(b"x" * size)) == 1009
    await bystander.still_receives_publications()


async def test_frame_at_max_message_size_is_read_as_a_message(
    server: Server, session: WSClient, bystander: Bystander
) -> None:
    # Exactly at the limit the frame is parsed; as it is not JSON, the protocol closes.
    size = server.config.max_message_size
    assert await closed_with(session, text(b"x" * size)) == 3501
    await bystander.still_receives_publications()


async def test_unmasked_frame_closes_with_1002(session: WSClient, bystander: Bystander) -> None:
    frame = client_frame(OP_TEXT, b'{"id":2,"ping":{}}', masked=False)
    assert await closed_with(session, frame) == 1002
    await bystander.still_receives_publications()


async def test_reserved_bits_close_with_1002(session: WSClient, bystander: Bystander) -> None:
    frame = client_frame(OP_TEXT, b'{"id":2,"ping":{}}', rsv=4)
    assert await closed_with(session, frame) == 1002
    await bystander.still_receives_publications()


async def test_invalid_utf8_text_closes_with_1007(session: WSClient, bystander: Bystander) -> None:
    assert await closed_with(session, text(b'{"id":2,"ping":{}}\xff')) == 1007
    await bystander.still_receives_publications()


async def test_binary_frame_of_json_commands_is_served(session: WSClient) -> None:
    await session.send_raw(client_frame(OP_BINARY, b'{"id":9,"ping":{}}'))
    assert await session.reply(9) == {"id": 9, "ping": {}}


async def test_websocket_ping_is_answered_and_the_session_continues(session: WSClient) -> None:
    await session.send_raw(client_frame(OP_PING, b"are you there"))
    frame = await session.recv_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"are you there")
    assert "ping" in await session.call("ping")


# -- bad handshakes: an HTTP status, no connection ------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade_request(headers={"Sec-WebSocket-Key": "nope"}), 400),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (upgrade_request("/other"), 404),
        (upgrade_request(headers={"Upgrade": None}), 426),
        (upgrade_request(headers={"Sec-WebSocket-Version": "12"}), 426),
        (upgrade_request(method="POST"), 405),
    ],
    ids=["bad-key", "not-http", "wrong-path", "no-upgrade", "old-version", "post"],
)
async def test_bad_handshake_is_answered_with_its_http_status(
    server: Server, bystander: Bystander, request_bytes: bytes, status: int
) -> None:
    answer, _ = await http_exchange(server.port, request_bytes)
    assert answer == status
    await bystander.still_receives_publications()


async def test_origin_not_allowed_is_refused_with_403() -> None:
    config = make_config(allowed_origins=["https://app.example"])
    async with running_server(config) as strict:
        with pytest.raises(HandshakeRejected) as info:
            await WSClient.open(strict.port, headers={"Origin": "https://evil.example"})
        assert info.value.status == 403
        allowed = await WSClient.open(strict.port, headers={"Origin": "https://app.example"})
        await allowed.close()


async def test_oversized_handshake_is_refused_with_431(
    server: Server, bystander: Bystander
) -> None:
    request = upgrade_request(headers={"X-Padding": "p" * 9000})
    answer, _ = await http_exchange(server.port, request)
    assert answer == 431
    await bystander.still_receives_publications()


# -- refused requests: an error reply, the connection stays -------------------------------


async def assert_error(ws: WSClient, method: str, params: dict[str, Any], code: int) -> None:
    reply = await ws.call(method, params)
    assert reply.get("error", {}).get("code") == code, reply
    assert "ping" in await ws.call("ping"), "the connection must stay open"


async def test_unknown_channel_gets_error_102(session: WSClient, bystander: Bystander) -> None:
    await assert_error(session, "subscribe", {"channel": "nosuchns:room"}, 102)
    await bystander.still_receives_publications()


async def test_subscribe_to_a_namespace_closed_to_clients_gets_error_103(
    session: WSClient, bystander: Bystander
) -> None:
    await assert_error(session, "subscribe", {"channel": "news"}, 103)
    await bystander.still_receives_publications()


async def test_publish_where_clients_may_not_publish_gets_error_103(
    session: WSClient, bystander: Bystander
) -> None:
    sub_token = mint_subscription_token(TEST_SECRET, "alice", "news")
    assert "subscribe" in await session.call("subscribe", {"channel": "news", "token": sub_token})
    await assert_error(session, "publish", {"channel": "news", "data": {"x": 1}}, 103)
    await bystander.still_receives_publications()


async def test_publish_to_a_channel_not_subscribed_gets_error_103(
    session: WSClient, bystander: Bystander
) -> None:
    await assert_error(session, "publish", {"channel": "chat:other", "data": {"x": 1}}, 103)
    await bystander.still_receives_publications()


async def test_history_where_history_is_off_gets_error_108(
    session: WSClient, bystander: Bystander
) -> None:
    assert "subscribe" in await session.call("subscribe", {"channel": "nohistory:a"})
    await assert_error(session, "history", {"channel": "nohistory:a"}, 108)
    await bystander.still_receives_publications()


async def test_channel_name_with_control_characters_gets_error_107(
    session: WSClient, bystander: Bystander
) -> None:
    await assert_error(session, "subscribe", {"channel": "chat:\x00bell\x07"}, 107)
    await bystander.still_receives_publications()


async def test_subscribing_twice_gets_error_105(session: WSClient) -> None:
    assert "subscribe" in await session.call("subscribe", {"channel": "chat:a"})
    await assert_error(session, "subscribe", {"channel": "chat:a"}, 105)


async def test_rpc_gets_error_108(session: WSClient, bystander: Bystander) -> None:
    await assert_error(session, "rpc", {"method": "anything", "data": {}}, 108)
    await bystander.still_receives_publications()


# -- tokens ---------------------------------------------------------------------------------


async def test_expired_token_gets_error_109_and_may_connect_again(
    fresh: WSClient, bystander: Bystander
) -> None:
    expired = token(exp=int(time.time()) - 10)
    reply = await fresh.call("connect", {"token": expired})
    assert reply["error"]["code"] == 109
    again = await fresh.call("connect", {"token": mint_connection_token(TEST_SECRET, "alice")})
    assert "connect" in again
    await bystander.still_receives_publications()


def _tampered() -> str:
    header, _, signature = mint_connection_token(TEST_SECRET, "alice").split(".")
    payload = jwt.utils.base64url_encode(b'{"sub":"admin"}').decode()
    return f"{header}.{payload}.{signature}"


def _alg_none() -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(b'{"sub":"admin"}').decode()
    return f"{header}.{payload}."


def _other_secret() -> str:
    return jwt.encode({"sub": "admin"}, "another-secret-" + "y" * 32, algorithm="HS256")


def _rs256_header() -> str:
    # A public-key algorithm in the header, an HMAC signature made with the real secret.
    header = jwt.utils.base64url_encode(b'{"alg":"RS256","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(b'{"sub":"admin"}').decode()
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(TEST_SECRET.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{jwt.utils.base64url_encode(signature).decode()}"


@pytest.mark.parametrize(
    "bad_token",
    [_tampered(), _alg_none(), _other_secret(), _rs256_header(), "not-a-jwt"],
    ids=["tampered", "alg-none", "other-secret", "rs256-header", "garbage"],
)
async def test_invalid_token_closes_with_3500(
    fresh: WSClient, bystander: Bystander, bad_token: str
) -> None:
    connect = json.dumps({"id": 1, "connect": {"token": bad_token}})
    assert await closed_with(fresh, text(connect)) == 3500
    await bystander.still_receives_publications()


async def test_subscription_token_of_another_user_closes_with_3500(
    session: WSClient, bystander: Bystander
) -> None:
    stolen = mint_subscription_token(TEST_SECRET, "mallory", "private:room")
    command = json.dumps({"id": 5, "subscribe": {"channel": "private:room", "token": stolen}})
    assert await closed_with(session, text(command)) == 3500
    await bystander.still_receives_publications()


async def test_connect_without_token_gets_error_101(fresh: WSClient) -> None:
    reply = await fresh.call("connect", {})
    assert reply["error"]["code"] == 101


# -- the server HTTP API ------------------------------------------------------------------


async def test_api_without_key_is_401(api: ServerApi, bystander: Bystander) -> None:
    status, answer = await api.post("publish", {"channel": WATCHED, "data": 1}, key=None)
    assert status == 401
    assert answer["error"]["code"] == 101
    await bystander.still_receives_publications()


async def test_api_with_wrong_key_is_401(api: ServerApi) -> None:
    status, _ = await api.post("publish", {"channel": WATCHED, "data": 1}, key="wrong")
    assert status == 401


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"channel": "chat:a"}',
        b'{"channel": 5, "data": {}}',
        b'{"channel": "chat:a", "data": {}, "bogus": 1}',
        b"[]",
    ],
    ids=["malformed-json", "missing-data", "wrong-type", "unknown-field", "not-an-object"],
)
async def test_api_bad_body_is_400_with_code_107(
    api: ServerApi, bystander: Bystander, body: bytes
) -> None:
    status, answer = await api.post("publish", body)
    assert status == 400
    assert answer["error"]["code"] == 107
    await bystander.still_receives_publications()


async def test_api_unknown_method_is_404_with_code_104(
    api: ServerApi, bystander: Bystander
) -> None:
    status, answer = await api.post("explode", {})
    assert status == 404
    assert answer["error"]["code"] == 104
    await bystander.still_receives_publications()


async def test_api_unknown_channel_is_200_with_error_102(
    api: ServerApi, bystander: Bystander
) -> None:
    status, answer = await api.post("publish", {"channel": "nosuchns:a", "data": {}})
    assert status == 200
    assert answer["error"]["code"] == 102
    await bystander.still_receives_publications()


async def test_api_history_where_history_is_off_is_200_with_error_108(api: ServerApi) -> None:
    status, answer = await api.post("history", {"channel": "nohistory:a"})
    assert (status, answer["error"]["code"]) == (200, 108)


# -- many clients, one bad actor ------------------------------------------------------------

GARBAGE = [
    b"{not json",
    b'{"id":1,"subscribe":{"channel":"chat:a"},"ping":{}}',
    b"\xff\xfe\xfd",
    b"x" * 70000,
    b'{"id":1,"connect":{"token":"forged.token.here"}}',
]


async def _misbehave(server: Server, rounds: int) -> list[int | None]:
    """Open connections that each send one kind of garbage; return their close codes."""
    codes: list[int | None] = []
    for i in range(rounds):
        ws = await WSClient.open(server.port)
        try:
            codes.append(await closed_with(ws, text(GARBAGE[i % len(GARBAGE)])))
        finally:
            await ws.close()
    return codes


async def test_twenty_subscribers_get_every_publication_while_another_client_sends_garbage(
    server: Server, api: ServerApi
) -> None:
    channel = "chat:stress"
    subscribers = [await open_session(server, f"user{i}") for i in range(20)]
    try:
        for ws in subscribers:
            assert "subscribe" in await ws.call("subscribe", {"channel": channel})

        async def publish_all() -> None:
            for n in range(50):
                await api.publish(channel, {"n": n})
                await asyncio.sleep(0)

        codes, _ = await asyncio.gather(_misbehave(server, 25), publish_all())

        assert set(codes) <= {3500, 3501, 1007, 1009}
        for ws in subscribers:
            received = [(await next_publication(ws))["pub"] for _ in range(50)]
            assert [p["data"]["n"] for p in received] == list(range(50))
            assert [p["offset"] for p in received] == list(range(1, 51))
    finally:
        for ws in subscribers:
            await ws.close()
