from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tether.server import Server
from tether.testing.servers import running_server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A Tether node on ephemeral loopback ports with the test namespaces."""
    async with running_server() as srv:
        yield srv
