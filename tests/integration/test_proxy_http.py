"""The backend hooks over real HTTP: Centrifugo's shapes, bad answers, the bulkhead, the
breaker and the retry budget of each hook, against a real aiohttp backend on a free port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from tether.config import Config, NamespaceConfig, ProxyConfig
from tether.core.hooks import Connection
from tether.errors import BackendUnavailable, ClientError, DisconnectRequested
from tether.proxy import HttpBackend
from tether.testing.backend import ScriptedBackend
from tether.testing.servers import make_config

pytestmark = pytest.mark.integration

ALICE = Connection(
    client="c-1",
    user="alice",
    headers={"cookie": "session=s3cret; theme=dark", "authorization": "Bearer t", "x-other": "1"},
)


def hooked_config(url: str, **proxy: Any) -> Config:
    options = {"url": url, "timeout": 0.5, **proxy}
    chat = NamespaceConfig(
        allow_publish=True, subscribe_proxy="app", publish_proxy="app", sub_refresh_proxy="app"
    )
    return make_config(
        proxies={"app": msgspec.convert(options, ProxyConfig)},
        connect_proxy="app",
        refresh_proxy="app",
        rpc_proxy="app",
        send_proxy="app",
        allowed_origins=["https://app.example"],
        namespaces={"default": NamespaceConfig(), "chat": chat},
    )


@pytest.fixture
async def backend() -> AsyncIterator[ScriptedBackend]:
    async with ScriptedBackend() as b:
        yield b


async def started(config: Config) -> HttpBackend:
    hooks = HttpBackend(config)
    await hooks.start()
    return hooks


@pytest.fixture
async def hooks(backend: ScriptedBackend) -> AsyncIterator[HttpBackend]:
    hooks = await started(
        hooked_config(backend.url, headers=["Authorization"], cookies=["session"])
    )
    yield hooks
    await hooks.close()


async def connect(hooks: HttpBackend, data: bytes | None = b'{"a":1}') -> Any:
    return await hooks.connect(ALICE, data=data, name="py", version="1", channels=["chat:1"])


# -- shapes ---------------------------------------------------------------------------------


async def test_connect_posts_centrifugos_request_shape_and_reads_its_result(
    backend: ScriptedBackend, hooks: HttpBackend
) -> None:
    backend.answer(
        "/connect",
        {
            "result": {
                "user": "alice",
                "expire_at": 2000000000,
                "info": {"name": "Alice"},
                "data": {"hello": 1},
                "channels": ["#alice"],
                "meta": {"plan": "pro"},
            }
        },
    )
    outcome = await connect(hooks)
    assert outcome.user == "alice"
    assert outcome.expire_at == 2000000000
    assert msgspec.json.decode(outcome.info) == {"name": "Alice"}
    assert msgspec.json.decode(outcome.data) == {"hello": 1}
    assert outcome.channels == ("#alice",)
    assert msgspec.json.decode(outcome.meta) == {"plan": "pro"}
    [body] = backend.bodies("/connect")
    assert body == {
        "client": "c-1",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "name": "py",
        "version": "1",
        "data": {"a": 1},
        "channels": ["chat:1"],
    }


async def test_only_the_configured_headers_and_cookies_are_forwarded(
    backend: ScriptedBackend, hooks: HttpBackend
) -> None:
    backend.answer("/connect", {"result": {"user": "alice"}})
    await connect(hooks)
    [received] = backend.received
    assert received.headers["Authorization"] == "Bearer t"
    assert received.headers["Cookie"] == "session=s3cret"
    assert "X-Other" not in received.headers


@pytest.mark.parametrize(
    ("hook", "call", "expected"),
    [
        ("subscribe", "subscribe", {"user": "alice", "channel": "chat:1", "token": "tk"}),
        ("publish", "publish", {"user": "alice", "channel": "chat:1", "data": {"m": 1}}),
        ("rpc", "rpc", {"user": "alice", "method": "sum", "data": {"m": 1}}),
        ("send", "send", {"user": "alice", "data": {"m": 1}}),
        ("refresh", "refresh", {"user": "alice"}),
        ("sub_refresh", "sub_refresh", {"user": "alice", "channel": "chat:1"}),
    ],
)
async def test_every_hook_posts_to_its_path_with_the_connections_fields(
    backend: ScriptedBackend, hooks: HttpBackend, hook: str, call: str, expected: dict[str, Any]
) -> None:
    backend.answer(f"/{hook}", {"result": {}})
    conn = ALICE
    match call:
        case "subscribe":
            await hooks.subscribe(conn, "chat:1", "chat", token="tk", data=None)
        case "publish":
            await hooks.publish(conn, "chat:1", "chat", b'{"m":1}')
        case "rpc":
            await hooks.rpc(conn, "sum", b'{"m":1}')
        case "send":
            await hooks.send(conn, b'{"m":1}')
        case "refresh":
            await hooks.refresh(conn)
        case "sub_refresh":
            await hooks.sub_refresh(conn, "chat:1", "chat")
    [body] = backend.bodies(f"/{hook}")
    assert body == {
        "client": "c-1",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        **expected,
    }


async def test_a_binary_connection_sends_and_reads_base64(
    backend: ScriptedBackend, hooks: HttpBackend
) -> None:
    backend.answer("/rpc", {"result": {"b64data": "AAEC"}})
    conn = Connection(client="c-2", user="bob", encoding="binary")
    assert await hooks.rpc(conn, "m", b"\x00\x01") == b"\x00\x01\x02"
    assert backend.bodies("/rpc")[0]["b64data"] == "AAE="


async def test_the_backends_error_is_the_clients_error(
    backend: ScriptedBackend, hooks: HttpBackend
) -> None:
    backend.answer("/publish", {"error": {"code": 1000, "message": "spam", "temporary": True}})
    with pytest.raises(ClientError) as info:
        await hooks.publish(ALICE, "chat:1", "chat", b"{}")
    assert (info.value.code, info.value.message, info.value.temporary) == (1000, "spam", True)


async def test_the_backends_disconnect_closes_with_its_code(
    backend: ScriptedBackend, hooks: HttpBackend
) -> None:
    backend.answer("/connect", {"disconnect": {"code": 4501, "reason": "banned"}})
    with pytest.raises(DisconnectRequested) as info:
        await connect(hooks)
    assert info.value.disconnect.code == 4501
    assert info.value.disconnect.reason == "banned"
    assert not info.value.disconnect.reconnect


async def test_publish_may_replace_the_data(backend: ScriptedBackend, hooks: HttpBackend) -> None:
    backend.answer("/publish", {"result": {"data": {"text": "clean"}, "skip_history": True}})
    outcome = await hooks.publish(ALICE, "chat:1", "chat", b'{"text":"dirty"}')
    assert outcome.data is not None
    assert msgspec.json.decode(outcome.data) == {"text": "clean"}
    assert outcome.skip_history


# -- bad answers ----------------------------------------------------------------------------

BAD_ANSWERS = [
    ("malformed JSON", lambda b: b.answer("/connect", b'{"result": '), "malformed"),
    ("wrong type", lambda b: b.answer("/connect", {"result": {"user": 42}}), "malformed"),
    ("result not an object", lambda b: b.answer("/connect", {"result": [1]}), "malformed"),
    ("nothing", lambda b: b.answer("/connect", {}), "malformed"),
    (
        "result and error",
        lambda b: b.answer("/connect", {"result": {}, "error": {"code": 400}}),
        "malformed",
    ),
    ("error code range", lambda b: b.answer("/connect", {"error": {"code": 7}}), "malformed"),
    ("disconnect range", lambda b: b.answer("/connect", {"disconnect": {"code": 1}}), "malformed"),
    ("bad base64", lambda b: b.answer("/connect", {"result": {"b64info": "@@"}}), "malformed"),
    ("huge body", lambda b: b.huge("/connect", 2 << 20), "too_large"),
    ("redirect", lambda b: b.redirect("/connect", "/elsewhere"), "redirect"),
    ("status 500", lambda b: b.status("/connect", 500), "status"),
    ("slow drip", lambda b: b.drip("/connect", b'{"result": {"user": "a"}}', 0.1), "timeout"),
    ("hang", lambda b: b.hang("/connect"), "timeout"),
]


@pytest.mark.parametrize(("case", "script", "reason"), BAD_ANSWERS, ids=[c[0] for c in BAD_ANSWERS])
async def test_a_bad_answer_is_a_documented_failure_with_a_log_line(
    backend: ScriptedBackend, case: str, script: Any, reason: str
) -> None:
    hooks = await started(hooked_config(backend.url, retry_budget_ratio=0.0001))
    try:
        script(backend)
        with capture_logs() as logs, pytest.raises(BackendUnavailable) as info:
            await connect(hooks)
        assert info.value.reason == reason
        failures = [e for e in logs if e["event"] == "backend call failed"]
        assert failures
        assert failures[0]["reason"] == reason
        assert hooks.endpoints[("app", "connect")].stats.failures[reason] >= 1
        assert backend.count("/elsewhere") == 0  # a redirect is never followed
    finally:
        await hooks.close()


# -- isolation: bulkhead, breaker, budget ---------------------------------------------------


async def test_a_full_bulkhead_refuses_at_once_and_other_hooks_still_work(
    backend: ScriptedBackend,
) -> None:
    hooks = await started(hooked_config(backend.url, max_in_flight=2, timeout=5))
    try:
        backend.hang("/publish")
        backend.answer("/connect", {"result": {"user": "alice"}})
        stuck = [
            asyncio.ensure_future(hooks.publish(ALICE, "chat:1", "chat", b"{}")) for _ in range(2)
        ]
        await backend.wait_count("/publish", 2)
        with pytest.raises(BackendUnavailable) as info:
            await hooks.publish(ALICE, "chat:1", "chat", b"{}")
        assert info.value.reason == "bulkhead_full"
        assert backend.count("/publish") == 2
        assert (await connect(hooks)).user == "alice"
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
    finally:
        await hooks.close()


async def test_a_hanging_backend_opens_the_breaker_then_it_closes_on_recovery(
    backend: ScriptedBackend,
) -> None:
    hooks = await started(
        hooked_config(backend.url, timeout=0.3, breaker_failures=3, breaker_reset=1.0)
    )
    try:
        backend.hang("/subscribe")
        backend.answer("/rpc", {"result": {"data": {"ok": True}}})
        started_at = time.monotonic()
        calls = [hooks.subscribe(ALICE, "chat:1", "chat", token="", data=None) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, BackendUnavailable) for r in results)
        endpoint = hooks.endpoints[("app", "subscribe")]
        assert endpoint.breaker.state.value == "open"
        # Within the configured window: three timeouts of 0.3 s, concurrently.
        assert time.monotonic() - started_at < 0.3 * 3 + 1
        sent = backend.count("/subscribe")
        with pytest.raises(BackendUnavailable) as info:
            await hooks.subscribe(ALICE, "chat:1", "chat", token="", data=None)
        assert info.value.reason == "circuit_open"
        assert backend.count("/subscribe") == sent  # refused without a request
        answer = await hooks.rpc(ALICE, "m", None)  # another hook of the proxy works
        assert answer is not None
        assert msgspec.json.decode(answer) == {"ok": True}
        backend.answer("/subscribe", {"result": {}})
        await asyncio.sleep(1.05)
        await hooks.subscribe(ALICE, "chat:1", "chat", token="", data=None)  # the probe
        assert endpoint.breaker.state.value == "closed"
    finally:
        await hooks.close()


async def test_a_backend_failing_every_request_gets_at_most_the_budgeted_retries(
    backend: ScriptedBackend,
) -> None:
    # A breaker that never opens, to see the budget alone.
    hooks = await started(hooked_config(backend.url, breaker_failures=10_000))
    try:
        backend.status("/connect", 503)
        backend.status("/publish", 503)
        calls = 200
        began = time.monotonic()
        for _ in range(calls):
            with pytest.raises(BackendUnavailable):
                await connect(hooks)
        elapsed = time.monotonic() - began
        ratio = 0.1
        # ratio of the calls, plus the one-a-second trickle, plus at most one banked.
        allowed = calls * ratio + elapsed * 1.0 + 1
        extra = backend.count("/connect") - calls
        assert 0 < extra <= allowed, (extra, allowed)
        assert hooks.endpoints[("app", "connect")].stats.retries == extra
        for _ in range(50):
            with pytest.raises(BackendUnavailable):
                await hooks.publish(ALICE, "chat:1", "chat", b"{}")
        assert backend.count("/publish") == 50  # not idempotent: never retried
    finally:
        await hooks.close()
