"""Each backend hook end to end: the real centrifuge-python SDK against a real node whose
hooks post to a real HTTP backend; the Origin check before any hook; a hanging backend's
breaker; bad answers as the client sees them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from centrifuge import ReplyError, SubscriptionState
from sdk_kit import HttpApi, SdkClients, SubEvents, data_of, next_event, subscribe

from tether.config import Config, NamespaceConfig, ProxyConfig
from tether.server import Server
from tether.testing.backend import ScriptedBackend
from tether.testing.servers import OPEN, make_config, running_server

pytestmark = pytest.mark.integration

ORIGIN = "https://app.example"
COOKIES = {"Cookie": "session=alice-session; theme=dark", "Origin": ORIGIN}


def hooked_config(url: str, **proxy: Any) -> Config:
    options = {"url": url, "timeout": 1.0, "cookies": ["session"], **proxy}
    chat = NamespaceConfig(
        history_size=10,
        history_ttl=60,
        presence=True,
        allow_history=True,
        subscribe_proxy="app",
        publish_proxy="app",
    )
    return make_config(
        proxies={"app": msgspec.convert(options, ProxyConfig)},
        connect_proxy="app",
        rpc_proxy="app",
        send_proxy="app",
        allowed_origins=[ORIGIN],
        namespaces={"default": NamespaceConfig(), "chat": chat, "open": OPEN},
    )


def payload(body: dict[str, Any]) -> Any:
    """A hook request's payload: ``data`` from JSON connections, ``b64data`` (here JSON
    documents as bytes) from Protobuf ones."""
    if "b64data" in body:
        return json.loads(base64.b64decode(body["b64data"]))
    return body.get("data")


def app_backend(backend: ScriptedBackend) -> None:
    """The hooks the way an app answers them (the session cookie names the user)."""

    def connect(body: dict[str, Any]) -> web.Response:
        cookie = backend.received[-1].headers.get("Cookie", "")
        if cookie != "session=alice-session":
            return web.json_response({"error": {"code": 401, "message": "no session"}})
        return web.json_response({"result": {"user": "alice", "data": {"welcome": "alice"}}})

    def subscribe_hook(body: dict[str, Any]) -> web.Response:
        if body["channel"].startswith("chat:secret"):
            return web.json_response({"error": {"code": 403, "message": "not a member"}})
        return web.json_response({"result": {"info": {"role": "member"}}})

    def publish(body: dict[str, Any]) -> web.Response:
        text = payload(body).get("text", "")
        if "spam" in text:
            return web.json_response({"error": {"code": 1000, "message": "spam"}})
        return web.json_response({"result": {"data": {"text": text.strip(), "checked": True}}})

    def rpc(body: dict[str, Any]) -> web.Response:
        if body["method"] == "sum":
            return web.json_response({"result": {"data": {"sum": sum(payload(body)["n"])}}})
        return web.json_response({"error": {"code": 404, "message": "no such method"}})

    backend.handle("/connect", connect)
    backend.handle("/subscribe", subscribe_hook)
    backend.handle("/publish", publish)
    backend.handle("/rpc", rpc)
    backend.answer("/send", {"result": {}})


@pytest.fixture
async def backend() -> AsyncIterator[ScriptedBackend]:
    async with ScriptedBackend() as b:
        app_backend(b)
        yield b


@pytest.fixture
async def hooked(backend: ScriptedBackend) -> AsyncIterator[Server]:
    async with running_server(hooked_config(backend.url)) as server:
        yield server


async def test_a_cookie_session_connects_through_the_connect_hook(
    hooked: Server, backend: ScriptedBackend, sdk: SdkClients
) -> None:
    client, events = sdk.new(hooked.port, token="", headers=COOKIES)
    await client.connect()
    connected = await next_event(events.connected)
    assert data_of(connected.data) == {"welcome": "alice"}
    [body] = backend.bodies("/connect")
    assert body["client"] == connected.client
    encoding = "binary" if sdk.encoding == "protobuf" else "json"
    assert (body["transport"], body["protocol"], body["encoding"]) == (
        "websocket",
        sdk.encoding,
        encoding,
    )
    assert body["name"] == "python"
    # only the configured cookie reached the backend
    assert backend.received[0].headers["Cookie"] == "session=alice-session"


async def test_a_cookie_connect_from_a_foreign_origin_is_refused_403_before_any_hook(
    hooked: Server, backend: ScriptedBackend
) -> None:
    url = f"http://127.0.0.1:{hooked.port}/connection/websocket"
    headers = {**COOKIES, "Origin": "https://evil.example"}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers=headers)
    assert refused.value.status == 403
    assert backend.count("/connect") == 0


async def test_the_backends_connect_error_reaches_the_client(
    hooked: Server, backend: ScriptedBackend, sdk: SdkClients
) -> None:
    client, events = sdk.new(hooked.port, token="", headers={"Origin": ORIGIN})
    await client.connect()
    disconnected = await next_event(events.disconnected)
    # A non-temporary connect error: the SDK stops with the backend's code and message.
    assert (disconnected.code, disconnected.reason) == (401, "no session")
    assert backend.count("/connect") == 1


async def test_the_subscribe_hook_authorizes_and_refuses(
    hooked: Server, backend: ScriptedBackend, sdk: SdkClients
) -> None:
    client, _ = await sdk.connect(hooked.port, token="", headers=COOKIES)
    await subscribe(client, "chat:room")
    body = backend.bodies("/subscribe")[0]
    assert (body["user"], body["channel"]) == ("alice", "chat:room")

    events = SubEvents()
    secret = client.new_subscription("chat:secret", events=events)
    await secret.subscribe()
    unsubscribed = await next_event(events.unsubscribed)
    assert unsubscribed.code == 403
    assert secret.state is SubscriptionState.UNSUBSCRIBED


async def test_the_publish_hook_checks_replaces_and_the_data_is_stored_as_replaced(
    hooked: Server, backend: ScriptedBackend, sdk: SdkClients
) -> None:
    client, _ = await sdk.connect(hooked.port, token="", headers=COOKIES)
    sub, sub_events, _ = await subscribe(client, "chat:room")

    await sub.publish(sdk.payload({"text": "  hello  "}))
    [pub] = await sub_events.next_publications(1)
    assert data_of(pub.data) == {"text": "hello", "checked": True}
    assert pub.info is not None
    assert pub.info.user == "alice"
    with pytest.raises(ReplyError) as refused:
        await sub.publish(sdk.payload({"text": "buy spam"}))
    assert (refused.value.code, refused.value.message) == (1000, "spam")
    history = await sub.history(limit=10)
    assert [data_of(p.data) for p in history.publications] == [{"text": "hello", "checked": True}]


async def test_rpc_is_answered_by_the_backend(
    hooked: Server, backend: ScriptedBackend, sdk: SdkClients
) -> None:
    client, _ = await sdk.connect(hooked.port, token="", headers=COOKIES)
    result = await client.rpc("sum", sdk.payload({"n": [1, 2, 3]}))
    assert data_of(result.data) == {"sum": 6}
    with pytest.raises(ReplyError) as unknown:
        await client.rpc("nope", sdk.payload({}))
    assert unknown.value.code == 404
    assert [b["method"] for b in backend.bodies("/rpc")] == ["sum", "nope"]


async def test_a_jwt_connection_does_not_call_the_connect_hook(
    hooked: Server, backend: ScriptedBackend, sdk: SdkClients
) -> None:
    await sdk.connect(hooked.port, "bob")
    assert backend.count("/connect") == 0


# -- a hanging backend ----------------------------------------------------------------------


async def test_a_hanging_publish_hook_opens_its_breaker_while_the_rest_keeps_working(
    sdk: SdkClients,
) -> None:
    async with ScriptedBackend() as backend:
        app_backend(backend)
        config = hooked_config(backend.url, timeout=0.5, breaker_failures=3, breaker_reset=2.0)
        async with running_server(config) as server, aiohttp.ClientSession() as session:
            client, _ = await sdk.connect(server.port, token="", headers=COOKIES)
            sub, _, _ = await subscribe(client, "chat:room")
            _, feed_events, _ = await subscribe(client, "open:feed")
            backend.hang("/publish")

            for _ in range(3):  # each waits out the timeout, then a temporary error
                with pytest.raises(ReplyError) as failed:
                    await sub.publish(sdk.payload({"text": "hi"}))
                assert (failed.value.code, failed.value.temporary) == (100, True)
            sent = backend.count("/publish")
            began = time.monotonic()
            with pytest.raises(ReplyError) as refused:
                await sub.publish(sdk.payload({"text": "hi"}))
            assert (refused.value.code, refused.value.temporary) == (100, True)
            assert time.monotonic() - began < 0.5  # at once: no wait for the timeout
            assert backend.count("/publish") == sent  # the breaker sent nothing

            # other hooks, plain fan-out and readiness are untouched
            assert data_of((await client.rpc("sum", sdk.payload({"n": [2, 2]}))).data) == {"sum": 4}
            http = HttpApi(session, server)
            await http.call("publish", {"channel": "open:feed", "data": {"n": 1}})
            assert data_of((await feed_events.next_publications(1))[0].data) == {"n": 1}
            ready = f"http://127.0.0.1:{server.http_port}/ready"
            async with session.get(ready) as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response:
                metrics = await response.text()
            assert (
                'tether_proxy_breaker_state{hook="publish",proxy="app",state="open"} 1.0' in metrics
            )

            # recovery: the backend answers again, the probe closes the breaker
            app_backend(backend)
            await asyncio.sleep(2.1)
            await sub.publish(sdk.payload({"text": "back"}))
            async with session.get(f"http://127.0.0.1:{server.http_port}/metrics") as response:
                metrics = await response.text()
            assert (
                'tether_proxy_breaker_state{hook="publish",proxy="app",state="closed"} 1.0'
                in metrics
            )


@pytest.mark.parametrize(
    "script",
    [
        lambda b: b.answer("/rpc", b"not json"),
        lambda b: b.answer("/rpc", {"result": {"data": "x", "b64data": "!!"}}),
        lambda b: b.huge("/rpc", 2 << 20),
        lambda b: b.redirect("/rpc", "http://127.0.0.1:1/elsewhere"),
        lambda b: b.drip("/rpc", b'{"result": {}}', 0.2),
    ],
    ids=["malformed", "bad-base64", "huge", "redirect", "slow-drip"],
)
async def test_a_bad_backend_answer_is_a_temporary_error_and_the_connection_lives(
    sdk: SdkClients, script: Any
) -> None:
    async with ScriptedBackend() as backend:
        app_backend(backend)
        async with running_server(hooked_config(backend.url, timeout=0.5)) as server:
            client, _ = await sdk.connect(server.port, token="", headers=COOKIES)
            script(backend)
            with pytest.raises(ReplyError) as failed:
                await client.rpc("sum", sdk.payload({"n": [1]}))
            assert (failed.value.code, failed.value.temporary) == (100, True)
            app_backend(backend)
            assert data_of((await client.rpc("sum", sdk.payload({"n": [1]}))).data) == {"sum": 1}


async def test_the_connect_hooks_subs_subscribe_server_side_with_their_info_and_data(
    backend: ScriptedBackend, sdk: SdkClients
) -> None:
    # Centrifugo's connect result: "channels" plus "subs" (channel -> info, data).
    backend.answer(
        "/connect",
        {
            "result": {
                "user": "alice",
                "channels": ["chat:news"],
                "subs": {"chat:room": {"info": {"role": "admin"}, "data": {"welcome": 1}}},
            }
        },
    )
    async with running_server(hooked_config(backend.url)) as server:
        client, events = sdk.new(server.port, token="", headers=COOKIES)
        await client.connect()
        await next_event(events.connected)
        subscribed = {}
        for _ in range(2):
            ctx = await next_event(events.subscribed)
            subscribed[ctx.channel] = data_of(ctx.data) if ctx.data else None
        assert subscribed == {"chat:news": None, "chat:room": {"welcome": 1}}
        async with aiohttp.ClientSession() as session:
            presence = await HttpApi(session, server).call("presence", {"channel": "chat:room"})
        [entry] = presence["presence"].values()
        assert (entry["user"], entry["chan_info"]) == ("alice", {"role": "admin"})
        await client.disconnect()
