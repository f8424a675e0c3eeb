"""Ids drawn from a pooled CSPRNG block: well formed, never repeated, not shared with a
forked worker."""

from __future__ import annotations

import os
import re
import uuid

from tether.randomness import random_bytes, random_hex, uuid4


def test_uuid4_is_a_version_4_uuid() -> None:
    for _ in range(100):
        text = uuid4()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_random_hex_has_twice_the_digits() -> None:
    assert re.fullmatch(r"[0-9a-f]{8}", random_hex(4))
    assert len(random_bytes(5000)) == 5000  # more than a block


def test_nothing_is_handed_out_twice() -> None:
    # Across several blocks: 20,000 ids of 16 bytes are about 80 blocks of 4 KiB.
    ids = [uuid4() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_the_parents_bytes() -> None:
    random_bytes(1)  # the parent holds a block with bytes left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it would hand out next
        os.write(write, random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != random_bytes(16)
