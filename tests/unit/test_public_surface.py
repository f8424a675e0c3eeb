"""The curated public surfaces: what ``__all__`` promises imports, from where it lives.

httpx's style: a small public surface (``__init__`` with ``__all__``) over the modules
that define the names. An application imports from the package, not from its modules.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import tether.errors

PACKAGES = ["tether.brokers", "tether.errors", "tether.testing"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_of_all_imports_from_the_package(package: str) -> None:
    module = importlib.import_module(package)

    assert module.__all__
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        value = getattr(module, name)
        assert not name.startswith("_")
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("tether."), name


def test_the_brokers_surface_holds_the_contracts_and_the_engines_without_extras() -> None:
    import tether.brokers
    from tether.brokers import base, memory

    assert tether.brokers.Broker is base.Broker
    assert tether.brokers.PresenceStore is base.PresenceStore
    assert tether.brokers.MemoryBroker is memory.MemoryBroker
    assert "RedisBroker" not in tether.brokers.__all__  # needs tether[redis]


def test_the_test_kit_surface_names_the_contract_suite_and_the_fault_injection() -> None:
    from tether.testing import BrokerContract, FaultyBroker, LocalSession, local_node

    assert inspect.isclass(BrokerContract)
    assert inspect.isclass(FaultyBroker)
    assert inspect.isclass(LocalSession)
    assert callable(local_node)


def test_an_unknown_test_kit_name_is_an_attribute_error() -> None:
    import tether.testing

    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = tether.testing.no_such_thing


def test_the_websocket_test_client_imports_without_pytest() -> None:
    probe = (
        "import sys, tether.testing, tether.testing.wsclient, tether.brokers, tether.errors;"
        "sys.exit('pytest' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_the_errors_surface_is_the_whole_tree() -> None:
    assert set(tether.errors.__all__) >= {
        "TetherError",
        "ProtocolViolation",
        "WebSocketError",
        "HandshakeError",
        "ApiError",
        "LocalProtocolError",
    }
