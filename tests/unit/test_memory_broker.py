"""The embedded broker and presence store keep the Broker/PresenceStore contract."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from tether.brokers.base import Broker, PresenceStore
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.testing.broker_contract import BrokerContract, Failover, RecordingHandler, restarted
from tether.testing.clock import FakeClock


class TestMemoryBroker(BrokerContract):
    async def create_broker(self, clock: FakeClock, meta_ttl: float) -> Broker:
        return MemoryBroker(meta_ttl=meta_ttl, clock=clock)

    async def create_presence_store(self) -> PresenceStore:
        return MemoryPresenceStore()

    def failover(self, handler: RecordingHandler) -> AbstractAsyncContextManager[Failover]:
        # The memory broker loses acknowledged writes only with its process: the fence
        # is the random epoch every stream of a new process draws.
        return restarted(MemoryBroker, handler)
