"""The code tables: one record per code, and the range rule that decides reconnecting.

The disconnect ranges are the protocol's (centrifuge's ``disconnect.go``, the SDKs'
reconnect logic): an SDK reconnects after 3000-3499 and 4000-4499 and stays disconnected
after 3500-3999 and 4500-4999. ``docs/reference/protocol.md`` lists the same tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tether.protocol.codes import (
    DISCONNECTS,
    ERRORS,
    UNSUBSCRIBES,
    DisconnectCode,
    DisconnectInfo,
    ErrorCode,
    UnsubscribeCode,
    UnsubscribeInfo,
    is_disconnect_code,
    should_reconnect,
)

PROTOCOL_MD = Path(__file__).parents[2] / "docs" / "reference" / "protocol.md"


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (3000, True),
        (3499, True),
        (3500, False),
        (3999, False),
        (4000, True),
        (4499, True),
        (4500, False),
        (4999, False),
    ],
)
def test_the_range_of_a_disconnect_code_decides_whether_the_client_reconnects(
    code: int, reconnect: bool
) -> None:
    assert is_disconnect_code(code)
    assert should_reconnect(code) is reconnect
    assert DisconnectInfo(code, "why").reconnect is reconnect


@pytest.mark.parametrize("code", [0, 1000, 1009, 2999, 5000, 65535])
def test_a_code_outside_3000_4999_is_not_a_disconnect_code(code: int) -> None:
    assert not is_disconnect_code(code)
    with pytest.raises(ValueError, match="3000-4999"):
        should_reconnect(code)
    with pytest.raises(ValueError, match="3000-4999"):
        DisconnectInfo(code, "why")


def test_every_code_of_a_table_is_listed_once() -> None:
    for table in (ERRORS, DISCONNECTS, UNSUBSCRIBES):
        codes = [record.code for record in table]
        assert len(codes) == len(set(codes))
    assert ErrorCode.INTERNAL in ERRORS
    assert DisconnectCode.TOO_MANY_ERRORS in DISCONNECTS
    assert UnsubscribeCode.INSUFFICIENT_STATE in UNSUBSCRIBES


def test_the_protocols_own_codes_stay_in_the_protocols_ranges() -> None:
    assert all(100 <= e.code <= 399 for e in ERRORS)
    assert all(3000 <= d.code <= 3999 for d in DISCONNECTS)


def test_a_disconnect_reason_fits_a_websocket_close_frame() -> None:
    # A close frame's payload is at most 125 bytes, two of them the code.
    assert all(len(d.reason.encode()) <= 123 for d in DISCONNECTS)


def test_only_the_insufficient_state_unsubscribe_makes_the_sdk_resubscribe() -> None:
    assert UnsubscribeCode.INSUFFICIENT_STATE.resubscribe
    assert not UnsubscribeCode.SERVER.resubscribe
    assert UnsubscribeInfo(2999, "why").resubscribe
    assert not UnsubscribeInfo(3000, "why").resubscribe


def test_a_more_specific_reason_keeps_the_code_and_its_advice() -> None:
    specific = DisconnectCode.INVALID_TOKEN.because("token of another user")

    assert (specific.code, specific.reason, specific.reconnect) == (
        3500,
        "token of another user",
        False,
    )


def _doc_rows(heading: str) -> dict[int, tuple[str, ...]]:
    section = PROTOCOL_MD.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.fullmatch(r"\d+", cells[0]):
            rows[int(cells[0])] = tuple(cells[1:])
    return rows


def test_the_protocol_reference_lists_every_error_code_as_the_table_has_it() -> None:
    rows = _doc_rows("Error codes")

    assert {code: (message, temporary) for code, (message, temporary, *_) in rows.items()} == {
        e.code: (e.message, "yes" if e.temporary else "no") for e in ERRORS
    }


def test_the_protocol_reference_gives_each_listed_disconnect_code_its_reason_and_advice() -> None:
    rows = _doc_rows("Disconnect codes")
    table = {d.code: d for d in DISCONNECTS}

    assert rows  # the section was found and parsed
    for code, (reason, reconnect, *_) in rows.items():
        if code in table:
            assert (reason, reconnect) == (
                table[code].reason,
                "yes" if table[code].reconnect else "no",
            )
    assert set(table) - set(rows) == {3504, 3505, 3506, 3507, 3508, 3509}  # one grouped row
