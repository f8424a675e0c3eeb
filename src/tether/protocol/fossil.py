"""Fossil deltas: the delta format the Centrifugo SDKs apply (``delta: "fossil"``).

No maintained implementation is on PyPI (``fossil-delta`` is a C wrapper last released in
2017), so this is our own encoder of the published format; the SDKs' decoders check it in
tests (tests/unit/test_fossil.py with centrifuge-python's, tests/js with centrifuge-js's).

A delta turns ``source`` into ``target``::

    <len(target)>\\n                 then, in order:
    <count>@<offset>,               copy ``count`` bytes of source from ``offset``
    <count>:<bytes>                 insert the next ``count`` bytes of the delta
    <checksum>;                     the end, with a 32-bit checksum of target

Integers are written in base 64, most significant digit first, with the digits
``0-9 A-Z _ a-z ~``. The checksum is the sum, modulo 2**32, of target read as big-endian
32-bit words (the last one padded with zero bytes).

Matching: source is indexed by its aligned 16-byte blocks; target is scanned byte by byte
for a block of source, and every hit is grown backwards and forwards as far as both agree.
Segment boundaries never split a UTF-8 sequence, so the delta of UTF-8 text is UTF-8 too:
the JSON protocol carries deltas inside JSON strings.
"""

from __future__ import annotations

import struct
from typing import Final

_DIGITS: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_BLOCK: Final = 16
"""Bytes of a source block: shorter matches cost about as much as the literal."""


def _int(value: int) -> bytes:
    if value == 0:
        return b"0"
    out = bytearray()
    while value:
        out.append(_DIGITS[value & 63])
        value >>= 6
    out.reverse()
    return bytes(out)


def checksum(data: bytes) -> int:
    """The format's checksum of ``data``: big-endian 32-bit words summed modulo 2**32."""
    padded = data + b"\0" * (-len(data) % 4)
    words: tuple[int, ...] = struct.unpack(f">{len(padded) // 4}I", padded)
    return sum(words) & 0xFFFFFFFF


def _continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _common_suffix(a: bytes, a_end: int, b: bytes, b_end: int, limit: int) -> int:
    n = 0
    while n < limit and a[a_end - n - 1] == b[b_end - n - 1]:
        n += 1
    return n


def _common_prefix(a: bytes, a_pos: int, b: bytes, b_pos: int) -> int:
    """How many bytes ``a[a_pos:]`` and ``b[b_pos:]`` share, compared in shrinking chunks
    (slice equality runs in C; a byte loop in Python is what makes deltas slow)."""
    limit = min(len(a) - a_pos, len(b) - b_pos)
    n = 0
    for step in (256, 16, 1):
        while (
            n + step <= limit and a[a_pos + n : a_pos + n + step] == b[b_pos + n : b_pos + n + step]
        ):
            n += step
    return n


def create_delta(source: bytes, target: bytes) -> bytes:
    """The fossil delta that turns ``source`` into ``target``."""
    out = bytearray(_int(len(target)))
    out += b"\n"
    index: dict[bytes, int] = {}
    for offset in range(0, len(source) - _BLOCK + 1, _BLOCK):
        index.setdefault(source[offset : offset + _BLOCK], offset)
    literal = 0  # start of target bytes not yet written
    pos = 0
    last = len(target) - _BLOCK
    while pos <= last:
        found = index.get(target[pos : pos + _BLOCK])
        if found is None:
            pos += 1
            continue
        back = _common_suffix(source, found, target, pos, min(found, pos - literal))
        start_t, start_s = pos - back, found - back
        end_t = pos + _BLOCK + _common_prefix(source, found + _BLOCK, target, pos + _BLOCK)
        # Keep UTF-8 sequences whole: a copy starts and ends on a character boundary.
        while start_t < end_t and _continuation(target[start_t]):
            start_t += 1
            start_s += 1
        while end_t < len(target) and end_t > start_t and _continuation(target[end_t]):
            end_t -= 1
        if end_t - start_t < _BLOCK:
            pos += 1
            continue
        if start_t > literal:
            out += _int(start_t - literal) + b":" + target[literal:start_t]
        out += _int(end_t - start_t) + b"@" + _int(start_s) + b","
        literal = pos = end_t
    if literal < len(target):
        out += _int(len(target) - literal) + b":" + target[literal:]
    out += _int(checksum(target)) + b";"
    return bytes(out)
