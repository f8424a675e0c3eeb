"""The example backend (examples/backend) in a subprocess, against a node with its config:
cookie-session connect, subscribe authorization, chat persisted before broadcast, an RPC,
webhook and push receivers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from centrifuge import ReplyError
from sdk_kit import HttpApi, SdkClients, SubEvents, data_of, next_event, subscribe

from tether.config import load_config
from tether.server import Server
from tether.testing.backend import free_port
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, running_server

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "backend"
ORIGIN = "http://127.0.0.1:5000"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[str]:
    """The example app on a free port; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLE / "app.py"),
            "--port",
            str(port),
            "--db",
            str(tmp_path / "a.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
async def node(example: str) -> AsyncIterator[Server]:
    config = load_config(EXAMPLE / "tether.toml", env={}).config
    proxies = {"app": msgspec.structs.replace(config.proxies["app"], url=f"{example}/tether")}
    config = msgspec.structs.replace(
        config,
        host="127.0.0.1",
        port=0,
        http_port=0,
        token_secret=TEST_SECRET,
        api_key=TEST_API_KEY,
        log_level="warning",
        proxies=proxies,
        webhook=msgspec.structs.replace(config.webhook, url=f"{example}/webhook"),
        push=msgspec.structs.replace(config.push, url=f"{example}/push"),
    )
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(20):  # until the example listens
            while True:
                try:
                    async with http.get(f"{example}/messages") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
    async with running_server(config) as server:
        yield server


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return await response.json()


async def login(example: str, user: str) -> dict[str, str]:
    url = f"{example}/login"
    async with aiohttp.ClientSession() as http, http.post(url, json={"user": user}) as response:
        assert response.status == 200
        session = response.cookies["session"].value
    return {"Cookie": f"session={session}", "Origin": ORIGIN}


async def test_the_example_backend_runs_the_chat(
    node: Server, example: str, sdk: SdkClients
) -> None:
    headers = await login(example, "alice")
    client, events = await sdk.connect(node.port, token="", headers=headers)
    personal = await next_event(events.subscribed)
    assert personal.channel == "#alice"  # the connect result's channels

    room, room_events, _ = await subscribe(client, "room:lobby")
    await room.publish(sdk.payload({"text": "  hello  "}))
    [pub] = await room_events.next_publications(1)
    assert data_of(pub.data) == {
        "id": 1,
        "user": "alice",
        "text": "hello",
    }  # stored, then broadcast
    assert await get(f"{example}/messages?channel=room:lobby") == [
        {"id": 1, "user": "alice", "text": "hello"}
    ]
    with pytest.raises(ReplyError) as refused:
        await room.publish(sdk.payload({"text": "cheap spam"}))
    assert refused.value.code == 1000
    with pytest.raises(ReplyError) as empty:
        await room.publish(sdk.payload({"text": "   "}))
    assert empty.value.code == 400

    staff = SubEvents()
    await client.new_subscription("room:staff-ops", events=staff).subscribe()
    assert (await next_event(staff.unsubscribed)).code == 403

    rooms = await client.rpc("rooms", sdk.payload({}))
    assert data_of(rooms.data) == {"rooms": {"room:lobby": 1}}
    assert data_of((await client.rpc("whoami", sdk.payload({}))).data) == {"user": "alice"}

    async with aiohttp.ClientSession() as http:
        await HttpApi(http, node).call("publish", {"channel": "#bob", "data": {"text": "mail"}})
    async with asyncio.timeout(15):
        while not (pushes := await get(f"{example}/pushes")):  # noqa: ASYNC110  (polls the app)
            await asyncio.sleep(0.1)
        wanted = {"connect", "subscribe", "publication"}
        while wanted - {e["type"] for e in await get(f"{example}/events")}:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert [(p["user"], p["channel"], p["data"]) for p in pushes] == [
        ("bob", "#bob", {"text": "mail"})
    ]


async def test_without_a_session_the_example_refuses_the_connection(
    node: Server, sdk: SdkClients
) -> None:
    client, events = sdk.new(node.port, token="", headers={"Origin": ORIGIN})
    await client.connect()
    disconnected = await next_event(events.disconnected)
    assert (disconnected.code, disconnected.reason) == (401, "log in first")
