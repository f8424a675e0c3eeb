"""The backend hooks' JSON shapes (pure)."""

from __future__ import annotations

import pytest

from tether.proxy import wire


def test_an_answer_holds_its_result_error_or_disconnect() -> None:
    result = wire.decode(b'{"result": {"user": "alice", "expire_at": 5}}', wire.ConnectResult)
    assert isinstance(result, wire.ConnectResult)
    assert (result.user, result.expire_at) == ("alice", 5)
    error = wire.decode(b'{"error": {"code": 1000, "message": "no"}}', wire.ConnectResult)
    assert error == wire.Error(1000, "no", False)
    gone = wire.decode(b'{"disconnect": {"code": 4500, "reason": "ban"}}', wire.RPCResult)
    assert gone == wire.Disconnect(4500, "ban")


def test_unknown_fields_of_an_answer_are_ignored() -> None:
    answer = b'{"result": {"user": "a", "override": {"presence": {"value": true}}}, "x": 1}'
    assert isinstance(wire.decode(answer, wire.ConnectResult), wire.ConnectResult)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "wrong type"),
        (b'{"result": {"user": 1}}', "wrong type in result"),
        (b'{"result": null}', "found: none"),
        (b'{"result": {}, "disconnect": {"code": 4000}}', "found: result, disconnect"),
        (b'{"error": {"code": 99}}', "not in 100-1999"),
        (b'{"error": {"message": "no code"}}', "wrong type"),
        (b'{"disconnect": {"code": 2999}}', "not in 3000-4999"),
    ],
)
def test_a_bad_answer_says_what_is_wrong(body: bytes, why: str) -> None:
    with pytest.raises(wire.BadAnswer, match=why):
        wire.decode(body, wire.ConnectResult)


def test_payloads_are_raw_json_or_base64() -> None:
    assert wire.payload(wire.Raw(b'{"a":1}'), "", "data") == b'{"a":1}'
    assert wire.payload(wire.Raw(b"null"), "", "data") is None
    assert wire.payload(wire.Raw(), "AAE=", "data") == b"\x00\x01"
    with pytest.raises(wire.BadAnswer, match="b64data is not base64"):
        wire.payload(wire.Raw(), "***", "data")
    assert wire.json_or_b64(b'{"a":1}', "json") == (wire.Raw(b'{"a":1}'), "")
    assert wire.json_or_b64(b"\x00", "binary") == (None, "AA==")
