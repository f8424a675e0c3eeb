"""Fossil deltas, checked with the centrifuge-python SDK's own decoder (what a client runs).

The centrifuge npm SDK's decoder checks them too, end to end, in tests/integration
(test_js_sdk.py, the delta scenarios).
"""

from __future__ import annotations

import json

from centrifuge.fossil import apply_delta
from centrifuge.fossil import checksum as sdk_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.fossil import checksum, create_delta

no_deadline = settings(deadline=None)


def document(changed: int = -1) -> bytes:
    """A 2 KiB JSON document; ``changed`` picks one item to update."""
    items = [{"id": i, "title": f"task {i}", "done": i == changed, "by": "ana"} for i in range(40)]
    return json.dumps({"board": "sprint", "items": items}).encode()


def test_small_change_to_a_document_gives_a_small_delta() -> None:
    before, after = document(), document(changed=17)
    delta = create_delta(before, after)
    assert apply_delta(before, delta) == after
    assert len(before) > 2048
    assert len(delta) * 20 < len(after)


def test_identical_inputs_give_one_copy() -> None:
    data = document()
    delta = create_delta(data, data)
    assert apply_delta(data, delta) == data
    assert delta.count(b"@") == 1
    assert b":" not in delta


def test_empty_source_or_target() -> None:
    assert apply_delta(b"", create_delta(b"", b"hello")) == b"hello"
    assert apply_delta(b"abc", create_delta(b"abc", b"")) == b""
    assert apply_delta(b"", create_delta(b"", b"")) == b""


def test_delta_of_utf8_text_is_utf8() -> None:
    # The JSON protocol carries a delta inside a JSON string: it must decode as UTF-8,
    # so no copy may start or end inside a multi-byte character.
    before = ("é" * 40 + "ü" * 40 + "€" * 40).encode()
    after = ("é" * 40 + "x" + "ü" * 40 + "€" * 39 + "∑").encode()
    delta = create_delta(before, after)
    delta.decode("utf-8")
    assert apply_delta(before, delta) == after


@given(st.binary(max_size=64))
def test_checksum_matches_the_sdk(data: bytes) -> None:
    assert checksum(data) == sdk_checksum(data)


@no_deadline
@given(st.binary(max_size=600), st.binary(max_size=600))
def test_any_pair_of_byte_strings_round_trips(source: bytes, target: bytes) -> None:
    assert apply_delta(source, create_delta(source, target)) == target


@no_deadline
@given(
    st.binary(min_size=64, max_size=2000),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=8)), max_size=6),
)
def test_edited_copies_round_trip(source: bytes, edits: list[tuple[int, bytes]]) -> None:
    target = bytearray(source)
    for at, insert in edits:
        at %= len(target) + 1
        target[at : at + len(insert)] = insert
    assert apply_delta(source, create_delta(source, bytes(target))) == bytes(target)


@no_deadline
@given(st.text(max_size=300), st.text(max_size=300))
def test_delta_of_any_utf8_text_is_utf8_and_round_trips(source: str, target: str) -> None:
    before, after = source.encode(), (source + target + source).encode()
    delta = create_delta(before, after)
    delta.decode("utf-8")
    assert apply_delta(before, delta) == after
