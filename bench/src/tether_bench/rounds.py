"""Interleaved rounds of the fan-out and connect-cost rows, to one JSON file: how issue
11's *before* figures were measured (the page's before/after table reads the file).

usage: python -m tether_bench.rounds ROUNDS OUT.json [CHECKOUT]
    e.g. python -m tether_bench.rounds 3 docs/benchmarks-before-issue11.json ../before

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


def main(argv: list[str]) -> int:
    rounds, out = int(argv[0]), Path(argv[1])
    checkout = Path(argv[2]).resolve() if len(argv) > 2 else compare.ROOT
    if len(argv) > 2:
        server = checkout / ".venv" / "bin" / "tether"
        if not server.exists():
            raise SystemExit(f"{server}: no such server (pip install -e . in its venv)")
        compare.TETHER = str(server)  # every Tether target of the plan starts this one
    fan = ["-n", "2000", "--duration", "10", "--bursts", "5"]
    steps: list[tuple[str, str, list[str]]] = []
    for _ in range(rounds):
        steps += [("fanout", row, fan) for row in ROWS]
        steps += [("connect-cost", row, ["-n", "5000"]) for row in CONNECT_ROWS]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logdir = Path("/tmp/tether-bench-logs")
    logdir.mkdir(exist_ok=True)
    results = compare.run_main_steps(steps, logdir)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()
    out.write_text(
        json.dumps(
            {
                "commit": commit,
                "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
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
