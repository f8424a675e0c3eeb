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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from tether import saturation
from tether.core.node import Node


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
        yield counter(
            "publications", "Publications fanned out by this node.", node.hub.publications
        )
        yield counter(
            "deliveries", "Publication deliveries to local subscribers.", node.hub.deliveries
        )
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


def add_routes(app: web.Application, node: Node) -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(NodeCollector(node))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics)
