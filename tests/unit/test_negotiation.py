"""Which encoding a WebSocket connection speaks, decided at the upgrade from what the SDK
offers: the ``centrifuge-protobuf`` subprotocol, or a ``format``/``cf_protocol`` query."""

from __future__ import annotations

import base64

import pytest

from tether.testing.wsclient import upgrade_request
from tether.transports.websocket import wire
from tether.transports.websocket.negotiation import WIRE_FORMATS, negotiate

KEY = base64.b64encode(b"0123456789abcdef").decode()


def request(target: str = "/connection/websocket", **headers: str) -> wire.UpgradeRequest:
    raw = upgrade_request(target, headers={"Sec-WebSocket-Key": KEY, **headers})
    return wire.parse_upgrade(raw.removesuffix(b"\r\n\r\n"))


def test_no_preference_speaks_json_without_a_subprotocol() -> None:
    negotiated = negotiate(request())
    assert negotiated.wire_format is WIRE_FORMATS["json"]
    assert negotiated.subprotocol is None


@pytest.mark.parametrize(
    "offered", ["centrifuge-protobuf", "chat, centrifuge-protobuf", " centrifuge-protobuf ,x"]
)
def test_protobuf_subprotocol_is_selected_in_the_answer(offered: str) -> None:
    negotiated = negotiate(request(**{"Sec-WebSocket-Protocol": offered}))
    assert negotiated.wire_format is WIRE_FORMATS["protobuf"]
    assert negotiated.subprotocol == "centrifuge-protobuf"


def test_other_subprotocols_are_not_selected() -> None:
    negotiated = negotiate(request(**{"Sec-WebSocket-Protocol": "mqtt, centrifuge-json"}))
    assert negotiated.wire_format is WIRE_FORMATS["json"]
    assert negotiated.subprotocol is None


@pytest.mark.parametrize(
    "query", ["format=protobuf", "cf_protocol=protobuf", "a=1&format=protobuf"]
)
def test_protobuf_query_selects_protobuf_without_a_subprotocol(query: str) -> None:
    negotiated = negotiate(request(f"/connection/websocket?{query}"))
    assert negotiated.wire_format is WIRE_FORMATS["protobuf"]
    assert negotiated.subprotocol is None


@pytest.mark.parametrize("query", ["format=json", "cf_protocol=json", "other=protobuf"])
def test_json_or_unrelated_query_speaks_json(query: str) -> None:
    assert negotiate(request(f"/connection/websocket?{query}")).wire_format is WIRE_FORMATS["json"]


@pytest.mark.parametrize("query", ["format=xml", "format=", "cf_protocol=PROTOBUF"])
def test_unknown_format_is_refused_with_400(query: str) -> None:
    with pytest.raises(wire.HandshakeError) as info:
        negotiate(request(f"/connection/websocket?{query}"))
    assert info.value.status == 400


def test_protobuf_speaks_binary_frames() -> None:
    assert WIRE_FORMATS["protobuf"].ping == b"\x82\x01\x00"  # binary frame, empty Reply
