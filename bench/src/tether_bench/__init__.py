"""``tether-bench run``: a load generator that simulates a fleet of devices.

One process opens thousands of WebSocket connections with a lean client of its own
(:mod:`.wsclient`), subscribes them through a protocol driver (:mod:`.drivers`: Tether's
Centrifugo protocol, Socket.IO, or the plain JSON protocol of the comparison peers),
publishes through the target's API (:mod:`.publisher`), and reports deliveries per second,
publish-to-delivery latency, losses, duplicates and order violations, and the server's CPU
and memory (:mod:`.scenarios`). The resilience scenarios (:mod:`.resilience`: slow consumers,
typing storm, reconnect storm, publish burst) add the server's own counters from its
``/metrics``.

Hand-written client, not a library, because the bar is measured: one process must absorb
more than 2M deliveries per second on one core, which leaves well under a microsecond per
delivery. The client therefore never decodes JSON on the hot path: it counts deliveries
with one ``bytes.count`` per read on every connection, and checks offsets, ordering and
latency (frame by frame, with one regular-expression scan per read) on a declared sample
of connections. Setup traffic (connect, subscribe replies) is decoded normally.
"""

from tether_bench.scenarios import SCENARIOS, BenchOptions, run_bench

__all__ = ["SCENARIOS", "BenchOptions", "run_bench"]
