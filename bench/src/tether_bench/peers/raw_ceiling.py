"""The raw-asyncio ceilings: the least work a Python server can do per delivery here.

A hand-written WebSocket server on ``asyncio.Protocol`` under uvloop, in two modes:

``per-tick`` (the headline ceiling of ``make bench``)
    Coalesces exactly as Tether does: every frame a connection gets during one loop
    iteration is joined into one ``transport.write``, flushed by one ``call_soon`` per
    iteration (Tether's Flusher). A ceiling must do at least the coalescing of the server
    it measures, or that server "beats" it.
``batch`` (the second row)
    Modelled on the reference measurement (shared/bench-reference, ``raw_asyncio.py``
    with ``BATCH=10``): a published batch goes to each subscriber as one
    ``transport.write`` of its concatenated frames, whatever else that connection gets in
    the same iteration.

Frames are built once per publication in both. No protocol beyond the bench's plain
JSON messages: ``{"op":"sub","rooms":[..]}`` (answered ``{"op":"subok"}``) and
``{"op":"pub","room":R,"msgs":[..]}`` (each message relayed unchanged to room R).
No history, no auth, no heartbeats, no queue bounds: it is a yardstick, not a server.

usage: python raw_ceiling.py PORT [per-tick|batch]   (default: batch)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import sys
from typing import Any, cast

import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
rooms: dict[str, set[Conn]] = {}
PER_TICK = False
"""Coalesce per loop iteration (set from the command line)."""
dirty: list[Conn] = []
"""per-tick: connections with frames queued this iteration (flushed by one call_soon)."""


def flush() -> None:
    global dirty
    conns, dirty = dirty, []
    for conn in conns:
        out, conn.out = conn.out, []
        conn.tr.write(out[0] if len(out) == 1 else b"".join(out))


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


class Conn(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = cast(asyncio.Transport, transport)  # create_server: a stream transport
        self.buf = b""
        self.open = False
        self.rooms: list[str] = []
        self.out: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            key = b""
            for line in buf[:end].split(b"\r\n"):
                if line.lower().startswith(b"sec-websocket-key:"):
                    key = line.split(b":", 1)[1].strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.tr.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
            buf = buf[end + 4 :]
        pos, end = 0, len(buf)
        while end - pos >= 6:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + 4 + n:
                break
            mask = buf[pos + head : pos + head + 4]
            payload = unmask(buf[pos + head + 4 : pos + head + 4 + n], mask) if n else b""
            pos += head + 4 + n
            opcode = b0 & 0x0F
            if opcode == 0x8:
                self.tr.close()
                return
            if opcode == 0x1:
                self.on_message(payload)
        self.buf = buf[pos:]

    def on_message(self, payload: bytes) -> None:
        msg: dict[str, Any] = json.loads(payload)
        if msg["op"] == "sub":
            for room in msg["rooms"]:
                rooms.setdefault(room, set()).add(self)
                self.rooms.append(room)
            self.tr.write(frame(b'{"op":"subok"}'))
        elif msg["op"] == "pub":
            members = rooms.get(msg["room"])
            if members:
                data = b"".join(
                    frame(json.dumps(m, separators=(",", ":")).encode()) for m in msg["msgs"]
                )
                if not PER_TICK:
                    for conn in members:
                        conn.tr.write(data)
                    return
                if not dirty:
                    asyncio.get_running_loop().call_soon(flush)
                for conn in members:
                    out = conn.out
                    if not out:
                        dirty.append(conn)
                    out.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for room in self.rooms:
            members = rooms.get(room)
            if members is not None:
                members.discard(self)
                if not members:
                    del rooms[room]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(f"raw ceiling on ws://127.0.0.1:{port}/", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    PER_TICK = sys.argv[2:3] == ["per-tick"]
    uvloop.run(main(int(sys.argv[1])))
