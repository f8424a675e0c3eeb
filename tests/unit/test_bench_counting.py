"""The bench client's counting path: every delivery and every heartbeat, whatever the reads.

The counting path (``tether_bench.wsclient``) counts each driver's marker with one
``bytes.count`` per read and answers heartbeats it finds; its markers and heartbeat probes
are chosen for speed, so these tests feed each driver what its server really sends
(Tether's own codecs, the peers' JSON), heartbeats among the deliveries, cut into two reads at
every byte, and check that nothing is counted twice or missed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import msgspec
import pytest

from tether.protocol.codec import JSON
from tether.protocol.messages import Publication
from tether.protocol.protobuf import PROTOBUF
from tether.transports.websocket import wire
from tether_bench.drivers import Driver, make_driver
from tether_bench.wsclient import BenchConnection, Stats

DELIVERIES = 12
PAD = "x" * 40


class _Transport:
    """What the connection writes back (the pongs)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _tether_json(driver: Driver, seq: int) -> bytes:
    data = driver.message("bench:fan", seq, 1764650000000000 + seq, PAD)
    publication = Publication(data=msgspec.Raw(data), offset=seq)
    return wire.text_frame(JSON.encode_publication_push("bench:fan", publication))


def _tether_protobuf(driver: Driver, seq: int) -> bytes:
    data = driver.message("bench:fan", seq, 1764650000000000 + seq, PAD)
    publication = Publication(data=msgspec.Raw(data), offset=seq)
    return wire.binary_frame(PROTOBUF.encode_publication_push("bench:fan", publication))


def _plain(driver: Driver, seq: int) -> bytes:
    message = json.loads(driver.message("fan", seq, 1764650000000000 + seq, PAD))
    return wire.text_frame(json.dumps(message, separators=(",", ":")).encode())


def _socketio(driver: Driver, seq: int) -> bytes:
    message = json.loads(driver.message("fan", seq, 1764650000000000 + seq, PAD))
    # python-socketio's default json.dumps (spaces after separators)
    return wire.text_frame(b"42" + json.dumps(["msg", message]).encode())


CASES: dict[str, tuple[Callable[[Driver, int], bytes], bytes]] = {
    "tether": (_tether_json, wire.text_frame(b"{}")),
    "tether-protobuf": (_tether_protobuf, wire.binary_frame(b"\x00")),
    "plain": (_plain, b""),
    "socketio": (_socketio, wire.text_frame(b"2")),
}


def _stream(protocol: str) -> tuple[Driver, bytes, int]:
    """A driver, what its server sends (deliveries with heartbeats among them), and the
    number of heartbeats."""
    driver = make_driver(protocol, "", "bench")
    encode, ping = CASES[protocol]
    frames: list[bytes] = []
    pings = 0
    for seq in range(1, DELIVERIES + 1):
        frames.append(encode(driver, seq))
        if ping and seq % 4 == 0:
            frames.append(ping)
            pings += 1
    return driver, b"".join(frames), pings


async def _count(driver: Driver, reads: list[bytes]) -> tuple[int, int]:
    """(deliveries counted, pongs sent) after feeding ``reads`` to a live connection."""
    stats = Stats()
    conn = BenchConnection(driver, stats, ["bench:fan"], checked=False)
    transport = _Transport()
    conn.transport = transport  # type: ignore[assignment]
    conn.go_live()
    for data in reads:
        conn.data_received(data)
    pong = driver.pong_frame or b""
    pongs = b"".join(transport.written).count(pong) if pong else 0
    return stats.deliveries, pongs


@pytest.mark.parametrize("protocol", sorted(CASES))
async def test_one_read_counts_every_delivery_and_answers_every_heartbeat(protocol: str) -> None:
    driver, stream, pings = _stream(protocol)
    assert await _count(driver, [stream]) == (DELIVERIES, pings)


@pytest.mark.parametrize("protocol", sorted(CASES))
async def test_reads_cut_at_any_byte_count_the_same(protocol: str) -> None:
    driver, stream, pings = _stream(protocol)
    for cut in range(1, len(stream)):
        got = await _count(driver, [stream[:cut], stream[cut:]])
        assert got == (DELIVERIES, pings), f"cut at byte {cut}"
