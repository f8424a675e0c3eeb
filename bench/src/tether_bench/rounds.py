"""Interleaved rounds of the fan-out and connect-cost rows, to one JSON file: how issue
11's *before* figures were measured (the page's before/after table reads the file).

usage: python -m tether_bench.rounds ROUNDS OUT.json [CHECKOUT]
       python -m tether_bench.rounds storm OUT.json [CHECKOUT]
    e.g. python -m tether_bench.rounds 3 docs/benchmarks-before-issue11.json ../before

``storm``: the 10,000-client reconnect storm of ``make bench`` (row
``tether-resilience-10k``, on a private redis-server) once, added to OUT.json's results
(its earlier storm replaced, the rest kept).

CHECKOUT: measure the Tether server of another checkout (its ``.venv/bin/tether``, e.g. a
``git worktree`` of the commit before the work, with ``pip install -e .`` in its own
venv) with this bench: the before figures on the same machine, client and harness as
the after figures. Without it, this checkout's own server.
"""

from __future__ import annotations

import datetime
import json
import resource
import subprocess
import sys
from pathlib import Path

from tether_bench import compare

ROWS = ("ceiling", "ceiling-batch10", "tether", "tether-redis")
CONNECT_ROWS = ("tether", "tether-redis")


STORM_ROW = "tether-resilience-10k"


def _server(argv: list[str]) -> Path:
    """The checkout measured; its server becomes every Tether target's command."""
    checkout = Path(argv[2]).resolve() if len(argv) > 2 else compare.ROOT
    if len(argv) > 2:
        server = checkout / ".venv" / "bin" / "tether"
        if not server.exists():
            raise SystemExit(f"{server}: no such server (pip install -e . in its venv)")
        compare.TETHER = str(server)
    return checkout


def _commit(checkout: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def storm(argv: list[str]) -> int:
    out = Path(argv[1])
    checkout = _server(argv)
    saved = json.loads(out.read_text())
    if saved.get("commit") != _commit(checkout):
        raise SystemExit(f"{out} holds {saved.get('commit')}, not {checkout}'s commit")
    step = next(s for s in compare.resilience_plan(quick=False) if s[1] == STORM_ROW)
    (report,) = compare.run_steps_on_private_redis(
        [step], _logdir(), first_port=compare.BASE_PORT + 100
    )
    results = [r for r in saved["results"] if r.get("row") != STORM_ROW]
    saved.update(
        results=[*results, report],
        storm_date=_now(),
        storm_command=" ".join(["python -m tether_bench.rounds", *argv]),
    )
    out.write_text(json.dumps(saved, indent=1))
    return 0


def _logdir() -> Path:
    logdir = Path("/tmp/tether-bench-logs")
    logdir.mkdir(exist_ok=True)
    return logdir


def main(argv: list[str]) -> int:
    if argv[0] == "storm":
        return storm(argv)
    rounds, out = int(argv[0]), Path(argv[1])
    checkout = _server(argv)
    fan = ["-n", "2000", "--duration", "10", "--bursts", "5"]
    steps: list[tuple[str, str, list[str]]] = []
    for _ in range(rounds):
        steps += [("fanout", row, fan) for row in ROWS]
        steps += [("connect-cost", row, ["-n", "5000"]) for row in CONNECT_ROWS]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = compare.run_main_steps(steps, _logdir())
    out.write_text(
        json.dumps(
            {
                "commit": _commit(checkout),
                "date": _now(),
                "command": " ".join(["python -m tether_bench.rounds", *argv]),
                "rounds": rounds,
                "load": compare.loadavg(),
                "results": results,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
