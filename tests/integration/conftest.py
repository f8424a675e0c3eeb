"""Fixtures of the integration tests: real sockets, real servers, real third-party clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import cent
import pytest
from sdk_kit import ENCODINGS, HttpApi, SdkClients, api_url

from tether.server import Server
from tether.testing.servers import TEST_API_KEY
from tether_bench.redisserver import RedisServer


@pytest.fixture(params=ENCODINGS)
async def sdk(request: pytest.FixtureRequest) -> AsyncIterator[SdkClients]:
    """centrifuge-python clients; every test that uses them runs once per encoding."""
    clients = SdkClients(request.param)
    try:
        yield clients
    finally:
        await clients.close()


@pytest.fixture
async def http(server: Server) -> AsyncIterator[HttpApi]:
    async with aiohttp.ClientSession() as session:
        yield HttpApi(session, server)


@pytest.fixture
async def api(server: Server) -> AsyncIterator[cent.AsyncClient]:
    async with cent.AsyncClient(api_url(server), TEST_API_KEY) as client:
        yield client


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test session on a free port (never the shared 6379). Tests
    keep apart by key prefix; a test that kills Redis starts its own RedisServer."""
    with RedisServer() as server:
        yield server
