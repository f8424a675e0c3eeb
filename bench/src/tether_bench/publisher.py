"""Publishers: put publications into the target, and remember what was accepted.

* :class:`HttpApiPublisher`: Tether's (Centrifugo's) server HTTP API, ``POST /api/publish``
  (one publication) or ``POST /api/batch`` (several publish commands in one request), with
  at most ``concurrency`` requests in flight. Offsets come back in the answers.
* :class:`LeanHttpPublisher`: the same API over a hand-written HTTP/1.1 client, for
  bursts of tens of thousands of requests per second (the resilience scenarios); counts
  publishes shed with 429 apart from errors.
* :class:`WebSocketPublisher`: the comparison peers take publications from a WebSocket
  connection of their own protocol (Socket.IO event or plain JSON message); a write never
  waits, so only the scenario's delivery window bounds it.

Both number publications per channel (``accepted``) and keep the last offset of each
channel (``final``), from which losses are counted at the end.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import aiohttp

from tether_bench.drivers import Driver, PlainDriver, SocketIODriver
from tether_bench.wsclient import BenchConnection, Stats, now_us, open_connection, parse_ws_url

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
        self.pad = PAD
        """Filler of each publication (the resilience scenarios make it larger)."""
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
        pad = self.pad
        return [self.driver.message(channel, first + i + 1, stamp, pad) for i in range(count)]

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


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of :class:`LeanHttpPublisher`: one request at
    a time; the answer is cut by its ``Content-Length``."""

    def __init__(self, owner: LeanHttpPublisher) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: Callable[[int, bytes, bytes], None] | None = None
        self.written_at = 0
        """When the pending request was written (bench clock, us)."""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            at = head.lower().find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4 : end + 4 + length]
            buf = buf[end + 4 + length :]
            status = int(head[9:12])
            callback, self.pending = self.pending, None
            if callback is not None:
                self.owner.written_at = self.written_at
                callback(status, head, body)
            self.owner._idle_connection(self)
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        callback, self.pending = self.pending, None
        if callback is not None:
            callback(0, b"", f"connection lost: {exc}".encode())
        self.owner._lost_connection(self)


class LeanHttpPublisher(Publisher):
    """Tether's server API over ``connections`` keep-alive sockets of a hand-written
    HTTP/1.1 client: far less client CPU per request than aiohttp, so that one bench
    process can offer a burst of tens of thousands of requests per second. Requests that
    find every socket busy wait in a client-side queue (``backlog_peak`` says how deep).

    Publishes answered 429 (lane saturated) are counted in ``shed``, not in ``errors``;
    ``ack_latencies`` holds each accepted publish's write-to-answer time (us)."""

    def __init__(self, driver: Driver, api_url: str, api_key: str, connections: int) -> None:
        super().__init__(driver)
        parts = urlsplit(api_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base = parts.path.rstrip("/")
        self.api_key = api_key
        self.size = connections
        self.shed = 0
        self.ack_latencies: list[int] = []
        """Accepted publishes: from the request's write to its answer (us)."""
        self.client_waits: list[int] = []
        """Accepted publishes: waiting for a free socket before the write (us)."""
        self.record_acks = False
        self.written_at = 0
        """Write time of the request whose answer is being handled."""
        self.backlog_peak = 0
        self.extra_fields = b""
        """Added to every publish body (``b',"coalesce_key":"u1"'``...)."""
        self._idle: list[_HttpConnection] = []
        self._all: list[_HttpConnection] = []
        self._waiting: deque[tuple[bytes, Callable[[int, bytes, bytes], None]]] = deque()
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, conn = await loop.create_connection(
                lambda: _HttpConnection(self), self.host, self.port
            )
            self._all.append(conn)
            self._idle.append(conn)

    def request(
        self, method: str, body: bytes, on_answer: Callable[[int, bytes, bytes], None]
    ) -> None:
        """POST ``body`` to ``/api/<method>``; ``on_answer(status, head, body)`` (status 0:
        the connection broke)."""
        head = (
            f"POST {self.base}/{method} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"X-API-Key: {self.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.inflight += 1
        self._idle_event.clear()
        self._send(head + body, on_answer)

    def _send(self, raw: bytes, on_answer: Callable[[int, bytes, bytes], None]) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.lost or conn.transport is None:
                continue
            conn.pending = on_answer
            conn.written_at = now_us()
            conn.transport.write(raw)
            return
        self._waiting.append((raw, on_answer))
        self.backlog_peak = max(self.backlog_peak, len(self._waiting))

    def _idle_connection(self, conn: _HttpConnection) -> None:
        if self._waiting and conn.transport is not None:
            raw, answer = self._waiting.popleft()
            conn.pending = answer
            conn.written_at = now_us()
            conn.transport.write(raw)
        else:
            self._idle.append(conn)

    def _lost_connection(self, conn: _HttpConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def _answered(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle_event.set()

    def fire(
        self,
        channel: str,
        count: int = 1,
        *,
        sent_at: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        name = json.dumps(channel).encode()
        for message in self._messages(channel, count, sent_at):
            body = b'{"channel":%s,"data":%s%s}' % (name, message, self.extra_fields)
            self._publish(channel, body, on_done)

    def _publish(self, channel: str, body: bytes, on_done: Callable[[], None] | None) -> None:
        started = now_us()

        def answered(status: int, head: bytes, raw: bytes) -> None:
            self._answered()
            if status == 200:
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = {}
                result = answer.get("result")
                if isinstance(result, dict):
                    self._accept(channel, int(result.get("offset", 0)))
                    if self.record_acks:
                        self.ack_latencies.append(now_us() - self.written_at)
                        self.client_waits.append(self.written_at - started)
                else:
                    self.errors += 1
                    self.last_error = f"API error: {answer.get('error')}"
            elif status == 429:
                self.shed += 1
            else:
                self.errors += 1
                self.last_error = f"HTTP {status}: {raw[:200]!r}"
            if on_done is not None:
                on_done()

        self.request("publish", body, answered)

    async def wait_idle(self, within: float = 30.0) -> None:
        await asyncio.wait_for(self._idle_event.wait(), within)

    async def close(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
