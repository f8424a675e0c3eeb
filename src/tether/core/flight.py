"""One operation in flight that others may wait for (single flight), with no future made
until someone does.

The first subscriber of a channel makes the broker subscription, and the first recovery
of a channel reads its stream; a concurrent subscriber or recovery waits for that one
instead of doing it again. Usually nobody waits (a user's personal channel has one
subscriber), so the future, and the ``getpid`` system call asyncio makes to find the
running loop for it, is made only by the first waiter.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[T] | None = None

    async def wait(self) -> T:
        """The result :meth:`finish` gives (cancelling the waiter leaves the flight be)."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._future)

    def finish(self, result: T) -> None:
        """The operation ended with ``result``: every waiter gets it."""
        if self._future is not None:
            self._future.set_result(result)
