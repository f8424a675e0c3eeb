"""The real ``centrifuge`` npm SDK (pinned in tests/js/package.json) works unchanged
against Tether under Node.js.

Each test starts a Tether node in-process, runs ``node tests/js/scenarios.mjs SCENARIO`` and
reads what the SDK reports as JSON lines on the child's stdout (``{"event": ...}``). The test
acts at the right moments (publishes through the HTTP API, disconnects the user, cuts the
network with a :class:`~tether.testing.faults.TcpProxy`, answers the SDK's token requests
on the child's stdin) and asserts what an application using the SDK would see.

Node packages come from ``make js-deps`` (``npm ci`` in tests/js); without them these tests
fail (never skip), so that CI cannot pass without having run the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tether.auth import mint_connection_token
from tether.config import ProxyConfig
from tether.server import Server
from tether.testing.backend import ScriptedBackend
from tether.testing.faults import TcpProxy
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCENARIOS = JS_DIR / "scenarios.mjs"
SDK_VERSION = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["centrifuge"]
"""The pinned SDK version (5.7.4); the installed one must match it."""
EVENT_TIMEOUT = 10.0
"""Seconds to wait for one expected SDK event (reconnects take well under a second)."""

Event = dict[str, Any]


def _node_or_fail() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js (`node`) is not on PATH: install Node.js 20+, then `make js-deps`")
    sdk = JS_DIR / "node_modules" / "centrifuge" / "package.json"
    if not sdk.is_file():
        pytest.fail(f"{sdk.parent} is missing: run `make js-deps` (npm ci in tests/js) first")
    version = json.loads(sdk.read_text())["version"]
    if version != SDK_VERSION:
        pytest.fail(f"centrifuge {version} installed, {SDK_VERSION} pinned: run `make js-deps`")
    return node


def token(user: str, ttl: float | None = None) -> str:
    return mint_connection_token(TEST_SECRET, user, ttl=ttl)


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/connection/websocket"


class JsClient:
    """One ``node scenarios.mjs`` child: its events, read as they come, and its stdin."""

    def __init__(self, process: asyncio.subprocess.Process, scenario: str) -> None:
        self.process = process
        self.scenario = scenario
        self.events: list[Event] = []
        """Every event read so far, in order."""
        self._stderr = b""
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr = await self.process.stderr.read()

    def describe(self) -> str:
        lines = "\n".join(json.dumps(e) for e in self.events)
        stderr = self._stderr.decode(errors="replace")
        return f"scenario {self.scenario!r} events:\n{lines}\nstderr:\n{stderr}"

    async def _next(self) -> Event | None:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            return None
        try:
            event: Event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line from node: {line!r}\n{self.describe()}")
        self.events.append(event)
        if event["event"] in ("fatal", "timeout"):
            pytest.fail(f"node reported {event}\n{self.describe()}")
        return event

    async def expect(self, name: str, within: float = EVENT_TIMEOUT, **fields: Any) -> Event:
        """Read events until one named ``name`` whose ``fields`` match (for at most
        ``within`` seconds); return it."""
        try:
            async with asyncio.timeout(within):
                while (event := await self._next()) is not None:
                    if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                        return event
        except TimeoutError:
            pass
        await self._stderr_waited(0.5)
        pytest.fail(f"no {name!r} event with {fields} within {within}s\n{self.describe()}")

    async def watch(self, seconds: float) -> list[Event]:
        """Read events for ``seconds``; return those that arrived."""
        start = len(self.events)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while await self._next() is not None:
                    pass
        return self.events[start:]

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")

    async def finish(self, within: float = EVENT_TIMEOUT) -> list[Event]:
        """Read to the end (the scenario ends by itself, in at most ``within`` seconds);
        exit status 0 or the test fails."""
        try:
            async with asyncio.timeout(within):
                while await self._next() is not None:
                    pass
                status = await self.process.wait()
        except TimeoutError:
            pytest.fail(f"node did not finish within {within}s\n{self.describe()}")
        await self._stderr_waited(within)
        assert status == 0, f"node exited with {status}\n{self.describe()}"
        return self.events

    async def stop(self) -> list[Event]:
        """Tell the scenario to disconnect and exit; return every event."""
        self.send(cmd="stop")
        return await self.finish()

    async def _stderr_waited(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.shield(self._stderr_task)

    async def close(self) -> None:
        """Kill the child if it still runs; release its pipes."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task
        if self.process.stdin is not None:
            self.process.stdin.close()
            with contextlib.suppress(ConnectionError):
                await self.process.stdin.wait_closed()


Spawn = Callable[..., Awaitable[JsClient]]


@pytest.fixture(params=["json", "protobuf"])
async def js(server: Server, request: pytest.FixtureRequest) -> AsyncIterator[Spawn]:
    """``await js(scenario, token=..., channel=..., url=..., **env)`` starts a scenario.
    Every test that uses it runs with the SDK's JSON build and with its Protobuf build
    (``centrifuge/build/protobuf``). Without Node.js or the pinned SDK the test fails (in
    its body, so that the summary line says what to run)."""
    children: list[JsClient] = []
    encoding: str = request.param

    async def spawn(
        scenario: str,
        *,
        token: str = "",
        channel: str = "",
        url: str | None = None,
        **extra: str,
    ) -> JsClient:
        env = {
            **os.environ,
            "TETHER_WS_URL": url or ws_url(server.port),
            "TETHER_TOKEN": token,
            "TETHER_CHANNEL": channel,
            "TETHER_TIMEOUT_MS": "30000",
            "TETHER_ENCODING": encoding,
            **{f"TETHER_{key.upper()}": value for key, value in extra.items()},
        }
        process = await asyncio.create_subprocess_exec(
            _node_or_fail(),
            str(SCENARIOS),
            scenario,
            env=env,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        child = JsClient(process, scenario)
        children.append(child)
        return child

    try:
        yield spawn
    finally:
        for child in children:
            await child.close()


Api = Callable[..., Awaitable[Any]]


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    """``await api(method, **body)``: the method's ``result``; an error fails the test."""
    base = f"http://127.0.0.1:{server.http_port}/api/"
    async with aiohttp.ClientSession(headers={"X-API-Key": TEST_API_KEY}) as session:

        async def call(method: str, **body: Any) -> Any:
            async with session.post(base + method, json=body) as response:
                answer = await response.json()
            assert response.status == 200, (method, answer)
            assert "error" not in answer, (method, answer)
            return answer["result"]

        yield call


def publications(events: list[Event]) -> list[Event]:
    return [e for e in events if e["event"] == "publication"]


def offsets(events: list[Event]) -> list[int]:
    return [e["offset"] for e in publications(events)]


async def publish_many(api: Api, channel: str, numbers: range) -> None:
    for n in numbers:
        await api("publish", channel=channel, data={"n": n})


# -- tests ------------------------------------------------------------------------------


async def test_js_client_receives_api_publications_in_order(api: Api, js: Spawn) -> None:
    channel = "chat:order"
    client = await js("subscribe", token=token("alice"), channel=channel)
    subscribed = await client.expect("subscribed", channel=channel)
    assert subscribed["recoverable"] is True
    assert subscribed["wasRecovering"] is False

    await publish_many(api, channel, range(1, 11))
    for _ in range(10):
        await client.expect("publication")
    events = await client.stop()

    pubs = publications(events)
    assert [p["data"] for p in pubs] == [{"n": n} for n in range(1, 11)]
    assert [p["offset"] for p in pubs] == list(range(1, 11))
    assert all(p["channel"] == channel and p["user"] is None for p in pubs)
    assert [e["event"] for e in events].count("connected") == 1


async def test_js_client_publishes_where_allowed_and_publication_is_in_history(
    api: Api, js: Spawn
) -> None:
    channel = "chat:js-publish"
    payloads = [{"text": "hello"}, {"text": "from node"}]
    client = await js("publish", token=token("bob"), channel=channel, publish=json.dumps(payloads))
    events = await client.finish()

    published = [e for e in events if e["event"] == "published"]
    assert [p["ok"] for p in published] == [True, True], client.describe()
    # The publisher is subscribed: it sees its own publications, with its identity.
    assert [(p["data"], p["user"]) for p in publications(events)] == [
        (payloads[0], "bob"),
        (payloads[1], "bob"),
    ]
    history = await api("history", channel=channel, limit=10)
    assert [p["data"] for p in history["publications"]] == payloads
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    assert [p["info"]["user"] for p in history["publications"]] == ["bob", "bob"]


async def test_js_client_publish_is_refused_where_not_allowed(js: Spawn) -> None:
    # `default` is closed: no client publishes there (and none is subscribed).
    client = await js("publish_unsubscribed", token=token("bob"), publish_channel="news")
    events = await client.finish()

    [published] = [e for e in events if e["event"] == "published"]
    assert published["ok"] is False
    assert published["error"]["code"] == 103  # permission denied


async def test_js_client_reads_presence_presence_stats_and_history(api: Api, js: Spawn) -> None:
    channel = "chat:read"
    await publish_many(api, channel, range(1, 4))
    client = await js("read", token=token("carol"), channel=channel)
    events = await client.finish()
    by_name = {e["event"]: e for e in events}
    connected = by_name["connected"]

    presence = by_name["presence"]
    assert presence["ok"] is True, client.describe()
    assert presence["clients"] == [{"client": connected["client"], "user": "carol"}]
    stats = by_name["presence_stats"]
    assert (stats["ok"], stats["numClients"], stats["numUsers"]) == (True, 1, 1)
    history = by_name["history"]
    assert history["ok"] is True, client.describe()
    assert [p["data"] for p in history["publications"]] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [p["offset"] for p in history["publications"]] == [1, 2, 3]
    assert history["offset"] == 3
    assert history["epoch"] == by_name["subscribed"]["streamPosition"]["epoch"]


async def test_js_client_recovers_missed_publications_after_server_disconnect(
    server: Server, api: Api, js: Spawn
) -> None:
    channel = "chat:recover-disconnect"
    # The proxy only holds the client away while the test publishes what it misses, so
    # that the outcome does not depend on how fast the SDK reconnects.
    async with TcpProxy(server.port) as gate:
        client = await js("subscribe", token=token("dave"), channel=channel, url=ws_url(gate.port))
        first = await client.expect("subscribed", channel=channel)
        await publish_many(api, channel, range(1, 4))
        await client.expect("publication", offset=3)

        gate.refuse_new = True
        await api(
            "disconnect",
            user="dave",
            disconnect={"code": 3011, "reason": "force reconnect"},
        )
        connecting = await client.expect("connecting")
        assert (connecting["code"], connecting["reason"]) == (3011, "force reconnect")
        await publish_many(api, channel, range(4, 7))
        gate.refuse_new = False

        resubscribed = await client.expect("subscribed", channel=channel)
        assert resubscribed["wasRecovering"] is True
        assert resubscribed["recovered"] is True
        assert resubscribed["hasRecoveredPublications"] is True
        assert resubscribed["streamPosition"] == {
            "offset": 6,
            "epoch": first["streamPosition"]["epoch"],
        }
        await client.expect("publication", offset=6)
        # The stream goes on live after the recovery.
        await publish_many(api, channel, range(7, 8))
        await client.expect("publication", offset=7)
        events = await client.stop()

    assert offsets(events) == list(range(1, 8)), client.describe()
    assert [p["data"] for p in publications(events)] == [{"n": n} for n in range(1, 8)]
    assert [e["event"] for e in events].count("connected") == 2


async def test_js_client_recovers_missed_publications_after_dropped_tcp_connection(
    server: Server, api: Api, js: Spawn
) -> None:
    channel = "chat:recover-drop"
    async with TcpProxy(server.port) as proxy:
        client = await js("subscribe", token=token("erin"), channel=channel, url=ws_url(proxy.port))
        first = await client.expect("subscribed", channel=channel)
        await publish_many(api, channel, range(1, 3))
        await client.expect("publication", offset=2)

        # The network goes away: the connection dies without a close frame and the
        # client cannot get back until it returns.
        proxy.refuse_new = True
        assert proxy.drop() == 1
        connecting = await client.expect("connecting")
        assert connecting["code"] == 1  # the SDK's "transport closed"
        await publish_many(api, channel, range(3, 6))
        proxy.refuse_new = False

        resubscribed = await client.expect("subscribed", channel=channel)
        assert resubscribed["wasRecovering"] is True
        assert resubscribed["recovered"] is True
        assert resubscribed["hasRecoveredPublications"] is True
        assert resubscribed["streamPosition"] == {
            "offset": 5,
            "epoch": first["streamPosition"]["epoch"],
        }
        await client.expect("publication", offset=5)
        events = await client.stop()

    assert offsets(events) == [1, 2, 3, 4, 5], client.describe()
    assert [p["data"] for p in publications(events)] == [{"n": n} for n in range(1, 6)]


def _tampered(jwt: str) -> str:
    header, payload, signature = jwt.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    return f"{header}.{payload}.{flipped}{signature[1:]}"


async def test_js_client_with_expired_token_is_refused(js: Spawn) -> None:
    client = await js("connect", token=token("frank", ttl=-60))
    events = await client.finish()

    names = [e["event"] for e in events]
    assert "connected" not in names, client.describe()
    errors = [e for e in events if e["event"] == "error" and e["type"] == "connect"]
    assert errors, client.describe()
    assert errors[0]["code"] == 109  # token expired
    # Without a getToken callback the SDK cannot get a fresh token: it gives up.
    assert events[-2]["event"] == "disconnected"
    assert events[-2]["reason"] == "unauthorized"


async def test_js_client_with_tampered_token_is_refused(js: Spawn) -> None:
    client = await js("connect", token=_tampered(token("frank")))
    events = await client.finish()

    assert "connected" not in [e["event"] for e in events], client.describe()
    disconnected = events[-2]
    assert disconnected["event"] == "disconnected"
    assert (disconnected["code"], disconnected["reason"]) == (3500, "invalid token")


async def connected_with_fresh_token(client: JsClient, user: str, ttl: float) -> Event:
    """Answer the SDK's first getToken (a client started without a token asks at once):
    the token is minted when it is needed, however long Node.js took to start."""
    await client.expect("token_requested")
    client.send(cmd="token", token=token(user, ttl=ttl))
    return await client.expect("connected")


async def test_js_client_refreshes_its_token_and_stays_connected(server: Server, js: Spawn) -> None:
    ttl = 3
    client = await js("connect", get_token="1")
    connected = await connected_with_fresh_token(client, "grace", ttl)
    started = time.monotonic()
    first_expiry = server.node.clients[connected["client"]].expire_at
    assert first_expiry is not None

    # Stay past two expiries of the first token, handing the SDK a fresh short-lived token
    # each time it asks, as an app backend would. The SDK asks when the ttl of the connect
    # (or refresh) reply runs out, and that ttl is rounded down to whole seconds, so with a
    # backend one slow mobile HTTP call away the refresh lands after `exp`: the server must
    # give it time (the node checks expiry every second, the latency is longer than that).
    backend_latency = 1.2
    answers_due: list[float] = []
    refreshes = 0
    while (now := time.monotonic()) < started + 2 * ttl + 2:
        while answers_due and answers_due[0] <= now:
            answers_due.pop(0)
            refreshes += 1
            client.send(cmd="token", token=token("grace", ttl=ttl))
        for event in await client.watch(0.05):
            if event["event"] == "token_requested":
                answers_due.append(time.monotonic() + backend_latency)
    # The same connection all along, its expiry moved forward by the refreshes.
    session = server.node.clients.get(connected["client"])
    assert session is not None, client.describe()
    assert session.expire_at is not None
    assert session.expire_at >= first_expiry + ttl
    events = await client.stop()

    assert refreshes >= 2, client.describe()
    names = [e["event"] for e in events]
    assert names.count("connected") == 1, client.describe()
    assert names.count("connecting") == 1, client.describe()  # the initial connect only
    assert not [e for e in events if e["event"] == "error"], client.describe()


async def test_js_client_that_does_not_refresh_its_token_is_closed_after_the_grace(
    js: Spawn,
) -> None:
    ttl, grace = 2, 1
    async with running_server(make_config(expired_close_delay=grace)) as strict:
        client = await js("connect", get_token="1", url=ws_url(strict.port))
        await connected_with_fresh_token(client, "heidi", ttl)
        await client.expect("token_requested")  # and never answered
        connecting = await client.expect("connecting", within=ttl + grace + 3)
        assert (connecting["code"], connecting["reason"]) == (3005, "connection expired")
        await client.stop()


async def test_js_client_resubscribes_and_recovers_after_its_standard_lane_is_shed(
    server: Server, api: Api, js: Spawn
) -> None:
    # The server side of a shed (see test_overload_and_drain.py): frames of the channel
    # held for this client are dropped, then it gets an unsubscribe push 2500.
    channel = "chat:shed"
    client = await js("subscribe", token=token("erin"), channel=channel)
    first = await client.expect("subscribed", channel=channel)
    await publish_many(api, channel, range(1, 3))
    await client.expect("publication", offset=2)
    [conn] = [c for c in server.node.clients.values() if c.user == "erin"]
    conn.pause_writing()  # as when erin's socket buffer is full: her frames are held
    await publish_many(api, channel, range(3, 6))
    conn.shed_standard()  # what the queue does over its bound: 3-5 dropped for erin
    conn.resume_writing()

    subscribing = await client.expect("subscribing", channel=channel, code=2500)
    resubscribed = await client.expect("subscribed", channel=channel)
    await client.expect("publication", offset=5)
    await publish_many(api, channel, range(6, 7))
    await client.expect("publication", offset=6)
    events = await client.stop()

    assert subscribing["reason"] == "insufficient state"
    assert resubscribed["wasRecovering"] is True
    assert resubscribed["recovered"] is True
    assert resubscribed["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]
    assert offsets(events) == list(range(1, 7)), client.describe()


def board(version: int) -> dict[str, Any]:
    """A 2 KiB JSON document of which each version changes one small part."""
    items = [{"id": i, "title": f"card {i}", "done": i < version} for i in range(30)]
    return {"board": "sprint", "version": version, "items": items}


async def test_js_client_rebuilds_delta_publications_to_the_full_documents(
    api: Api, js: Spawn
) -> None:
    channel = "doc:board"
    client = await js("delta", token=token("alice"), channel=channel, delta="fossil", expect="6")
    await client.expect("subscribed", channel=channel)
    for version in range(1, 7):
        await api("publish", channel=channel, data=board(version))
    events = await client.finish()

    assert [e["data"] for e in publications(events)] == [board(v) for v in range(1, 7)]
    [stats] = [e for e in events if e["event"] == "delta_stats"]
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (1, 5)
    assert stats["bytesReceived"] * 3 < stats["bytesDecoded"]


async def test_js_client_reads_history_since_a_position_and_in_reverse(api: Api, js: Spawn) -> None:
    channel = "chat:since"
    await publish_many(api, channel, range(1, 6))
    client = await js("read", token=token("carol"), channel=channel, since="3")
    by_name = {e["event"]: e for e in await client.finish()}

    since = by_name["history_since"]
    assert since["ok"] is True, client.describe()
    assert [p["offset"] for p in since["publications"]] == [4, 5]
    reverse = by_name["history_reverse"]
    assert [p["data"] for p in reverse["publications"]] == [{"n": 5}, {"n": 4}]


async def test_js_client_get_state_flow_with_a_zero_position_gets_what_was_published(
    api: Api, js: Spawn
) -> None:
    # getState returns offset 0 and an empty epoch: the SDK subscribes with recover and
    # the reject-unrecovered flag; an empty epoch means any epoch (Centrifugo v6).
    channel = "chat:state"
    await publish_many(api, channel, range(1, 4))
    client = await js("subscribe", token=token("dora"), channel=channel, get_state="zero")
    await client.expect("get_state")
    subscribed = await client.expect("subscribed", channel=channel)
    for _ in range(3):
        await client.expect("publication", channel=channel)
    events = await client.stop()

    assert subscribed["recovered"] is True, client.describe()
    assert offsets(events) == [1, 2, 3]
    assert not [e for e in events if e["event"] == "sub_error"], client.describe()


async def test_js_clients_see_each_other_join_and_leave(js: Spawn) -> None:
    channel = "chat:joins"
    watcher = await js("subscribe", token=token("erin"), channel=channel)
    await watcher.expect("subscribed", channel=channel)
    visitor = await js("subscribe", token=token("fred"), channel=channel)
    await visitor.expect("subscribed", channel=channel)
    await watcher.expect("join", channel=channel, user="fred")
    await visitor.stop()
    await watcher.expect("leave", channel=channel, user="fred")
    await watcher.stop()


async def test_js_clients_of_one_user_all_get_their_personal_channel(js: Spawn) -> None:
    config = make_config(user_personal_channel=True, user_personal_channel_namespace="chat")
    async with running_server(config) as node:
        url = ws_url(node.port)
        phone = await js("connect", token=token("gina"), url=url)
        laptop = await js("connect", token=token("gina"), url=url)
        for device in (phone, laptop):
            await device.expect("server_subscribed", channel="chat:#gina")

        await node.node.publish("chat:#gina", b'{"text":"for all of gina"}')

        for device in (phone, laptop):
            got = await device.expect("server_publication", channel="chat:#gina")
            assert got["data"] == {"text": "for all of gina"}
            await device.stop()


def _payload(body: dict[str, Any]) -> Any:
    """A hook request's payload: ``data`` (JSON connections) or ``b64data`` (Protobuf ones,
    whose scenarios send JSON documents as bytes)."""
    if "b64data" in body:
        return json.loads(base64.b64decode(body["b64data"]))
    return body.get("data")


async def test_js_rpc_is_answered_and_send_reaches_the_backend(js: Spawn) -> None:
    async with ScriptedBackend() as backend:
        backend.answer("/connect", {"result": {"user": "alice"}})
        backend.handle(
            "/rpc",
            lambda body: web.json_response(
                {"result": {"data": {"method": body["method"], "echo": _payload(body)}}}
            ),
        )
        backend.answer("/send", {"result": {}})
        config = make_config(
            proxies={"app": ProxyConfig(url=backend.url)},
            connect_proxy="app",
            rpc_proxy="app",
            send_proxy="app",
        )
        async with running_server(config) as hooked:
            client = await js(
                "rpc",
                url=ws_url(hooked.port),
                rpc_method="echo",
                rpc_data='{"x": 1}',
                send='{"note": "hi"}',
            )
            events = await client.finish()
            [rpc] = [e for e in events if e["event"] == "rpc"]
            assert rpc == {"event": "rpc", "ok": True, "data": {"method": "echo", "echo": {"x": 1}}}
            await backend.wait_count("/send", 1)
    [sent] = backend.bodies("/send")
    assert (sent["user"], _payload(sent)) == ("alice", {"note": "hi"})
    assert [b["user"] for b in backend.bodies("/rpc")] == ["alice", "alice"]
