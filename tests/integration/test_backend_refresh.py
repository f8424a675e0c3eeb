"""Server-side refresh through the backend: a connection (or subscription) whose hook
result carries ``expire_at`` is refreshed by ``/refresh`` (``/sub_refresh``) when it is
due, extended or closed as the backend says, and closed when it cannot be checked."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web
from sdk_kit import SdkClients, next_event, subscribe

from tether.config import NamespaceConfig, ProxyConfig
from tether.protocol.codes import DisconnectCode
from tether.testing.backend import ScriptedBackend
from tether.testing.servers import make_config, running_server

pytestmark = pytest.mark.integration


def config(url: str, **overrides: Any) -> Any:
    room = NamespaceConfig(subscribe_proxy="app", sub_refresh_proxy="app")
    return make_config(
        proxies={"app": ProxyConfig(url=url, timeout=0.5)},
        connect_proxy="app",
        refresh_proxy="app",
        namespaces={"default": NamespaceConfig(), "room": room},
        **overrides,
    )


async def test_the_backend_extends_a_connection_then_ends_it(sdk: SdkClients) -> None:
    async with ScriptedBackend() as backend:
        backend.handle(
            "/connect",
            lambda _: web.json_response(
                {"result": {"user": "alice", "expire_at": int(time.time()) + 1}}
            ),
        )
        answers = iter(
            [{"result": {"expire_at": int(time.time()) + 2}}, {"result": {"expired": True}}]
        )
        backend.handle("/refresh", lambda _: web.json_response(next(answers)))
        async with running_server(config(backend.url)) as server:
            _, events = await sdk.connect(server.port, token="")
            events.reconnect_gate.clear()  # stay away once closed
            connecting = await next_event(events.connecting)
    assert connecting.code == DisconnectCode.EXPIRED.code == 3005
    assert backend.count("/refresh") == 2
    assert backend.bodies("/refresh")[0]["user"] == "alice"


async def test_a_refresh_that_cannot_be_checked_closes_after_the_grace(
    sdk: SdkClients,
) -> None:
    async with ScriptedBackend() as backend:
        backend.handle(
            "/connect",
            lambda _: web.json_response(
                {"result": {"user": "alice", "expire_at": int(time.time()) + 1}}
            ),
        )
        backend.status("/refresh", 500)
        async with running_server(config(backend.url, expired_close_delay=1)) as server:
            _, events = await sdk.connect(server.port, token="")
            events.reconnect_gate.clear()
            connecting = await next_event(events.connecting)
    assert connecting.code == 3005  # never left open unchecked
    assert backend.count("/refresh") >= 1


async def test_the_backend_ends_a_subscription_through_sub_refresh(sdk: SdkClients) -> None:
    async with ScriptedBackend() as backend:
        backend.answer("/connect", {"result": {"user": "alice"}})
        backend.handle(
            "/subscribe",
            lambda _: web.json_response({"result": {"expire_at": int(time.time()) + 1}}),
        )
        backend.answer("/sub_refresh", {"result": {"expired": True}})
        async with running_server(config(backend.url)) as server:
            client, events = await sdk.connect(server.port, token="")
            events.reconnect_gate.clear()
            await subscribe(client, "room:1")
            connecting = await next_event(events.connecting)
    assert connecting.code == DisconnectCode.SUB_EXPIRED.code == 3006
    assert backend.bodies("/sub_refresh")[0]["channel"] == "room:1"
