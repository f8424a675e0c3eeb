"""Capacity planning as arithmetic: from measured bench figures and a target load, the
nodes, cores and memory a Tether fleet needs (``tether capacity``).

The model (docs/howto/autoscale.md#capacity-planning-tether-capacity):

* **CPU.** One node is one event loop: at most one core. A publication costs
  ``per_publication`` CPU-seconds on a node where its channel has subscribers, plus
  ``per_delivery`` for each local subscriber; a connection costs ``per_connection_idle``
  CPU-seconds per second (pings; the ``idle`` run); a connect costs
  ``1 / connects_per_cpu_s`` (the ``connect-cost`` run over the memory broker: upgrade,
  JWT connect, two recovering subscribes, measured in server CPU, admission control
  lifted). The two publication costs come from the bench's capacity runs (latency
  scenario rows ``tether@capacity-N``): the same paced rate and publish shape (one
  publication per request), fan-outs N; a straight line through the smallest and the
  largest fan-out. Runs at the maximum rate are not used: there several publications
  share each subscriber's write, and how many depends on the rate and the requests in
  flight. None of the figures is fitted on the ``rooms`` run, which is kept to check the
  model against (:func:`check_rooms`).
* **Steady load** runs at ``utilization`` of a core (default 0.6, the autoscalers'
  target), leaving the rest for bursts and a node's share of a reconnection storm.
* **Reconnection storm.** ``storm_clients`` reconnect within ``storm_seconds``: spread
  over the nodes, each node's share must stay under its admission rate
  (``max_connects_per_second``) and fit in the core left over by steady load.
* **Connections** per node at most ``max_connections_per_node``.
* **Memory** per node: the process baseline plus ``kib_per_connection`` per connection,
  times ``memory_headroom`` (outbound queues, allocator slack).
* **Drain.** When one node leaves (a deploy, a scale-in), its clients reconnect to the
  others over ``drain_window``: the smallest window that keeps them under their
  admission rate is printed.

Pure arithmetic: no I/O (the CLI reads the bench JSON and passes the parsed object).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from tether.errors import TetherError


class CapacityError(TetherError):
    """The bench figures or the target are unusable; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Costs:
    """CPU costs and memory per connection, measured by the bench."""

    per_publication: float  # CPU-seconds per publication on one node (1 per API request)
    per_delivery: float  # CPU-seconds per delivery to one local subscriber
    per_connection_idle: float  # CPU-seconds per second per idle connection
    connects_per_cpu_s: float  # connects one CPU-second admits
    kib_per_connection: float  # server RSS per connection
    base_rss_mib: float  # server RSS with no connection
    source: str  # what the figures were read from


@dataclass(frozen=True, slots=True)
class Target:
    connections: int
    channels: int
    publications_per_s: float
    fanout: float  # average subscribers per publication, across the fleet
    storm_clients: int  # clients that reconnect at once (a node loss, a network blip)
    storm_seconds: float  # within how long they must all be back
    utilization: float = 0.6
    max_connections_per_node: int = 100_000
    max_connects_per_second: float = 2000.0  # per node (config)
    memory_headroom: float = 1.5
    min_nodes: int = 2  # a lost node's clients need another node to go to


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: int
    cores: int
    memory_per_node_mib: float
    memory_total_gib: float
    connections_per_node: int
    steady_cores_per_node: float
    storm_connects_per_node_per_s: float
    drain_window_s: float
    limited_by: str
    assumptions: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["assumptions"] = list(self.assumptions)
        return out


def _row(results: list[dict[str, Any]], scenario: str, label: str) -> dict[str, Any]:
    """The first run of ``scenario`` labelled ``label``."""
    found = [r for r in results if r.get("scenario") == scenario and r.get("label") == label]
    if not found:
        raise CapacityError(f"the bench JSON has no {scenario!r} run labelled {label!r}")
    return found[0]


def _number(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise CapacityError(
            f"the {row.get('scenario')!r} run ({row.get('label')!r}) has no positive "
            f"{key!r} (got {value!r})"
        )
    return float(value)


CAPACITY_ROW = "tether@capacity-"
"""Prefix of the plan rows (``tether-bench compare``) of the capacity runs: latency
scenario, one rate, fan-out N (the suffix)."""


@dataclass(frozen=True, slots=True)
class PublicationLine:
    """CPU per publication and per delivery: a straight line through two runs at one
    publication per request, each ``(fan-out, CPU-seconds per publication)``."""

    per_publication: float
    per_delivery: float
    low: tuple[float, float]
    high: tuple[float, float]
    rate: float  # publications/s of both runs


def _per_publication_cpu(row: dict[str, Any]) -> tuple[float, float]:
    """(fan-out, CPU-seconds per publication) of a one-publication-per-request run."""
    fanout = _number(row, "deliveries") / _number(row, "publications")
    return fanout, fanout / _number(row, "deliveries_per_server_cpu_s")


def publication_line(results: list[dict[str, Any]]) -> PublicationLine:
    """The line through the capacity runs of a bench JSON's results (latency rows
    ``tether@capacity-N``: at least two fan-outs, one rate). Raises
    :class:`CapacityError` when they are missing, disagree on the rate, or give no line
    with positive costs."""
    runs = [
        r
        for r in results
        if r.get("scenario") == "latency" and str(r.get("row", "")).startswith(CAPACITY_ROW)
    ]
    usable = [r for r in runs if "error" not in r]
    if len({r["row"] for r in usable}) < 2:
        failed = ", ".join(sorted(r["row"] for r in runs if "error" in r)) or "none"
        raise CapacityError(
            f"the bench JSON lacks the capacity runs (latency rows {CAPACITY_ROW}1000 and "
            f"{CAPACITY_ROW}250: one paced rate, two fan-outs; failed runs: {failed}), "
            "it predates them: re-run `make bench`"
        )
    points = sorted(((_per_publication_cpu(r), r) for r in usable), key=lambda p: p[0][0])
    (low, low_run), (high, high_run) = points[0], points[-1]
    rates = (_number(low_run, "rate"), _number(high_run, "rate"))
    if abs(rates[0] - rates[1]) > 0.05 * max(rates):
        raise CapacityError(
            f"the capacity runs {low_run['row']} and {high_run['row']} published at "
            f"different rates ({rates[0]:g}/s, {rates[1]:g}/s): the line needs one rate"
        )
    if high[0] <= low[0]:
        raise CapacityError(
            f"the capacity runs {low_run['row']} and {high_run['row']} have the same "
            f"fan-out ({low[0]:.0f}): the line needs two"
        )
    per_delivery = (high[1] - low[1]) / (high[0] - low[0])
    per_publication = low[1] - per_delivery * low[0]
    if per_delivery <= 0 or per_publication <= 0:
        raise CapacityError(
            "no straight line with positive costs goes through the capacity runs "
            f"({low[1] * 1e6:.0f} us per publication at fan-out {low[0]:.0f}, "
            f"{high[1] * 1e6:.0f} us at fan-out {high[0]:.0f}), so this bench cannot "
            "separate the cost per publication from the cost per delivery: one of them was "
            "disturbed (see their load averages) or coalesced publications; re-run them"
        )
    return PublicationLine(per_publication, per_delivery, low, high, rates[0])


def _connects_per_cpu_s(results: list[dict[str, Any]]) -> float:
    """Connects per server CPU-second of the connect-cost run over the memory broker
    (row ``tether``): the stored run (``make bench`` keeps the median of its runs), or
    the lower median of several stored runs (the conservative one)."""
    runs = [r for r in results if r.get("scenario") == "connect-cost" and r.get("row") == "tether"]
    if not runs:
        raise CapacityError(
            "the bench JSON has no 'connect-cost' run of row 'tether' (memory broker): "
            "re-run `make bench`"
        )
    return statistics.median_low([_number(r, "connects_per_server_cpu_s") for r in runs])


def costs_from_bench(bench: Any) -> Costs:
    """Read the costs from a ``make bench`` JSON (docs/benchmarks.json). Raises
    :class:`CapacityError` naming the missing run or figure."""
    if not isinstance(bench, dict) or not isinstance(bench.get("results"), list):
        raise CapacityError("not a bench JSON: expected an object with a 'results' list")
    results: list[dict[str, Any]] = [r for r in bench["results"] if isinstance(r, dict)]
    line = publication_line(results)
    idle = _row(results, "idle", "Tether")
    connections = _number(idle, "connections")
    meta = bench.get("meta")
    date = meta.get("date", "undated") if isinstance(meta, dict) else "undated"
    return Costs(
        per_publication=line.per_publication,
        per_delivery=line.per_delivery,
        per_connection_idle=_number(idle, "server_cpu_percent") / 100 / connections,
        connects_per_cpu_s=_connects_per_cpu_s(results),
        kib_per_connection=_number(idle, "rss_per_connection_kib"),
        base_rss_mib=_number(idle, "server_rss_before_mib"),
        source=(
            f"bench of {date}: Tether capacity runs ({line.rate:g} publications/s, fan-outs "
            f"{line.low[0]:.0f} and {line.high[0]:.0f}), connect-cost and idle runs"
        ),
    )


def _check(target: Target) -> None:
    numbers = {
        "connections": target.connections,
        "channels": target.channels,
        "publications_per_s": target.publications_per_s,
        "fanout": target.fanout,
        "storm_clients": target.storm_clients,
    }
    for name, value in numbers.items():
        if value < 0:
            raise CapacityError(f"{name} must be >= 0 (got {value})")
    if target.storm_clients and target.storm_seconds <= 0:
        raise CapacityError("storm_seconds must be > 0 when storm_clients is set")
    if not 0 < target.utilization <= 1:
        raise CapacityError(f"utilization must be in (0, 1] (got {target.utilization})")
    if target.min_nodes < 1:
        raise CapacityError(f"min_nodes must be >= 1 (got {target.min_nodes})")
    if target.max_connections_per_node <= 0 or target.max_connects_per_second <= 0:
        raise CapacityError("max_connections_per_node and max_connects_per_second must be > 0")
    if target.fanout > target.connections > 0:
        raise CapacityError(
            f"fanout ({target.fanout}) cannot exceed connections ({target.connections})"
        )


def steady_cores(costs: Costs, target: Target, nodes: int) -> float:
    """CPU cores the fleet spends at the target's steady load, spread over ``nodes``."""
    # A publication is paid once on every node holding one of its subscribers: at most
    # all nodes, at most one node per subscriber.
    nodes_per_publication = max(1.0, min(float(nodes), target.fanout))
    publications = target.publications_per_s * nodes_per_publication * costs.per_publication
    deliveries = target.publications_per_s * target.fanout * costs.per_delivery
    idle = target.connections * costs.per_connection_idle
    return publications + deliveries + idle


def plan(costs: Costs, target: Target) -> Plan:
    """The smallest fleet meeting every constraint of the module docstring."""
    _check(target)
    storm_rate = target.storm_clients / target.storm_seconds if target.storm_clients else 0.0
    nodes = target.min_nodes
    last: list[str] = []
    for _ in range(10_000):
        reasons: list[str] = []
        per_node = steady_cores(costs, target, nodes) / nodes
        if per_node > target.utilization:
            reasons.append("cpu")
        if math.ceil(target.connections / nodes) > target.max_connections_per_node:
            reasons.append("connections")
        storm_per_node = storm_rate / nodes
        if storm_per_node > target.max_connects_per_second:
            reasons.append("storm admission rate")
        if per_node + storm_per_node / costs.connects_per_cpu_s > 1.0:
            reasons.append("storm cpu")
        if not reasons:
            break
        last = reasons
        nodes += 1
    else:  # pragma: no cover - only with absurd targets
        raise CapacityError("no fleet of up to 10,000 nodes meets the target")
    per_node_connections = math.ceil(target.connections / nodes)
    memory = (
        costs.base_rss_mib + per_node_connections * costs.kib_per_connection / 1024
    ) * target.memory_headroom
    others = max(1, nodes - 1)
    drain_window = per_node_connections / (others * target.max_connects_per_second)
    limited_by = ", ".join(last) if nodes > target.min_nodes else "min_nodes"
    steady = steady_cores(costs, target, nodes) / nodes
    assumptions = (
        f"figures from the {costs.source}",
        f"a publication costs {costs.per_publication * 1e6:.0f} us of CPU on each node "
        f"holding a subscriber of its channel (min(nodes, fanout) nodes), plus "
        f"{costs.per_delivery * 1e6:.3f} us per delivery: a straight line through the "
        "capacity runs (one paced rate, two fan-outs), one publication per API request and "
        "each flushed on its own (batching publications, or rates high enough that they "
        "share writes, cost less)",
        f"an idle connection costs {costs.per_connection_idle * 1e6:.2f} us of CPU per "
        "second (pings; idle run)",
        f"a connect costs {1e6 / costs.connects_per_cpu_s:.0f} us of CPU "
        f"({costs.connects_per_cpu_s:.0f} connects per server CPU-second, connect-cost run "
        "over the memory broker: upgrade, JWT, two recovering subscribes; a Redis broker "
        "costs more)",
        "one node = one process = one event loop = at most one core (request 1 CPU per pod)",
        f"at least {target.min_nodes} nodes, so that a lost node's clients have somewhere to go",
        f"steady load at most {target.utilization:.0%} of a core per node (the autoscalers' "
        "target), the rest for bursts and reconnection storms",
        f"a reconnection storm of {target.storm_clients} clients in "
        f"{target.storm_seconds:g} s spreads evenly over the nodes, each admitting at most "
        f"{target.max_connects_per_second:g} connects/s (max_connects_per_second)",
        f"at most {target.max_connections_per_node} connections per node (max_connections)",
        f"memory: {costs.base_rss_mib:.0f} MiB baseline + {costs.kib_per_connection:.2f} KiB "
        f"per connection (idle run, 2 channels each), x{target.memory_headroom:g} headroom "
        "for outbound queues and allocator slack",
        f"channels ({target.channels}) cost memory in the broker, not in this model; the "
        "publication cost assumes each channel is one broker subscription per node",
        "deliveries are spread evenly: a channel's subscribers on all nodes alike",
        f"every node with subscribers of a channel pays for each of its publications: "
        f"{target.publications_per_s:g}/s cost "
        f"{target.publications_per_s * costs.per_publication:.2f} of a core on each such "
        "node; past the utilization more nodes do not help until there are more nodes than "
        "the fan-out (batch publications, fewer nodes per channel)",
        f"drain: a leaving node's {per_node_connections} clients reconnect to the other "
        f"{others} within drain_window at their max_connects_per_second",
    )
    return Plan(
        nodes=nodes,
        cores=nodes,
        memory_per_node_mib=round(memory, 1),
        memory_total_gib=round(memory * nodes / 1024, 2),
        connections_per_node=per_node_connections,
        steady_cores_per_node=round(steady, 3),
        storm_connects_per_node_per_s=round(storm_rate / nodes, 1),
        drain_window_s=round(drain_window, 1),
        limited_by=limited_by,
        assumptions=assumptions,
    )


@dataclass(frozen=True, slots=True)
class RoomsCheck:
    predicted_cores: float
    measured_cores: float
    error: float  # (predicted - measured) / measured

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_rooms(costs: Costs, rooms: dict[str, Any]) -> RoomsCheck:
    """Predict the server CPU of a bench ``rooms`` run (one node) from ``costs`` and
    compare it with the CPU that run measured."""
    connections = _number(rooms, "connections")
    # The bench publishes at a set rate (its `rate`) during the measured window.
    rate = _number(rooms, "rate")
    fanout = _number(rooms, "deliveries") / _number(rooms, "publications")
    target = Target(
        connections=int(connections),
        channels=0,
        publications_per_s=rate,
        fanout=fanout,
        storm_clients=0,
        storm_seconds=0,
    )
    predicted = steady_cores(costs, target, nodes=1)
    measured = _number(rooms, "server_cpu_percent") / 100
    return RoomsCheck(
        predicted_cores=round(predicted, 4),
        measured_cores=round(measured, 4),
        error=round((predicted - measured) / measured, 4),
    )


def rooms_run(bench: Any) -> dict[str, Any]:
    """The Tether ``rooms`` run of a bench JSON, or a ``tether-bench run rooms --json``
    report as it is."""
    if isinstance(bench, dict) and bench.get("scenario") == "rooms":
        return bench
    if not isinstance(bench, dict) or not isinstance(bench.get("results"), list):
        raise CapacityError("not a bench JSON or a rooms report")
    return _row(bench["results"], "rooms", "Tether")
