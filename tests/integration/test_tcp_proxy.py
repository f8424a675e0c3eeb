"""The fault-injection proxy (:class:`tether.testing.faults.TcpProxy`) does what tests
rely on: forwards bytes unchanged, and fails connections exactly when told to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tether.testing.faults import TcpProxy

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def echo_server(greeting: bytes = b"") -> AsyncIterator[int]:
    """A TCP server that sends ``greeting``, then echoes what it gets; yields its port."""
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(echo(reader, writer))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What is left before the connection ends, by EOF or reset."""
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        return b""


async def test_proxy_forwards_bytes_both_ways() -> None:
    async with (
        echo_server() as port,
        TcpProxy(port) as proxy,
        connection(proxy.port) as (reader, writer),
    ):
        payload = bytes(range(256)) * 1000
        writer.write(payload)
        async with asyncio.timeout(5):
            assert await reader.readexactly(len(payload)) == payload
        assert proxy.connections == 1


async def test_drop_ends_every_current_connection() -> None:
    async with (
        echo_server() as port,
        TcpProxy(port) as proxy,
        connection(proxy.port) as (a, a_writer),
        connection(proxy.port) as (b, b_writer),
    ):
        a_writer.write(b"ping")
        b_writer.write(b"ping")
        async with asyncio.timeout(5):  # both links are up before the drop
            assert await a.readexactly(4) == b"ping"
            assert await b.readexactly(4) == b"ping"

        assert proxy.drop() == 2

        assert await _read_until_closed(a) == b""
        assert await _read_until_closed(b) == b""
        assert proxy.connections == 0


async def test_refused_connections_end_at_once_until_allowed_again() -> None:
    async with echo_server() as port, TcpProxy(port) as proxy:
        proxy.refuse_new = True
        async with connection(proxy.port) as (reader, _):
            assert await _read_until_closed(reader) == b""

        proxy.refuse_new = False
        async with connection(proxy.port) as (reader, writer):
            writer.write(b"back")
            async with asyncio.timeout(5):
                assert await reader.readexactly(4) == b"back"
        assert proxy.accepted == 2


async def test_retarget_sends_new_connections_to_the_new_target() -> None:
    async with (
        echo_server(b"old") as old,
        echo_server(b"new") as new,
        TcpProxy(old) as proxy,
        connection(proxy.port) as (before, _),
    ):
        proxy.retarget(new)
        async with connection(proxy.port) as (after, _), asyncio.timeout(5):
            assert await before.readexactly(3) == b"old"
            assert await after.readexactly(3) == b"new"


async def test_unreachable_target_ends_the_accepted_connection() -> None:
    async with echo_server() as port:
        pass  # closed: nothing listens on ``port`` any more
    async with TcpProxy(port) as proxy, connection(proxy.port) as (reader, _):
        assert await _read_until_closed(reader) == b""
