"""Publishers: put publications into the target, and remember what was accepted.

* :class:`HttpApiPublisher`: Tether's (Centrifugo's) server HTTP API, ``POST /api/publish``
  (one publication) or ``POST /api/batch`` (several publish commands in one request), with
  at most ``concurrency`` requests in flight. Offsets come back in the answers.
* :class:`WebSocketPublisher`: the comparison peers take publications from a WebSocket
  connection of their own protocol (Socket.IO event or plain JSON message); a write never
  waits, so only the scenario's delivery window bounds it.

Both number publications per channel (``accepted``) and keep the last offset of each
channel (``final``), from which losses are counted at the end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp

from tether.bench.drivers import Driver, PlainDriver, SocketIODriver
from tether.bench.wsclient import BenchConnection, Stats, now_us, open_connection, parse_ws_url

PAD = "x" * 40
"""Filler of each publication: a bench delivery is a frame of roughly 100-130 bytes."""


class Publisher:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.inflight = 0
        """Requests sent and not answered yet (HTTP only)."""
        self.accepted: dict[str, int] = {}
        """Channel -> publications the target accepted."""
        self.final: dict[str, int] = {}
        """Channel -> offset of its last accepted publication."""
        self.errors = 0
        self.last_error = ""
        self._seq: dict[str, int] = {}

    def fire(
        self,
        channel: str,
        count: int = 1,
        *,
        sent_at: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Publish ``count`` publications to ``channel`` now, without waiting.
        ``sent_at`` (bench clock, microseconds) defaults to now."""
        raise NotImplementedError

    def _messages(self, channel: str, count: int, sent_at: int | None) -> list[bytes]:
        stamp = now_us() if sent_at is None else sent_at
        first = self._seq.get(channel, 0)
        self._seq[channel] = first + count
        return [self.driver.message(channel, first + i + 1, stamp, PAD) for i in range(count)]

    def _accept(self, channel: str, offset: int) -> None:
        self.accepted[channel] = self.accepted.get(channel, 0) + 1
        if offset > self.final.get(channel, 0):
            self.final[channel] = offset

    @property
    def total_accepted(self) -> int:
        return sum(self.accepted.values())

    async def wait_idle(self, within: float = 30.0) -> None:
        """Until every request in flight is answered."""

    async def close(self) -> None:
        pass


class HttpApiPublisher(Publisher):
    def __init__(self, driver: Driver, api_url: str, api_key: str, concurrency: int) -> None:
        super().__init__(driver)
        self.api_url = api_url.rstrip("/")
        self._headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def fire(
        self,
        channel: str,
        count: int = 1,
        *,
        sent_at: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        messages = self._messages(channel, count, sent_at)
        self.inflight += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._send(channel, messages, on_done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, channel: str, messages: list[bytes], on_done: Callable[[], None] | None
    ) -> None:
        name = json.dumps(channel).encode()
        if len(messages) == 1:
            url = f"{self.api_url}/publish"
            body = b'{"channel":%s,"data":%s}' % (name, messages[0])
        else:
            url = f"{self.api_url}/batch"
            commands = b",".join(
                b'{"publish":{"channel":%s,"data":%s}}' % (name, m) for m in messages
            )
            body = b'{"commands":[%s]}' % commands
        try:
            async with self._session.post(url, data=body, headers=self._headers) as response:
                raw = await response.read()
                status = response.status
            if status != 200:
                self._fail(len(messages), f"HTTP {status}: {raw[:200]!r}")
            else:
                answer = json.loads(raw)
                if len(messages) == 1:
                    self._result(channel, answer)
                else:
                    for reply in answer.get("replies", []):
                        self._result(
                            channel, {"result": reply["publish"]} if "publish" in reply else reply
                        )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._fail(len(messages), f"{type(exc).__name__}: {exc}")
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
            if on_done is not None:
                on_done()

    def _result(self, channel: str, answer: dict[str, object]) -> None:
        result = answer.get("result")
        if isinstance(result, dict):
            self._accept(channel, int(result.get("offset", 0)))
        else:
            self._fail(1, f"API error: {answer.get('error')}")

    def _fail(self, count: int, reason: str) -> None:
        self.errors += count
        self.last_error = reason

    async def wait_idle(self, within: float = 30.0) -> None:
        await asyncio.wait_for(self._idle.wait(), within)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()


class WebSocketPublisher(Publisher):
    """Publishes over one WebSocket connection of the peer's own protocol."""

    def __init__(self, driver: PlainDriver | SocketIODriver, conn: BenchConnection) -> None:
        super().__init__(driver)
        self._frame = driver.publish_frame
        self._conn = conn

    @classmethod
    async def connect(cls, driver: Driver, url: str) -> WebSocketPublisher:
        if not isinstance(driver, PlainDriver | SocketIODriver):
            raise TypeError(f"{driver.name} takes publications over HTTP")
        host, port, _ = parse_ws_url(url)
        stats = Stats()
        conn = await open_connection(
            lambda: BenchConnection(driver, stats, [], checked=True, setup={"host": host}),
            host,
            port,
            None,
        )
        await asyncio.wait_for(conn.ready, 10)
        return cls(driver, conn)

    def fire(
        self,
        channel: str,
        count: int = 1,
        *,
        sent_at: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        if self._conn.lost:
            self._fail(count, "publisher connection lost")
        else:
            messages = self._messages(channel, count, sent_at)
            self._conn.send_raw(self._frame(channel, messages))
            # The peer numbers nothing: what was written is what it must deliver.
            first = self._seq[channel] - count
            for i in range(count):
                self._accept(channel, first + i + 1)
        if on_done is not None:
            on_done()

    def _fail(self, count: int, reason: str) -> None:
        self.errors += count
        self.last_error = reason

    async def close(self) -> None:
        self._conn.close()
