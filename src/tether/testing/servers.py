"""Start a real Tether node inside a test (real sockets, ephemeral ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from tether.config import Config, NamespaceConfig
from tether.server import Server

TEST_SECRET = "test-secret-" + "x" * 32
TEST_API_KEY = "test-api-key"

OPEN = NamespaceConfig(
    history_size=100,
    history_ttl=300,
    recover=True,
    presence=True,
    join_leave=True,
    allow_publish=True,
    allow_subscribe=True,
    allow_history=True,
)
"""A namespace where everything is allowed, with history and recovery."""


def make_config(**overrides: Any) -> Config:
    """A config for tests: loopback, ephemeral ports, fixed secrets, namespaces
    ``default`` (closed), ``chat`` (:data:`OPEN`), ``nohistory`` (open, no history),
    ``private`` (history, subscription token required), ``doc`` (:data:`OPEN` with
    fossil delta compression: ``allowed_delta_types``, ``delta_publish``) and ``patch``
    (delta allowed, but only for publications that ask for it: no ``delta_publish``)."""
    namespaces = {
        "default": NamespaceConfig(),
        "chat": OPEN,
        "nohistory": msgspec.structs.replace(OPEN, history_size=0, history_ttl=0, recover=False),
        "private": msgspec.structs.replace(OPEN, allow_subscribe=False),
        "doc": msgspec.structs.replace(OPEN, allowed_delta_types=("fossil",), delta_publish=True),
        "patch": msgspec.structs.replace(OPEN, allowed_delta_types=("fossil",)),
    }
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": 0,
        "token_secret": TEST_SECRET,
        "api_key": TEST_API_KEY,
        "namespaces": namespaces,
        "log_level": "warning",
    }
    base.update(overrides)
    return Config(**base)


@asynccontextmanager
async def running_server(config: Config | None = None) -> AsyncIterator[Server]:
    """A started :class:`Server`; stopped (clients closed with 3001) on exit."""
    server = Server(config or make_config())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
