"""Brokers and presence stores: the contracts and the engines that ship without extras.

The contracts are :class:`Broker`, :class:`PresenceStore` and :class:`BrokerEventHandler`
(their docstrings state what every implementation guarantees; the suite that checks it is
:class:`tether.testing.BrokerContract`), and the values they exchange. The engines here
need no extra package; the Redis ones need ``tether[redis]`` and are imported from their
modules: :mod:`tether.brokers.redis` (``RedisBroker``, ``RedisPresenceStore``) and
:mod:`tether.brokers.redis_cluster` (``RedisClusterBroker``, ``RedisClusterPresenceStore``).
See ``docs/reference/extension-points.md``.
"""

from tether.brokers.base import (
    BatchPublisher,
    Broker,
    BrokerEventHandler,
    HistoryPage,
    PresenceStore,
    PublishItem,
    PublishOptions,
    PublishResult,
    StreamPosition,
    publish_all,
    select_history,
)
from tether.brokers.guarded import GuardedBroker
from tether.brokers.memory import MemoryBroker, MemoryPresenceStore
from tether.brokers.sharded import HashRing, ShardedBroker, ShardedPresenceStore

__all__ = [
    "BatchPublisher",
    "Broker",
    "BrokerEventHandler",
    "GuardedBroker",
    "HashRing",
    "HistoryPage",
    "MemoryBroker",
    "MemoryPresenceStore",
    "PresenceStore",
    "PublishItem",
    "PublishOptions",
    "PublishResult",
    "ShardedBroker",
    "ShardedPresenceStore",
    "StreamPosition",
    "publish_all",
    "select_history",
]
