"""The charts of docs/benchmarks.md, drawn with matplotlib from the reports.

SVG, not PNG: text files, reviewable in a diff, and no binaries in git.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Report = dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "tether-bench"  # the same figures give the same file
    plt.rcParams["svg.fonttype"] = "none"
    return plt


def fanout_chart(rows: Sequence[Report], out: Path) -> None:
    """Bars: deliveries/s and deliveries per server CPU-second of each fan-out target."""
    plt = _pyplot()
    labels = [r["label"] for r in rows]
    dps = [(r.get("deliveries_per_s") or 0) / 1e6 for r in rows]
    cps = [(r.get("deliveries_per_server_cpu_s") or 0) / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], dps, height=0.4, label="deliveries/s (median)")
    ax.barh([y + 0.2 for y in ys], cps, height=0.4, label="deliveries per server CPU-s")
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("millions")
    ax.set_title("Fan-out: one channel, 2,000 subscribers")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


def latency_curves(curves: Mapping[str, Sequence[tuple[float, float, float]]], out: Path) -> None:
    """One line per target: p99 (and p50, dashed) latency against delivered messages/s,
    from points (deliveries/s, p50 ms, p99 ms)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, points in curves.items():
        pts = sorted(points)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        (line,) = ax.plot(xs, [p[2] for p in pts], marker="o", label=f"{label} p99")
        ax.plot(xs, [p[1] for p in pts], marker=".", linestyle="--", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("deliveries/s (1,000 subscribers of one channel)")
    ax.set_ylabel("latency, ms (solid p99, dashed p50)")
    ax.set_title("Latency against throughput")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)
