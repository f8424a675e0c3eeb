"""Delta compression in the hub: fossil deltas to the subscribers that negotiated them.

A delta subscriber gets a full publication first (after it went live: subscribe,
resubscribe, recovery), then each publication that follows the previous one without a gap
as a fossil delta against it; a gap, or a delta no smaller than the data, sends the full
publication. The delta is computed once per publication, however many subscribers get it.
Deltas are applied here with centrifuge-python's own decoder. JSON encoding: the delta
subscription's data is a JSON string (the delta, or the full document's text).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from centrifuge.fossil import apply_delta
from msgspec import Raw
from test_hub_wire_formats import Setup, Subscriber

from tether.core import hub as hub_module
from tether.core.lanes import Lane
from tether.protocol.messages import ClientInfo, Join, Publication, Push
from tether.testing.transports import JSON_LINES

CHANNEL = "doc:board"


def document(version: int) -> bytes:
    items = [{"id": i, "title": f"card {i}", "done": i < version} for i in range(40)]
    return json.dumps({"board": "sprint", "version": version, "items": items}).encode()


class Doc:
    def __init__(self) -> None:
        self.setup = Setup()

    def subscriber(self, *, delta: bool) -> Subscriber:
        sub = Subscriber(self.setup.limits, JSON_LINES)
        self.setup.hub.add_pending(CHANNEL, sub, delta=delta)
        self.setup.hub.go_live(CHANNEL, sub, after_offset=0, lane=Lane.STANDARD, delta=delta)
        return sub

    def publish(self, data: bytes, offset: int, *, delta: bool = True) -> None:
        publication = Publication(data=Raw(data), offset=offset)
        self.setup.hub.broadcast_publication(CHANNEL, publication, Lane.STANDARD, delta=delta)
        self.setup.loop.settle()


def pubs(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(frame)["push"]["pub"] for frame in sub.frames()]


def reconstruct(received: list[dict[str, Any]]) -> list[bytes]:
    """What the SDK rebuilds from a delta subscription's publications."""
    documents: list[bytes] = []
    for pub in received:
        wire = pub["data"].encode()
        documents.append(apply_delta(documents[-1], wire) if pub.get("delta") else wire)
    return documents


@pytest.fixture
def doc() -> Doc:
    return Doc()


def test_first_publication_is_full_then_each_next_is_a_delta(doc: Doc) -> None:
    sub = doc.subscriber(delta=True)
    for version in (1, 2, 3):
        doc.publish(document(version), offset=version)

    received = pubs(sub)
    assert [bool(p.get("delta")) for p in received] == [False, True, True]
    assert reconstruct(received) == [document(1), document(2), document(3)]
    assert len(received[1]["data"]) * 10 < len(document(2))


def test_a_subscriber_that_goes_live_later_starts_with_a_full_publication(doc: Doc) -> None:
    early = doc.subscriber(delta=True)
    doc.publish(document(1), offset=1)
    late = doc.subscriber(delta=True)
    doc.publish(document(2), offset=2)
    doc.publish(document(3), offset=3)

    assert [bool(p.get("delta")) for p in pubs(early)] == [False, True, True]
    assert [bool(p.get("delta")) for p in pubs(late)] == [False, True]
    assert reconstruct(pubs(late)) == [document(2), document(3)]


def test_the_delta_is_computed_once_for_every_subscriber(
    doc: Doc, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = hub_module.create_delta
    monkeypatch.setattr(hub_module, "create_delta", lambda a, b: calls.append(1) or real(a, b))
    subs = [doc.subscriber(delta=True) for _ in range(5)]
    for version in (1, 2, 3):
        doc.publish(document(version), offset=version)

    assert len(calls) == 2
    assert len({tuple(s.frames()) for s in subs}) == 1  # the same frames for all five


def test_a_gap_in_offsets_sends_the_full_publication(doc: Doc) -> None:
    sub = doc.subscriber(delta=True)
    doc.publish(document(1), offset=1)
    doc.publish(document(3), offset=3)  # offset 2 never came here
    doc.publish(document(4), offset=4)

    received = pubs(sub)
    assert [bool(p.get("delta")) for p in received] == [False, False, True]
    assert reconstruct(received)[-1] == document(4)


def test_a_delta_no_smaller_than_the_data_is_sent_full(doc: Doc) -> None:
    sub = doc.subscriber(delta=True)
    doc.publish(b'{"a":1}', offset=1)
    doc.publish(b'{"b":2}', offset=2)
    assert [bool(p.get("delta")) for p in pubs(sub)] == [False, False]


def test_without_delta_publish_a_delta_subscriber_gets_full_json_strings(doc: Doc) -> None:
    sub = doc.subscriber(delta=True)
    doc.publish(document(1), offset=1, delta=False)
    doc.publish(document(2), offset=2, delta=False)
    received = pubs(sub)
    assert [bool(p.get("delta")) for p in received] == [False, False]
    assert [p["data"] for p in received] == [document(1).decode(), document(2).decode()]


def test_subscribers_without_delta_get_plain_publications(doc: Doc) -> None:
    plain = doc.subscriber(delta=False)
    with_delta = doc.subscriber(delta=True)
    doc.publish(document(1), offset=1)
    doc.publish(document(2), offset=2)

    assert [p["data"] for p in pubs(plain)] == [json.loads(document(v)) for v in (1, 2)]
    assert all("delta" not in p for p in pubs(plain))
    assert reconstruct(pubs(with_delta)) == [document(1), document(2)]


def test_a_push_between_publications_keeps_its_place(doc: Doc) -> None:
    sub = doc.subscriber(delta=True)
    doc.publish(document(1), offset=1)
    join = Push(channel=CHANNEL, join=Join(info=ClientInfo(user="u", client="c")))
    doc.setup.hub.broadcast_push(CHANNEL, join, Lane.STANDARD)
    doc.publish(document(2), offset=2)

    kinds = [next(iter(json.loads(f)["push"].keys() - {"channel"})) for f in sub.frames()]
    assert kinds == ["pub", "join", "pub"]
