"""Random identifiers (client ids, stream epochs) from the OS's CSPRNG, drawn in blocks.

``os.urandom`` is one ``getrandom`` system call however few bytes it returns, and a
connect needs a client id (16 bytes) and, on a new stream, an epoch (4 bytes): in a
reconnection storm that was 1.5 system calls per connect (``strace -c -f`` of the server
under ``tether-bench run connect-cost``). The bytes here are the same ``os.urandom``
bytes, read 4 KiB at a time and handed out once each, so an id is as unpredictable as
before. A forked child (``tether serve --workers``) starts with a fresh block
(:func:`os.register_at_fork`), so no two workers hand out the same bytes.
"""

from __future__ import annotations

import os

_BLOCK = 4096


class _Pool:
    __slots__ = ("_block", "_pos")

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._block):
            self._block = os.urandom(max(_BLOCK, n))
            pos = 0
        self._pos = pos + n
        return self._block[pos : pos + n]

    def forget(self) -> None:
        """Drop the block (in a forked child: the parent hands out the same bytes)."""
        self._block = b""
        self._pos = 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.forget)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the OS's CSPRNG, never handed out twice in this process."""
    return _pool.take(n)


def random_hex(n: int) -> str:
    """``n`` random bytes as ``2 * n`` hexadecimal digits (``secrets.token_hex(n)``)."""
    return _pool.take(n).hex()


def uuid4() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` makes it at a third of
    the cost (no UUID object)."""
    raw = bytearray(_pool.take(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
