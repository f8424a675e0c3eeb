"""The lean WebSocket client of the bench tool: many connections, little CPU per frame.

Each :class:`BenchConnection` does the RFC 6455 upgrade by hand, lets its protocol driver
(:mod:`tether_bench.drivers`) run the setup exchange (connect, subscribe), then switches to
one of two receive paths:

* **counting** (every connection): one ``bytes.count(marker)`` per read, where the marker
  occurs exactly once per delivered publication, plus a few bytes of the previous read to
  catch a marker split between two reads. Server heartbeats are found the same way and
  answered, on reads that hold the driver's ``ping_probe`` byte only. No per-frame Python
  work, so a read of 50 frames costs about as much as one; the count itself is the cost
  per delivery, so markers are the cheapest needles measured.
* **checking** (a declared sample): frames are cut properly, and one regular-expression
  scan per read extracts ``(channel, offset, sent-at)`` of every publication, to count
  losses, duplicates and order violations per channel and to record latency.

Frames sent by the client are masked with an all-zero key (RFC 6455 5.3 allows any key; a
zero key leaves the payload as is, so frames are built once). The frame format itself is
Tether's one WebSocket codec, :mod:`tether.transports.websocket.wire` (client frames,
the upgrade request, the frame header parser).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from tether.transports.websocket import wire

if TYPE_CHECKING:
    from tether_bench.drivers import Driver

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
EPHEMERAL_PORTS_SAFE = 25_000
"""Past this many connections to one address, spread source addresses over 127.0.0.x."""

_now_us: Callable[[], int] = lambda: time.perf_counter_ns() // 1000  # noqa: E731


def now_us() -> int:
    """The bench's clock (microseconds, monotonic, this process only)."""
    return _now_us()


ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(payload: bytes, opcode: int = wire.OP_TEXT) -> bytes:
    """One final client frame, masked with the zero key (the same bytes every time)."""
    return wire.client_frame(opcode, payload, mask=ZERO_MASK)


_CLOSE_FRAME = client_frame(wire.close_payload(wire.CLOSE_NORMAL), wire.OP_CLOSE)


class Stats:
    """Counters shared by every connection of a run, and the publisher's wake-up."""

    __slots__ = (
        "closed",
        "deliveries",
        "latencies",
        "on_progress",
        "record_latency",
        "wake_at",
        "woke_at",
    )

    def __init__(self) -> None:
        self.deliveries = 0
        """Publications received, all connections (counting and checking)."""
        self.closed = 0
        self.latencies: list[int] = []
        """Publish-to-delivery latency in microseconds, checked connections only."""
        self.record_latency = False
        self.wake_at = -1
        """When ``deliveries`` reaches this, call :attr:`on_progress` (once)."""
        self.woke_at = 0.0
        self.on_progress: Callable[[], None] | None = None

    def notify_at(self, threshold: int, callback: Callable[[], None]) -> None:
        if self.deliveries >= threshold:
            self.woke_at = time.perf_counter()
            callback()
            return
        self.wake_at = threshold
        self.on_progress = callback

    def _reached(self) -> None:
        self.woke_at = time.perf_counter()
        self.wake_at = -1
        callback, self.on_progress = self.on_progress, None
        if callback is not None:
            callback()


class ChannelCheck:
    """Offset bookkeeping of one channel on one checked connection."""

    __slots__ = ("last", "missing")

    def __init__(self, last: int) -> None:
        self.last = last
        self.missing: set[int] = set()


class BenchConnection(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_driver",
        "_head",
        "_tail",
        "channels",
        "checked",
        "checks",
        "count",
        "duplicates",
        "error",
        "extra",
        "live",
        "lost",
        "order_violations",
        "ready",
        "retry_after",
        "setup",
        "stats",
        "transport",
        "upgraded",
    )

    def __init__(
        self,
        driver: Driver,
        stats: Stats,
        channels: Sequence[str],
        *,
        checked: bool,
        setup: dict[str, Any] | None = None,
    ) -> None:
        self._driver = driver
        self.stats = stats
        self.channels = list(channels)
        self.checked = checked
        self.setup: dict[str, Any] = setup or {}
        """Driver-owned state of the setup exchange (token, pending reply ids, ...)."""
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._buf = b""
        self._tail = b""
        self.upgraded = False
        self.live = False
        self.count = 0
        self.extra = 0
        """Occurrences of the driver's ``extra_marker`` (a second event kind, counted only)."""
        self.checks: dict[bytes, ChannelCheck] = {}
        self.duplicates = 0
        self.order_violations = 0
        self.error: str | None = None
        self.retry_after: float | None = None
        """Set when the server refused the upgrade with 503 (admission control)."""
        self.lost = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A connection that fails after its opener gave up on it must not log
        # "exception was never retrieved": the opener reports failures itself.
        self.ready.add_done_callback(_consume)

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = tr = cast(asyncio.Transport, transport)
        host = self.setup.get("host", "localhost")
        tr.write(wire.upgrade_request(self._driver.path, host=host))

    def data_received(self, data: bytes) -> None:
        if self.live and not self.checked:
            self._count(data)
        elif self.live:
            self._check(data)
        elif self.upgraded:
            self._setup_data(data)
        else:
            self._handshake(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.live = False
        self.stats.closed += 1
        if not self.ready.done():
            self.ready.set_exception(
                ConnectionError(self.error or f"connection closed during setup: {exc}")
            )

    # -- sending ----------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload))

    def send_raw(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def close(self) -> None:
        """Send a close frame (1000) and close the socket."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_CLOSE_FRAME)
            transport.close()

    def fail(self, reason: str) -> None:
        self.error = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        self.close()

    # -- the counting path (hot) ------------------------------------------------------

    def _count(self, data: bytes) -> None:
        driver = self._driver
        marker = driver.marker
        n = data.count(marker)
        # A marker or a ping split between two reads: look at the seam once.
        tail = self._tail
        k = driver.seam
        head = data[:k]
        seam = tail + head
        n += seam.count(marker) - tail.count(marker) - head.count(marker)
        self._tail = data[-k:]
        ping, pong = driver.ping_frame, driver.pong_frame
        probe = driver.ping_probe
        if (
            ping is not None
            and pong is not None
            and (probe is None or probe in data or probe in tail)
        ):
            pings = data.count(ping) + seam.count(ping) - tail.count(ping) - head.count(ping)
            if pings:
                self.send_raw(pong * pings)
        extra = driver.extra_marker
        if extra is not None:
            self.extra += (
                data.count(extra) + seam.count(extra) - tail.count(extra) - head.count(extra)
            )
        if n:
            self.count += n
            stats = self.stats
            stats.deliveries += n
            if stats.wake_at >= 0 and stats.deliveries >= stats.wake_at:
                stats._reached()

    # -- the checking path ------------------------------------------------------------

    def _frames(self, data: bytes) -> tuple[bytes, int, list[tuple[int, bytes]]]:
        """Cut complete frames; returns (buffer, end of complete frames, control frames).
        Control frames: (opcode, payload) of pings, closes and driver heartbeats."""
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        control: list[tuple[int, bytes]] = []
        heartbeat = self._driver.ping_payload
        while (header := wire.frame_head(buf, pos)) is not None:
            b0, _, head, length = header
            stop = pos + head + length
            if stop > end:
                break
            opcode = b0 & 0x0F
            if opcode >= 0x8 or (
                heartbeat is not None
                and length == len(heartbeat)
                and buf[pos + head : stop] == heartbeat
            ):
                control.append((opcode, buf[pos + head : stop]))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return buf, pos, control

    def _on_control(self, control: list[tuple[int, bytes]]) -> None:
        driver = self._driver
        for opcode, payload in control:
            if opcode == wire.OP_PING:
                self.send_raw(client_frame(payload, wire.OP_PONG))
            elif opcode == wire.OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.error = f"server closed: {code} {payload[2:].decode(errors='replace')}"
                self.close()
            elif opcode < 0x8 and driver.pong_frame is not None:
                self.send_raw(driver.pong_frame)

    def _check(self, data: bytes) -> None:
        received_at = _now_us()
        buf, end, control = self._frames(data)
        if control:
            self._on_control(control)
        if not end:
            return
        driver = self._driver
        if driver.extra_marker is not None:
            self.extra += buf.count(driver.extra_marker, 0, end)
        ci, oi, ti = driver.groups
        records = driver.pattern.findall(buf, 0, end)
        if not records:
            return
        stats = self.stats
        latencies = stats.latencies if stats.record_latency else None
        checks = self.checks
        for record in records:
            channel = record[ci]
            offset = driver.offset_of(record[oi])
            check = checks.get(channel)
            if check is None:
                check = checks[channel] = ChannelCheck(0)
            last = check.last
            if offset == last + 1:
                check.last = offset
            elif offset > last:
                check.missing.update(range(last + 1, offset))
                check.last = offset
            elif offset in check.missing:
                check.missing.discard(offset)
                self.order_violations += 1
            else:
                self.duplicates += 1
            if latencies is not None:
                latencies.append(received_at - int(record[ti]))
        n = len(records)
        self.count += n
        stats.deliveries += n
        if stats.wake_at >= 0 and stats.deliveries >= stats.wake_at:
            stats._reached()

    def record(self, channel: bytes, offset: int) -> None:
        """One publication received outside a live frame (a recovery reply): checked like
        a live one (no latency), counted as a delivery."""
        check = self.checks.get(channel)
        if check is None:
            check = self.checks[channel] = ChannelCheck(0)
        if offset == check.last + 1:
            check.last = offset
        elif offset > check.last:
            check.missing.update(range(check.last + 1, offset))
            check.last = offset
        elif offset in check.missing:
            check.missing.discard(offset)
            self.order_violations += 1
        else:
            self.duplicates += 1
        self.count += 1
        self.stats.deliveries += 1

    def expect_from(self, channel: str, offset: int) -> None:
        """The channel's stream is at ``offset`` when this connection starts receiving."""
        self.checks[channel.encode()] = ChannelCheck(offset)

    def missing_until(self, final: dict[str, int]) -> int:
        """Publications not received on checked channels, given each channel's last
        published offset (``final``)."""
        lost = 0
        for channel, check in self.checks.items():
            top = final.get(channel.decode(), check.last)
            lost += len(check.missing) + max(0, top - check.last)
        return lost

    # -- upgrade and setup ------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        buf = self._head + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._head = buf
            return
        self._head = b""
        status = buf[: buf.find(b"\r\n")]
        if b" 101 " not in status + b" ":
            for line in buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"retry-after" and value.strip().isdigit():
                    self.retry_after = float(value.strip())
            if status.split(b" ")[1:2] == [b"503"] and self.retry_after is None:
                self.retry_after = 1.0
            self.fail(f"upgrade refused: {status.decode(errors='replace')}")
            return
        self.upgraded = True
        self._driver.on_open(self)
        rest = buf[end + 4 :]
        if rest:
            self._setup_data(rest)

    def _setup_data(self, data: bytes) -> None:
        buf, end, control = self._frames(data)
        driver = self._driver
        pos = 0
        while pos < end:
            header = wire.frame_head(buf, pos)
            assert header is not None  # _frames cut complete frames up to end
            b0, _, head, length = header
            payload = buf[pos + head : pos + head + length]
            frame_end = pos + head + length
            opcode = b0 & 0x0F
            if opcode in (wire.OP_TEXT, wire.OP_BINARY):
                driver.on_setup_message(self, payload)
                if self.live:
                    # Anything after the last setup message goes the live way.
                    rest = buf[frame_end:end] + self._buf
                    self._buf = b""
                    if control:
                        self._on_control(control)
                    if rest:
                        self.data_received(rest)
                    return
            pos = frame_end
        if control:
            self._on_control(control)

    def go_live(self) -> None:
        """Setup done: from now on, count (and check if sampled)."""
        self.live = True
        if not self.ready.done():
            self.ready.set_result(None)


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def parse_ws_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path?query`` -> (host, port, path with query)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "http"):
        raise ValueError(f"only ws:// URLs are supported (got {url!r})")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, port, path


def source_address(index: int, spread: int) -> str | None:
    """Source address of connection ``index`` when spreading over ``spread`` loopback
    addresses (127.0.0.2, 127.0.0.3, ...); None when not spreading."""
    if spread <= 1:
        return None
    return f"127.0.0.{2 + index % spread}"


async def open_connection(
    factory: Callable[[], BenchConnection], host: str, port: int, local: str | None
) -> BenchConnection:
    loop = asyncio.get_running_loop()
    if local is None:
        _, protocol = await loop.create_connection(factory, host, port)
        return protocol
    # Bind the source address without a port (IP_BIND_ADDRESS_NO_PORT): the kernel then
    # picks the port at connect time per 4-tuple, so every 127.0.0.x has its own ~28k.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setblocking(False)
        sock.bind((local, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    _, protocol = await loop.create_connection(factory, sock=sock)
    return protocol


async def open_many(
    factories: Sequence[Callable[[], BenchConnection]],
    host: str,
    port: int,
    *,
    concurrency: int = 256,
    spread: int = 0,
    setup_timeout: float = 30.0,
    retries: int = 30,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[BenchConnection], list[str], int]:
    """Open and set up every connection, at most ``concurrency`` at a time.

    A connection refused with 503 (the server's admission control) is retried after the
    server's ``Retry-After`` with jitter, as a real client would, up to ``retries`` times
    (SDKs never give up; 10 left 5 of 10,000 clients out of a setup admitted at 1,000/s).
    Returns the connections that are ready, the errors of those that failed, and how many
    refusals were retried."""
    ready: list[BenchConnection] = []
    errors: list[str] = []
    refused = 0
    semaphore = asyncio.Semaphore(concurrency)

    async def attempt(index: int, factory: Callable[[], BenchConnection]) -> float | None:
        """One try: None when done (ready or failed for good), else seconds to wait."""
        async with semaphore:
            try:
                conn = await open_connection(factory, host, port, source_address(index, spread))
            except OSError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return None
            try:
                await asyncio.wait_for(asyncio.shield(conn.ready), setup_timeout)
            except (ConnectionError, TimeoutError) as exc:
                conn.close()
                if conn.retry_after is not None:
                    return conn.retry_after
                errors.append(f"{type(exc).__name__}: {exc}")
                return None
            ready.append(conn)
            if on_progress is not None:
                on_progress(len(ready))
            return None

    async def one(index: int, factory: Callable[[], BenchConnection]) -> None:
        nonlocal refused
        for _ in range(retries + 1):
            wait = await attempt(index, factory)
            if wait is None:
                return
            refused += 1
            await asyncio.sleep(wait * random.uniform(0.5, 1.5))
        errors.append(f"ConnectionError: still refused (503) after {retries} retries")

    await asyncio.gather(*(one(i, f) for i, f in enumerate(factories)))
    return ready, errors, refused
