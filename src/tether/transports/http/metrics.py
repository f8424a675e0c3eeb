"""Prometheus metrics at ``GET /metrics``.

Read from the node's own counters at scrape time, so the fan-out path pays nothing: the
hub counts per publication, the queues count drops and slow disconnects, admission counts
refusals. Made for autoscalers and alerts: connections and saturation (queued bytes,
paused sockets, shed publishes, refused connects), broker health and recovery load.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from tether import saturation
from tether.brokers.base import Broker
from tether.brokers.guarded import BROKER_CALL_DOC, GuardedBroker
from tether.brokers.sharded import ShardedBroker
from tether.core.node import Node
from tether.proxy.events import Notifier
from tether.proxy.http import LATENCY_BUCKETS, REJECTIONS, Endpoint
from tether.resilience import BreakerState


def guarded_brokers(broker: Broker) -> list[GuardedBroker]:
    """The circuit-breaker-guarded brokers behind ``broker``: itself, or each shard of a
    sharded broker (one breaker per shard, see ``tether.server``)."""
    if isinstance(broker, GuardedBroker):
        return [broker]
    if isinstance(broker, ShardedBroker):
        return [guard for shard in broker.shards.values() for guard in guarded_brokers(shard)]
    return []


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.stats()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"tether_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"tether_{name}", doc, value=value)

        yield gauge("connections", "Connected clients (after connect).", stats["num_clients"])
        yield gauge("users", "Distinct users connected.", stats["num_users"])
        yield gauge("channels", "Channels with local subscribers.", stats["num_channels"])
        yield gauge("subscriptions", "Subscriptions of connected clients.", stats["num_subs"])
        yield gauge(
            "ready", "1 while the node accepts clients and its broker delivers.", float(node.ready)
        )
        yield gauge("broker_healthy", "1 while the broker can deliver.", float(node.broker.healthy))
        yield gauge(
            "event_loop_lag_seconds",
            "How late the node's once-a-second housekeeping last woke up.",
            node.loop_lag,
        )
        queued = paused = 0
        for client in node.clients.values():
            queued += client.queued_bytes
            paused += client.paused
        yield gauge("outbound_queued_bytes", "Bytes waiting in client outbound queues.", queued)
        parts = saturation.of_node(node)
        yield gauge(
            "saturation",
            "0..1: the most loaded of event-loop lag, CPU, connections, connects and "
            "outbound queues (tether.saturation).",
            saturation.overall(parts),
        )
        part_family = GaugeMetricFamily(
            "tether_saturation_part",
            "0..1: each part of tether_saturation (the fraction of its limit in use).",
            labels=["part"],
        )
        for name, value in parts.items():
            part_family.add_metric([name], value)
        yield part_family
        yield gauge("paused_connections", "Connections whose socket buffer is full.", paused)
        hub = node.hub
        publications = CounterMetricFamily(
            "tether_publications", "Publications fanned out by this node, by lane.", labels=["lane"]
        )
        deliveries = CounterMetricFamily(
            "tether_deliveries", "Frames delivered to local subscribers, by lane.", labels=["lane"]
        )
        for lane in hub.lane_publications:
            publications.add_metric([lane], hub.lane_publications[lane])
            deliveries.add_metric([lane], hub.lane_deliveries[lane])
        yield publications
        yield deliveries
        ended = CounterMetricFamily(
            "tether_disconnects",
            "Connections ended, by the code the node sent ('client': ended by the client).",
            labels=["code"],
        )
        for code, count in sorted(node.registry.ended.items()):
            ended.add_metric([code], count)
        yield ended
        recoveries = CounterMetricFamily(
            "tether_recoveries", "Subscribes that asked to recover, by outcome.", labels=["outcome"]
        )
        for outcome, count in node.channels.recoveries.items():
            recoveries.add_metric([outcome], count)
        yield recoveries
        q = node.queue_limits.stats
        yield counter("slow_disconnects", "Clients closed with 3008 (slow).", q.slow_disconnects)
        yield counter(
            "standard_resubscribes",
            "Standard-lane subscriptions resubscribed (unsubscribe 2500) after their queued "
            "data was shed to keep a connection's critical lane.",
            q.standard_resubscribes,
        )
        yield counter(
            "standard_shed_bytes",
            "Bytes of standard-lane data dropped from full queues (recovered on resubscribe).",
            q.standard_shed_bytes,
        )
        yield counter(
            "ephemeral_dropped", "Ephemeral frames dropped under pressure.", q.ephemeral_dropped
        )
        yield counter(
            "ephemeral_coalesced",
            "Ephemeral frames replaced by a newer one.",
            q.ephemeral_coalesced,
        )
        shed = CounterMetricFamily(
            "tether_publishes_shed", "Publishes refused (lane full).", labels=["lane"]
        )
        for lane, count in node.lanes.shed.items():
            shed.add_metric([lane], count)
        yield shed
        yield counter(
            "connects_admitted",
            "WebSocket upgrades admitted by admission control.",
            node.admission.admitted,
        )
        yield counter(
            "connects_refused",
            "WebSocket upgrades refused by admission control.",
            node.admission.refused,
        )
        yield counter(
            "recovery_broker_reads",
            "Recovery stream reads that reached the broker.",
            node.recovery.broker_reads,
        )
        yield from _guard_metrics(guarded_brokers(node.broker))


def _guard_metrics(guards: list[GuardedBroker]) -> Iterator[Metric]:
    """The broker's circuit breakers (one per shard) and retry budget (shared)."""
    state = GaugeMetricFamily(
        "tether_circuit_breaker_state",
        "1 for the state each broker circuit breaker is in, 0 for the others.",
        labels=["breaker", "state"],
    )
    rejected = CounterMetricFamily(
        "tether_circuit_breaker_rejected",
        "Broker calls refused at once by an open (or probing) circuit breaker.",
        labels=["breaker"],
    )
    transitions = CounterMetricFamily(
        "tether_circuit_breaker_transitions",
        "Times each broker circuit breaker entered each state.",
        labels=["breaker", "state"],
    )
    latency: Metric | None = None  # one family, every guard's samples
    for guard in guards:
        breaker = guard.breaker
        for each in BreakerState:
            state.add_metric([breaker.name, each.value], float(breaker.state is each))
            transitions.add_metric([breaker.name, each.value], breaker.transitions[each])
        rejected.add_metric([breaker.name], breaker.rejected)
        for metric in guard.latency.collect():
            if latency is None:
                latency = metric
            else:
                latency.samples.extend(metric.samples)
    yield state
    yield rejected
    yield transitions
    # The family is there without a guard too (the memory broker), like the others.
    yield latency or HistogramMetricFamily("tether_broker_call_seconds", BROKER_CALL_DOC)
    budgets = list({id(guard.budget): guard.budget for guard in guards}.values())
    yield CounterMetricFamily(
        "tether_broker_retries",
        "Broker calls retried (the retry budget had a token).",
        value=sum(budget.spent for budget in budgets),
    )
    yield CounterMetricFamily(
        "tether_broker_retries_denied",
        "Broker call retries refused because the retry budget was empty.",
        value=sum(budget.denied for budget in budgets),
    )


class HookCollector(Collector):
    """Per hook of each proxy (labels ``proxy``, ``hook``), and per outbox (``outbox``):
    breaker state, in flight, latency, errors, rejections. Families are always present,
    empty when nothing is configured."""

    def __init__(self, endpoints: dict[tuple[str, str], Endpoint], notifier: Notifier | None):
        self.endpoints = endpoints
        self.notifier = notifier

    def collect(self) -> Iterator[Metric]:
        labels = ["proxy", "hook"]

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"tether_proxy_{name}", doc, labels=labels)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"tether_proxy_{name}", doc, labels=[*labels, *extra])

        breaker = GaugeMetricFamily(
            "tether_proxy_breaker_state",
            "1 for the state each hook's circuit breaker is in, 0 for the others.",
            labels=[*labels, "state"],
        )
        in_flight = gauge("in_flight", "Calls of a hook in flight.")
        requests = counter("requests", "HTTP requests a hook sent (retries too).")
        retries = counter("retries", "Retries of idempotent hooks.")
        errors = counter(
            "errors",
            "Failed hook calls by reason (timeout, connection, status, redirect, too_large, "
            "malformed).",
            ("reason",),
        )
        rejections = counter(
            "rejections",
            "Hook calls refused without a request (circuit_open, bulkhead_full).",
            ("reason",),
        )
        latency = HistogramMetricFamily(
            "tether_proxy_latency_seconds",
            "Duration of one HTTP request of a hook (answer read whole).",
            labels=labels,
        )
        for (proxy, hook), endpoint in sorted(self.endpoints.items()):
            values = [proxy, hook]
            stats = endpoint.stats
            for each in BreakerState:
                breaker.add_metric([*values, each.value], float(endpoint.breaker.state is each))
            in_flight.add_metric(values, endpoint.in_flight)
            requests.add_metric(values, stats.requests)
            retries.add_metric(values, stats.retries)
            for reason, count in stats.failures.items():
                target = rejections if reason in REJECTIONS else errors
                target.add_metric([*values, reason], count)
            bounds = (str(b) for b in LATENCY_BUCKETS)
            buckets = [*zip(bounds, stats.latency_counts, strict=True)]
            buckets.append(("+Inf", stats.latency_count))
            latency.add_metric(values, buckets, stats.latency_sum)
        yield from (breaker, in_flight, requests, retries, errors, rejections, latency)
        yield from self._outboxes()

    def _outboxes(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"tether_outbox_{name}", doc, labels=["outbox"])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"tether_outbox_{name}", doc, labels=["outbox"])

        buffered = gauge("buffered", "Events waiting in an outbox.")
        capacity = gauge("capacity", "Events an outbox holds at most (max_buffered).")
        full = gauge("full", "1 while an outbox drops new events.")
        breaker = GaugeMetricFamily(
            "tether_outbox_breaker_state",
            "1 for the state each outbox receiver's circuit breaker is in, 0 for the others.",
            labels=["outbox", "state"],
        )
        dropped = counter("dropped", "Events dropped because the outbox was full.")
        delivered = counter("delivered", "Events a receiver acknowledged.")
        failed = counter("failed_batches", "Batch POSTs that failed (the batch is sent again).")
        outboxes = self.notifier.outboxes() if self.notifier is not None else []
        for outbox in outboxes:
            name = [outbox.name]
            buffered.add_metric(name, outbox.store.buffered())
            capacity.add_metric(name, outbox.store.max_buffered)
            full.add_metric(name, float(outbox.stats.full))
            for each in BreakerState:
                state = outbox.endpoint.breaker.state
                breaker.add_metric([outbox.name, each.value], float(state is each))
            dropped.add_metric(name, outbox.dropped)
            delivered.add_metric(name, outbox.stats.delivered)
            failed.add_metric(name, outbox.stats.failed_batches)
        yield from (buffered, capacity, full, breaker, dropped, delivered, failed)


def add_routes(
    app: web.Application,
    node: Node,
    *,
    endpoints: dict[tuple[str, str], Endpoint] | None = None,
    notifier: Notifier | None = None,
) -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(NodeCollector(node))
    registry.register(HookCollector(endpoints or {}, notifier))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics)
