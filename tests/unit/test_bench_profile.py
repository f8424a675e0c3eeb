"""``tether_bench.profile``: py-spy's collapsed stacks summed per function and per stage."""

from __future__ import annotations

from pathlib import Path

from tether_bench.profile import CONNECT_STAGES, Stage, report, stages

ROOT = "run (asyncio/runners.py:118)"
UPGRADE = "WebSocketConnection._upgrade (tether/transports/websocket/server.py:181)"
SEND = "WebSocketConnection._send (tether/transports/websocket/server.py:139)"
CONNECT = "Client._connect (tether/core/client.py:480)"
TOKEN = "verify_connection_token (tether/auth.py:199)"


def _stacks(tmp_path: Path) -> Path:
    path = tmp_path / "stacks.txt"
    path.write_text(
        f"{ROOT};{UPGRADE};{SEND} 30\n"  # the 101 written from inside the upgrade
        f"{ROOT};{CONNECT};{TOKEN} 20\n"
        f"{ROOT};{CONNECT} 10\n"
        "Runner.run (asyncio/runners.py:118) 40\n"
    )
    return path


def test_stages_count_the_samples_that_show_them(tmp_path: Path) -> None:
    total, shares = stages(
        _stacks(tmp_path),
        [
            Stage("upgrade", ("WebSocketConnection._upgrade",)),
            Stage("connect", ("Client._connect ",)),
            Stage("token", ("verify_connection_token ",)),
            Stage("writes", on_top=("WebSocketConnection._send ",)),
            Stage("loop", on_top=("Runner.run ",)),
        ],
    )
    assert total == 100
    assert dict(shares) == {
        "upgrade": 0.3,
        "connect": 0.3,  # nested stages overlap: the token is part of connect
        "token": 0.2,
        "writes": 0.3,
        "loop": 0.4,
        "the rest": 0.0,
    }


def test_a_connect_cost_report_carries_every_stage(tmp_path: Path) -> None:
    summary = report(_stacks(tmp_path), parts=CONNECT_STAGES)
    assert summary["samples"] == 100
    labels = [label for label, _ in summary["stages"]]  # type: ignore[attr-defined]
    assert labels == [*(s.label for s in CONNECT_STAGES), "the rest"]
    assert "stages" not in report(_stacks(tmp_path))
