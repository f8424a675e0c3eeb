"""Protocol drivers: how a bench connection subscribes, and what a delivery looks like.

A driver knows, for one protocol: the upgrade path; the setup exchange after the upgrade
(ending in :meth:`BenchConnection.go_live`); the *marker*, a byte string found exactly once
in every delivered publication (the counting path counts it); the server heartbeat and its
answer; and a regular expression that extracts ``(channel, offset, sent_at)`` of every
publication (the checking path).

* :class:`TetherDriver`: the Centrifugo client protocol v2, JSON (Tether, Centrifugo).
  Offsets are the server's stream offsets; the subscribe reply says where each stream is.
* :class:`TetherProtobufDriver`: the same protocol in Protobuf (``?format=protobuf``,
  binary frames, what the native mobile SDKs speak); :class:`MixedDriver` alternates JSON
  and Protobuf connections in one run.
* :class:`SocketIODriver`: Socket.IO v5 over Engine.IO v4, WebSocket transport only (the
  python-socketio and Node.js peers): ``0{..}`` open, ``40`` connect, ``421["join",[..]]``
  with an ack, ``42["msg",{..}]`` deliveries, ping ``2`` answered with ``3``.
* :class:`PlainDriver`: the minimal JSON protocol of the raw-asyncio ceiling and the
  websockets peer: ``{"op":"sub","rooms":[..]}`` answered by ``{"op":"subok"}``.

The peers assign no offsets, so for them the publisher numbers publications per channel
(``"o"``) and the peer relays the message unchanged: losses, duplicates and reordering are
detected the same way.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from tether.protocol import protobuf
from tether.transports.websocket import wire
from tether_bench.wsclient import BenchConnection, client_frame


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Driver:
    name: ClassVar[str]
    default_path: ClassVar[str]
    marker: bytes
    ping_frame: bytes | None = None
    """The whole server heartbeat frame, as the counting path finds it (None: none)."""
    ping_probe: bytes | None = None
    """One byte every heartbeat frame holds and deliveries rarely do: a read without it
    holds no heartbeat, so the counting path skips the heartbeat count (one ``memchr``
    instead of a substring search). None: always count."""
    ping_payload: bytes | None = None
    pong_frame: bytes | None = None
    pattern: re.Pattern[bytes]
    groups: tuple[int, int, int]
    """Indexes of channel, offset and sent-at (microseconds) in a ``findall`` tuple."""
    server_offsets: ClassVar[bool] = False
    """True if the server assigns offsets (Tether); else the publisher numbers them."""
    extra_marker: bytes | None = None
    """A second event kind to count apart (``BenchConnection.extra``), never checked."""

    def __init__(self, path: str) -> None:
        self.path = path or self.default_path
        self._seam()

    def _seam(self) -> None:
        markers = (self.marker, self.ping_frame or b"", self.extra_marker or b"")
        self.seam = max(len(m) for m in markers) - 1

    def set_markers(self, marker: bytes, extra: bytes | None = None) -> None:
        """Count deliveries by ``marker`` (once per counted publication) and another kind
        of event by ``extra``; the checking path is unchanged."""
        self.marker = marker
        self.extra_marker = extra
        self._seam()

    def channel(self, name: str) -> str:
        return name

    def message(self, channel: str, seq: int, sent_at: int, pad: str) -> bytes:
        """The JSON published for publication ``seq`` of ``channel``."""
        return b'{"ch":"%s","o":%d,"t":%d,"p":"%s"}' % (
            channel.encode(),
            seq,
            sent_at,
            pad.encode(),
        )

    def on_open(self, conn: BenchConnection) -> None:
        """The upgrade is done: start the setup exchange."""

    def for_connection(self, index: int) -> Driver:
        """The driver of connection ``index`` (a mixed run alternates two)."""
        return self

    def offset_of(self, value: bytes) -> int:
        """The offset a ``pattern`` match captured."""
        return int(value)

    def on_setup_message(self, conn: BenchConnection, payload: bytes) -> None:
        """One message before the connection is live."""


_PEER_PATTERN = re.compile(rb'"ch":\s*"([^"]*)",\s*"o":\s*(\d+),\s*"t":\s*(\d+)')


class TetherDriver(Driver):
    name = "tether"
    default_path = "/connection/websocket"
    # The constant part of every bench publication push (its data starts with "t"). The
    # markers of every driver are the cheapest such needles ``bytes.count`` was measured
    # with (100-frame reads): the count is the client's main cost per delivery.
    marker = b'b":{"data":{"t":'
    ping_frame = b"\x81\x02{}"
    ping_probe = b"\x02"
    """The length byte of the heartbeat frame: text never holds it, frame headers only
    when a length byte is 2."""
    ping_payload = b"{}"
    pong_frame = client_frame(b"{}")
    # The pub push is encoded as {"push":{"channel":C,"pub":{"data":D,"offset":N}}}; the
    # bench's data D starts with "t" and holds no "offset" key.
    pattern = re.compile(rb'"channel":"([^"]*)","pub":\{"data":\{"t":(\d+),.*?"offset":(\d+)')
    groups = (0, 2, 1)
    server_offsets = True

    def __init__(self, path: str, namespace: str = "bench") -> None:
        super().__init__(path)
        self.namespace = namespace

    def channel(self, name: str) -> str:
        return f"{self.namespace}:{name}" if self.namespace else name

    def message(self, channel: str, seq: int, sent_at: int, pad: str) -> bytes:
        return b'{"t":%d,"p":"%s"}' % (sent_at, pad.encode())

    def on_open(self, conn: BenchConnection) -> None:
        commands = [_compact({"id": 1, "connect": {"token": conn.setup.get("token", "")}})]
        recover: dict[str, tuple[int, str]] = conn.setup.get("recover") or {}
        for i, channel in enumerate(conn.channels):
            subscribe: dict[str, object] = {"channel": channel}
            if channel in recover:
                offset, epoch = recover[channel]
                subscribe.update(recover=True, offset=offset, epoch=epoch)
            commands.append(_compact({"id": i + 2, "subscribe": subscribe}))
        conn.setup["pending"] = len(commands)
        conn.setup["offsets"] = {}
        conn.setup["epochs"] = {}
        conn.setup["recovered"] = {}
        conn.send(b"\n".join(commands))

    def on_setup_message(self, conn: BenchConnection, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            if not line.strip() or line.strip() == b"{}":
                continue
            reply = json.loads(line)
            cid = reply.get("id", 0)
            if not cid:
                continue  # a push before the setup ends (join, ...): not a publication
            if "error" in reply:
                error = reply["error"]
                conn.fail(f"command {cid} refused: {error.get('code')} {error.get('message')}")
                return
            if cid >= 2:
                channel = conn.channels[cid - 2]
                result = reply.get("subscribe", {})
                offset = int(result.get("offset", 0))
                conn.setup["offsets"][channel] = offset
                conn.setup["epochs"][channel] = result.get("epoch", "")
                if result.get("was_recovering"):
                    # Resubscribed with a position: the missed publications come in the
                    # reply, and the connection's checks go on from where it was.
                    conn.setup["recovered"][channel] = bool(result.get("recovered"))
                    name = channel.encode()
                    for pub in result.get("publications", ()):
                        conn.record(name, int(pub.get("offset", 0)))
                elif conn.checked:
                    conn.expect_from(channel, offset)
            conn.setup["pending"] -= 1
            if conn.setup["pending"] == 0:
                conn.go_live()
                return


def _varint(data: bytes) -> int:
    value = 0
    for shift, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * shift)
    return value


class TetherProtobufDriver(TetherDriver):
    """The Protobuf encoding: varint-delimited ``Command``s and ``Reply``s in binary frames.
    The published JSON travels as the ``data`` bytes, so ``{"t":`` marks one publication."""

    name = "tether-protobuf"
    default_path = "/connection/websocket?format=protobuf"
    marker = b'{"t":'
    ping_frame = b"\x82\x01\x00"
    ping_probe = b"\x00"  # the empty Reply's length (varints end in a nonzero byte)
    ping_payload = b"\x00"
    pong_frame = client_frame(b"\x00", wire.OP_BINARY)
    # Reply{push(4){channel(2) C, pub(4){data(4) D, offset(6) varint}}}; channels are ASCII.
    pattern = re.compile(
        rb"\x12[\x01-\x7f]([\x20-\x7e]+?)\x22[\x80-\xff]*[\x00-\x7f]"
        rb'\x22[\x80-\xff]*[\x00-\x7f]\{"t":(\d+),"p":"[^"]*"\}\x30([\x80-\xff]*[\x00-\x7f])'
    )
    groups = (0, 2, 1)

    def __init__(self, path: str, namespace: str = "bench") -> None:
        super().__init__(path, namespace)
        if "format=" not in self.path:  # the URL's path: ask for Protobuf in its query
            self.path += ("&" if "?" in self.path else "?") + "format=protobuf"

    def offset_of(self, value: bytes) -> int:
        return _varint(value)

    def on_open(self, conn: BenchConnection) -> None:
        schema = protobuf.schema
        commands = [
            schema.Command(id=1, connect=schema.ConnectRequest(token=conn.setup.get("token", "")))
        ]
        recover: dict[str, tuple[int, str]] = conn.setup.get("recover") or {}
        for i, channel in enumerate(conn.channels):
            subscribe = schema.SubscribeRequest(channel=channel)
            if channel in recover:
                subscribe.recover = True
                subscribe.offset, subscribe.epoch = recover[channel]
            commands.append(schema.Command(id=i + 2, subscribe=subscribe))
        conn.setup["pending"] = len(commands)
        conn.setup["offsets"] = {}
        conn.setup["epochs"] = {}
        conn.setup["recovered"] = {}
        frame = b"".join(protobuf.delimit(c.SerializeToString()) for c in commands)
        conn.send_raw(client_frame(frame, wire.OP_BINARY))

    def on_setup_message(self, conn: BenchConnection, payload: bytes) -> None:
        for message in protobuf.split_messages(payload, max_messages=1 << 20):
            reply = protobuf.schema.Reply()
            reply.ParseFromString(message)
            if not reply.id:
                continue  # a ping or a push before the setup ends
            if reply.HasField("error"):
                conn.fail(f"command {reply.id} refused: {reply.error.code} {reply.error.message}")
                return
            if reply.id >= 2:
                channel = conn.channels[reply.id - 2]
                result = reply.subscribe
                conn.setup["offsets"][channel] = result.offset
                conn.setup["epochs"][channel] = result.epoch
                if result.was_recovering:
                    conn.setup["recovered"][channel] = result.recovered
                    for pub in result.publications:
                        conn.record(channel.encode(), pub.offset)
                elif conn.checked:
                    conn.expect_from(channel, result.offset)
            conn.setup["pending"] -= 1
            if conn.setup["pending"] == 0:
                conn.go_live()
                return


class MixedDriver(TetherDriver):
    """Half the connections JSON, half Protobuf (alternating), on the same channels: the
    hub then builds every publication's frame once per encoding."""

    name = "tether-mixed"

    def __init__(self, path: str, namespace: str = "bench") -> None:
        super().__init__(path, namespace)
        self.protobuf = TetherProtobufDriver(path, namespace)
        self.json = TetherDriver(path, namespace)

    def for_connection(self, index: int) -> Driver:
        return self.protobuf if index % 2 else self.json


class SocketIODriver(Driver):
    name = "socketio"
    default_path = "/socket.io/?EIO=4&transport=websocket"
    marker = b'{"ch":'  # the relayed message's start (python-socketio adds spaces after it)
    ping_frame = b"\x81\x012"
    ping_probe = b"\x01"  # its length byte: text never holds it
    ping_payload = b"2"
    pong_frame = client_frame(b"3")
    pattern = _PEER_PATTERN
    groups = (0, 1, 2)

    def __init__(self, path: str) -> None:
        if path and "EIO=" not in path:
            path = path.rstrip("/") + "/?EIO=4&transport=websocket"
        if path.startswith("/?"):
            path = "/socket.io" + path
        super().__init__(path)

    def on_setup_message(self, conn: BenchConnection, payload: bytes) -> None:
        if payload == b"2":
            return  # heartbeat, answered by the connection
        if payload.startswith(b"0{"):
            conn.send(b"40")  # Engine.IO open -> Socket.IO connect to "/"
        elif payload.startswith(b"40"):
            conn.send(b"421" + _compact(["join", conn.channels]))
        elif payload.startswith(b"431"):
            conn.go_live()  # the join ack
        elif payload.startswith(b"44"):
            conn.fail(f"socket.io connect refused: {payload[:200]!r}")

    def publish_frame(self, channel: str, messages: list[bytes]) -> bytes:
        body = b'42["pub",{"room":"%s","msgs":[%s]}]' % (channel.encode(), b",".join(messages))
        return client_frame(body)


class PlainDriver(Driver):
    name = "plain"
    default_path = "/"
    marker = b'{"ch":'
    pattern = _PEER_PATTERN
    groups = (0, 1, 2)

    def on_open(self, conn: BenchConnection) -> None:
        conn.send(_compact({"op": "sub", "rooms": conn.channels}))

    def on_setup_message(self, conn: BenchConnection, payload: bytes) -> None:
        if b'"subok"' in payload:
            conn.go_live()

    def publish_frame(self, channel: str, messages: list[bytes]) -> bytes:
        body = b'{"op":"pub","room":"%s","msgs":[%s]}' % (channel.encode(), b",".join(messages))
        return client_frame(body)


PROTOCOLS = ("tether", "tether-protobuf", "tether-mixed", "socketio", "plain")


def make_driver(protocol: str, path: str, namespace: str) -> Driver:
    if protocol == "tether":
        return TetherDriver(path, namespace)
    if protocol == "tether-protobuf":
        return TetherProtobufDriver(path, namespace)
    if protocol == "tether-mixed":
        return MixedDriver(path, namespace)
    if protocol == "socketio":
        return SocketIODriver(path)
    if protocol == "plain":
        return PlainDriver(path)
    raise ValueError(f"unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
