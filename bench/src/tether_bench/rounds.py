"""Interleaved rounds of the fan-out and connect-cost rows, to one JSON file: how issue
11's *before* figures were measured (the page's before/after table reads the file).

usage: python -m tether_bench.rounds ROUNDS OUT.json
    e.g. python -m tether_bench.rounds 3 docs/benchmarks-before-issue11.json
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
        ["git", "rev-parse", "HEAD"], cwd=compare.ROOT, capture_output=True, text=True
    ).stdout.strip()
    out.write_text(
        json.dumps(
            {
                "commit": commit,
                "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                "command": f"python -m tether_bench.rounds {rounds} {out.name}",
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
