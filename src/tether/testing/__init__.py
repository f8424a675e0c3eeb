"""Tether's test kit: contract suites, fault injection and in-memory connections.

For anyone who implements an extension point or tests an application against Tether:

* :class:`BrokerContract`: the Broker/PresenceStore contract as a pytest suite to
  subclass for your own engine (``RecordingHandler`` is the event handler it records
  with).
* :class:`FaultyBroker` (hold or fail broker calls on demand), :class:`FakeClock`,
  :class:`FakeLoop` (callbacks and timers run only when the test says),
  :class:`TcpProxy` (cut or stall a real TCP link).
* :data:`RECOVERY_SCENARIOS`: the recovery rules as one table of :class:`RecoveryScenario`
  rows, which ``BrokerContract`` runs through the cache and straight from the broker
  (:class:`BrokerStream`).
* :func:`local_node` and :class:`LocalSession`: a node and a client connection without
  sockets, over a :class:`MemoryTransport`, speaking :data:`JSON_LINES`.
* :func:`running_server`, :func:`make_config` and the test secrets: a real server on
  ephemeral ports; :class:`WSClient` speaks to it over a real WebSocket.

The names load on first use, so ``import tether.testing.wsclient`` does not need pytest;
the contract suites do (``pytest`` and ``pytest-asyncio`` with ``asyncio_mode = "auto"``;
``pip install 'tether[testing]'`` brings both).
See ``docs/reference/extension-points.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.testing.broker_contract import BrokerContract, RecordingHandler
    from tether.testing.brokers import FaultyBroker
    from tether.testing.clock import FakeClock
    from tether.testing.faults import TcpProxy
    from tether.testing.loop import FakeLoop
    from tether.testing.recovery import (
        RECOVERY_PATHS,
        RECOVERY_SCENARIOS,
        BrokerStream,
        RecoveryScenario,
    )
    from tether.testing.servers import (
        OPEN,
        TEST_API_KEY,
        TEST_SECRET,
        make_config,
        running_server,
    )
    from tether.testing.transports import (
        JSON_LINES,
        LocalSession,
        MemoryTransport,
        line_frame,
        local_node,
    )
    from tether.testing.wsclient import Closed, HandshakeRejected, WSClient

# Each public name and the module that defines it.
_HOMES = {
    "BrokerContract": "broker_contract",
    "RecordingHandler": "broker_contract",
    "FaultyBroker": "brokers",
    "FakeClock": "clock",
    "TcpProxy": "faults",
    "RECOVERY_PATHS": "recovery",
    "RECOVERY_SCENARIOS": "recovery",
    "BrokerStream": "recovery",
    "RecoveryScenario": "recovery",
    "FakeLoop": "loop",
    "OPEN": "servers",
    "TEST_API_KEY": "servers",
    "TEST_SECRET": "servers",
    "make_config": "servers",
    "running_server": "servers",
    "JSON_LINES": "transports",
    "LocalSession": "transports",
    "MemoryTransport": "transports",
    "line_frame": "transports",
    "local_node": "transports",
    "Closed": "wsclient",
    "HandshakeRejected": "wsclient",
    "WSClient": "wsclient",
}

__all__ = [
    "JSON_LINES",
    "OPEN",
    "RECOVERY_PATHS",
    "RECOVERY_SCENARIOS",
    "TEST_API_KEY",
    "TEST_SECRET",
    "BrokerContract",
    "BrokerStream",
    "Closed",
    "FakeClock",
    "FakeLoop",
    "FaultyBroker",
    "HandshakeRejected",
    "LocalSession",
    "MemoryTransport",
    "RecordingHandler",
    "RecoveryScenario",
    "TcpProxy",
    "WSClient",
    "line_frame",
    "local_node",
    "make_config",
    "running_server",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tether.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tether.testing.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
