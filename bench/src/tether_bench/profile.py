"""Where a server's time goes: py-spy's sampling profile, summed per function.

``record(pid, seconds, out)`` runs ``py-spy record --format raw`` (collapsed stacks, one
``frame;frame;... count`` line per distinct stack) against a running server; ``summary``
reads such a file and returns, per function, the share of samples in which it is on the
stack (inclusive) and on top of it (self), so a page can print the top of both;
``stages`` sums them by what a scenario does (:data:`CONNECT_STAGES`: upgrade, token,
subscribes, broker round trips, socket writes, the event loop).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PY_SPY = str(Path(sys.executable).parent / "py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks); returns the
    py-spy process (wait for it before reading ``out``)."""
    return subprocess.Popen(
        [
            PY_SPY,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            str(rate),
            "-f",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class Line:
    function: str
    """``name (file:line)`` as py-spy names it, the path shortened to the package."""
    inclusive: float
    """Share of samples with the function on the stack."""
    self_share: float
    """Share of samples with the function on top of the stack."""


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    where = where.rsplit(":", 1)[0]  # per function, not per line
    return f"{name} ({where})"


def summary(path: Path, top: int = 15) -> tuple[int, list[Line], list[Line]]:
    """(samples, top ``top`` by inclusive share, top ``top`` by self share)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    if not total:
        return 0, [], []

    def lines(counter: Counter[str]) -> list[Line]:
        return [
            Line(name, inclusive[name] / total, own[name] / total)
            for name, _ in counter.most_common(top)
        ]

    return total, lines(inclusive), lines(own)


@dataclass(frozen=True)
class Stage:
    """A part of the work, as the samples that show it: a function of ``on_stack``
    anywhere in the stack, or one of ``on_top`` on top of it (a function's own time,
    e.g. a socket write: the system call is made from that Python frame). Names are the
    start of :func:`_short`'s ``name (module path)``."""

    label: str
    on_stack: tuple[str, ...] = ()
    on_top: tuple[str, ...] = ()

    def shows(self, frames: Sequence[str]) -> bool:
        if self.on_top and frames[-1].startswith(self.on_top):
            return True
        return bool(self.on_stack) and any(f.startswith(self.on_stack) for f in frames)


CONNECT_STAGES = (
    Stage(
        "WebSocket upgrade (request parsing, 101 answer, session)",
        ("WebSocketConnection._upgrade",),
    ),
    Stage("connect command (token verification included)", ("Client._connect ",)),
    Stage("token verification (HS256 JWT)", ("verify_connection_token ",)),
    Stage("two subscribes (recovery included)", ("Client._subscribe ",)),
    Stage("recovery: stream reads and the tail cache", ("recover (tether/core/recovery",)),
    Stage("broker calls (guard, retries, breaker)", ("GuardedBroker.", "DelegatingBroker.")),
    Stage(
        "Redis round trips (redis-py, pipelines, the tick batcher)",
        ("TickBatcher.", "RedisBroker.", "Pipeline.", "AbstractConnection.", "StreamCommands."),
    ),
    Stage("presence writes", ("MemoryPresenceStore.", "RedisPresenceStore.", "PresenceCommands.")),
    Stage("command decoding", ("JsonCodec.decode_commands", "ProtobufCodec.decode_commands")),
    Stage("reply encoding and queueing", ("Client.send_reply",)),
    Stage("the per-tick flush (replies written)", ("Flusher._flush",)),
    Stage(
        "socket writes (the system call: 101, replies)",
        on_top=("WebSocketConnection.write ", "WebSocketConnection._send "),
    ),
    Stage("event loop (uvloop: epoll, accept, reads, callbacks)", on_top=("Runner.run ",)),
)
"""connect-cost: where a connection's setup goes (stages overlap: the token is part of
connect, recovery part of the subscribes)."""


def stages(path: Path, parts: Sequence[Stage]) -> tuple[int, list[tuple[str, float]]]:
    """(samples, each stage's share of them, then ``"the rest"``: the share of the
    samples no stage shows)."""
    counts = [0] * len(parts)
    total = rest = 0
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        n = int(count)
        total += n
        shown = [i for i, part in enumerate(parts) if part.shows(frames)]
        for i in shown:
            counts[i] += n
        rest += 0 if shown else n
    shares = [(p.label, c / total if total else 0.0) for p, c in zip(parts, counts, strict=True)]
    return total, [*shares, ("the rest", rest / total if total else 0.0)]


def report(path: Path, top: int = 20, parts: Sequence[Stage] = ()) -> dict[str, object]:
    """The summary a bench report carries (``profile``): samples, the top functions by
    self share (with their on-stack share) and by on-stack share, and ``parts``' shares."""
    samples, by_inclusive, by_self = summary(path, top)
    out: dict[str, object] = {
        "samples": samples,
        "self": [[x.function, round(x.self_share, 4), round(x.inclusive, 4)] for x in by_self],
        "inclusive": [[x.function, round(x.inclusive, 4)] for x in by_inclusive],
    }
    if parts:
        out["stages"] = [[label, round(share, 4)] for label, share in stages(path, parts)[1]]
    return out


def markdown(path: Path, top: int = 15) -> list[str]:
    """The profile as two markdown tables (by self share, and by inclusive share)."""
    total, by_inclusive, by_self = summary(path, top)
    if not total:
        return ["(no samples)"]
    out = [f"{total:,} samples.", "", "| function (self) | self | on stack |", "|---|---|---|"]
    out += [f"| `{x.function}` | {x.self_share:.1%} | {x.inclusive:.1%} |" for x in by_self]
    out += ["", "| function (on stack) | on stack | self |", "|---|---|---|"]
    out += [f"| `{x.function}` | {x.inclusive:.1%} | {x.self_share:.1%} |" for x in by_inclusive]
    return out


if __name__ == "__main__":
    print("\n".join(markdown(Path(sys.argv[1]), int(sys.argv[2]) if sys.argv[2:] else 25)))
