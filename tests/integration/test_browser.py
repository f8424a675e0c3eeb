"""The chat page and the admin page in a real headless Chromium (browser_kit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from browser_kit import chromium, screenshot_path
from ops_kit import redis_nodes
from playwright.async_api import Browser, Locator, Page, expect

from tether.auth import mint_connection_token
from tether.server import Server
from tether.testing.faults import TcpProxy
from tether.testing.servers import TEST_API_KEY, TEST_SECRET, make_config, running_server
from tether.testing.wsclient import WSClient
from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

LIVE = 15_000  # ms: how long a page may take to show something live


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def chat_server() -> AsyncIterator[Server]:
    """The page's namespace (chat:lobby) open to anonymous browsers, as `make run` has it."""
    async with running_server(make_config(allow_anonymous=True)) as server:
        yield server


async def open_chat(browser: Browser, server: Server, ws_port: int, name: str) -> Page:
    """A tab in its own browser context (its own phone), connected and subscribed."""
    context = await browser.new_context(viewport={"width": 900, "height": 700})
    page = await context.new_page()
    url = f"http://127.0.0.1:{server.http_port}/?ws=ws://127.0.0.1:{ws_port}/connection/websocket"
    await page.goto(url)
    await page.fill("#name", name)
    await expect(page.locator("#send-button")).to_be_enabled(timeout=LIVE)
    return page


async def say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send-button")
    await expect(page.locator("#text")).to_have_value("", timeout=LIVE)  # the publish was acked


def message(page: Page, text: str) -> Locator:
    return page.locator("#log li.msg", has_text=text)


async def test_two_chat_tabs_exchange_messages_and_one_recovers_after_its_network_is_cut(
    browser: Browser, chat_server: Server
) -> None:
    async with TcpProxy(chat_server.port) as link:
        alice = await open_chat(browser, chat_server, chat_server.port, "alice")
        bob = await open_chat(browser, chat_server, link.port, "bob")

        await say(alice, "hello from alice")
        await expect(message(bob, "hello from alice")).to_have_count(1, timeout=LIVE)
        await say(bob, "hi from bob")
        await expect(message(alice, "hi from bob")).to_have_count(1, timeout=LIVE)

        # Bob's network goes away: his connection is reset and reconnects fail.
        link.refuse_new = True
        assert link.drop() == 1
        await expect(bob.locator("#conn")).to_have_attribute(
            "data-state", "reconnecting", timeout=LIVE
        )
        await say(alice, "sent while bob was away 1")
        await say(alice, "sent while bob was away 2")
        await bob.screenshot(path=screenshot_path("chat-bob-offline"))

        link.refuse_new = False
        await expect(bob.locator("#conn")).to_have_attribute(
            "data-state", "connected", timeout=30_000
        )
        await expect(bob.locator("#log li", has_text="recovered 2 missed messages")).to_have_count(
            1, timeout=LIVE
        )
        for text in ("sent while bob was away 1", "sent while bob was away 2"):
            await expect(message(bob, text)).to_have_count(1)
        # Each message once, in order, on both tabs.
        expected = [
            "hello from alice",
            "hi from bob",
            "sent while bob was away 1",
            "sent while bob was away 2",
        ]
        for page in (alice, bob):
            texts = await page.locator("#log li.msg").all_inner_texts()
            assert [t for t in expected if any(t in line for line in texts)] == expected
            assert len(texts) == len(expected), texts
        await bob.screenshot(path=screenshot_path("chat-bob-recovered"))
        await alice.screenshot(path=screenshot_path("chat-alice"))


async def test_admin_page_shows_live_numbers_changing_while_a_client_publishes(
    browser: Browser, server: Server
) -> None:
    token = mint_connection_token(TEST_SECRET, "publisher")
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await page.goto(f"http://127.0.0.1:{server.http_port}/admin")
    publications = page.locator('[data-metric="tether_publications_total"] .value')
    connections = page.locator('[data-metric="tether_connections"] .value')
    await expect(publications).to_have_text("0", timeout=LIVE)
    await expect(connections).to_have_text("0")

    async with await WSClient.open(server.port) as ws:
        await ws.call("connect", {"token": token})
        await ws.call("subscribe", {"channel": "chat:admin"})
        await ws.call("publish", {"channel": "chat:admin", "data": {"n": 0}})
        await expect(connections).to_have_text("1", timeout=LIVE)
        await expect(publications).to_have_text("1", timeout=LIVE)
        for n in range(1, 6):
            await ws.call("publish", {"channel": "chat:admin", "data": {"n": n}})
            await asyncio.sleep(0.2)
        await expect(publications).to_have_text("6", timeout=LIVE)
        await expect(
            page.locator('[data-metric="tether_deliveries_total"] .value')
        ).not_to_have_text("0")

        # With the API key, the channel list shows the client's channel.
        await page.fill("#key", TEST_API_KEY)
        await page.click("#keyform button")
        await expect(page.locator("#channels", has_text="chat:admin")).to_have_count(
            1, timeout=LIVE
        )
        await page.screenshot(path=screenshot_path("admin"), full_page=True)


async def test_admin_page_lists_every_node_of_a_two_node_cluster(
    browser: Browser, redis_server: RedisServer
) -> None:
    async with redis_nodes(redis_server, "node-a", "node-b") as (a, b):
        token = mint_connection_token(TEST_SECRET, "viewer")
        async with await WSClient.open(b.port) as ws:
            await ws.call("connect", {"token": token})
            await ws.call("subscribe", {"channel": "chat:cluster"})
            page = await browser.new_page(viewport={"width": 1200, "height": 1000})
            await page.goto(f"http://127.0.0.1:{a.http_port}/admin")
            await page.fill("#key", TEST_API_KEY)
            await page.click("#keyform button")
            row_a = page.locator('#nodes tr[data-node="node-a"]')
            row_b = page.locator('#nodes tr[data-node="node-b"]')
            await expect(row_a).to_contain_text("(this page)", timeout=LIVE)
            # node-b's client, as node-b announced it (every 3 s)
            await expect(row_b.locator("td").nth(3)).to_have_text("1", timeout=LIVE)
            await expect(row_a.locator("td").nth(3)).to_have_text("0")
            await expect(page.locator("#nodes tr")).to_have_count(2)
            await page.screenshot(path=screenshot_path("admin-cluster"), full_page=True)
