"""/metrics shows the broker's circuit breakers and retry budget.

An operator needs to see an outage being contained: the breaker that opened, the calls
it refused, and how many retries the budget allowed or denied
(docs/reference/metrics.md, docs/explanation/resilience.md section 6).
"""

from __future__ import annotations

import pytest
from prometheus_client.core import Metric

from tether.brokers.guarded import GuardedBroker
from tether.brokers.sharded import ShardedBroker
from tether.core.node import Node
from tether.errors import BrokerUnavailable
from tether.resilience import CircuitBreaker, RetryBudget
from tether.testing.brokers import FaultyBroker
from tether.testing.clock import FakeClock
from tether.testing.servers import make_config
from tether.testing.transports import local_node
from tether.transports.http.metrics import NodeCollector


def _samples(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families: list[Metric] = list(NodeCollector(node).collect())
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
        if "breaker" in s.name or "retries" in s.name
    }


def _guard(name: str, clock: FakeClock, budget: RetryBudget) -> GuardedBroker:
    breaker = CircuitBreaker(name, failure_threshold=2, reset_timeout=5, clock=clock)
    return GuardedBroker(FaultyBroker(), breaker=breaker, budget=budget)


async def test_an_open_breaker_its_refusals_and_the_retries_are_on_metrics() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    clock.advance(10)  # the budget earns tokens over time: it has some by the first call
    broker = _guard("broker", clock, budget)
    async with local_node(make_config(), broker=broker) as node:
        assert isinstance(broker.inner, FaultyBroker)
        broker.inner.fail("history", times=None)
        # Three attempts: two fail and open the breaker, which refuses the third.
        with pytest.raises(BrokerUnavailable):
            await node.history("chat:room")
        samples = _samples(node)

    def state(name: str) -> float:
        return samples["tether_circuit_breaker_state", (("breaker", "broker"), ("state", name))]

    assert (state("closed"), state("open"), state("half_open")) == (0, 1, 0)
    assert samples["tether_circuit_breaker_rejected_total", (("breaker", "broker"),)] == 1
    assert samples["tether_broker_retries_total", ()] == 2
    assert samples["tether_broker_retries_denied_total", ()] == 0


async def test_each_shard_has_its_breaker_and_the_shared_budget_counts_once() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    clock.advance(10)
    shards = {name: _guard(f"broker {name}", clock, budget) for name in ("a:1", "b:2")}
    async with local_node(make_config(), broker=ShardedBroker(shards)) as node:
        budget.record_call()
        assert budget.try_spend()
        samples = _samples(node)

    for name in ("broker a:1", "broker b:2"):
        key = (("breaker", name), ("state", "closed"))
        assert samples["tether_circuit_breaker_state", key] == 1
    assert samples["tether_broker_retries_total", ()] == 1


async def test_the_memory_broker_has_no_breaker_and_makes_no_retries() -> None:
    async with local_node(make_config()) as node:
        samples = _samples(node)

    assert samples == {
        ("tether_broker_retries_total", ()): 0,
        ("tether_broker_retries_denied_total", ()): 0,
    }
