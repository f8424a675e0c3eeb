"""Per-tick batching: the calls made during one event-loop iteration run as one batch.

A connect storm makes thousands of subscribes, and each of them reads a stream. Sent one
by one over redis-py, every read is its own command round (a pooled connection taken and
given back, the command packed, written, read under its own timeout): that, not Redis,
was most of what a connect over Redis cost the server (docs/benchmarks.md, "Where the
time goes"). :class:`TickBatcher` collects the calls made while the loop runs one
iteration and hands them to one ``run`` (for Redis: one pipeline, one write, one pooled
connection), then gives each caller its own result.

What a caller can rely on:

* its result is the one ``run`` returned at its index: batching changes how many round
  trips there are, never what a call returns;
* an error of its own item (``run`` returns the exception in its place) reaches it and
  no other caller; an error of the whole run (``run`` raises: the connection broke)
  reaches every caller of that batch, each raising it;
* a caller that is cancelled is only dropped: the others' results are unaffected, and
  an item not yet run is left out of its batch;
* a batch starts in the iteration after its first call, unless ``max_in_flight``
  batches are still running (by default one): then it starts when one of them ends,
  with every call made meanwhile. That is what makes batches big under load: while one
  batch is out, the next one fills (as a group commit does): in a connect storm over
  Redis (``tether-bench run connect-cost``) a batch carried ~20 stream reads instead of
  ~2, and ~47 subscriber commands instead of ~5, at the price of at most one round trip
  of waiting; when the loop is idle a call goes out at once, alone.

The batcher owns the tasks that run its batches: :meth:`close` cancels them, and the
callers still waiting get :class:`~tether.errors.BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tether.errors import BrokerUnavailable

C = TypeVar("C")
R = TypeVar("R")

Run = Callable[[list[C]], Awaitable[Sequence[R | BaseException]]]
"""Runs a batch: one result per item, in order; an item's own failure is its exception
in its place, a failure of the whole batch is raised."""


class TickBatcher(Generic[C, R]):
    """Coalesces the :meth:`call`\\ s of one loop iteration into one ``run`` (see the
    module docstring). ``name`` names the batch tasks; at most ``max_in_flight`` (>= 1)
    run at once."""

    def __init__(self, run: Run[C, R], name: str, *, max_in_flight: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._run = run
        self._name = name
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[C, asyncio.Future[R]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        """Batches run so far (each one ``run``)."""
        self.calls = 0
        """Calls made so far."""

    async def call(self, item: C) -> R:
        """``item``'s result from the batch it joins. Raises what ``run`` raised for the
        batch or returned for the item; BrokerUnavailable once closed."""
        if self._closed:
            raise BrokerUnavailable(f"{self._name}: closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        self.calls += 1
        if not self._scheduled:
            # call_soon: the flush comes after every callback already due this
            # iteration, so every call they make joins the same batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        if len(self._tasks) >= self._max_in_flight and not self._closed:
            return  # the batch that ends next flushes what waits
        batch = [(item, fut) for item, fut in self._pending if not fut.done()]
        self._pending = []
        if not batch or self._closed:
            for _, fut in batch:
                fut.set_exception(BrokerUnavailable(f"{self._name}: closed"))
            return
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._execute(batch), name=self._name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _execute(self, batch: list[tuple[C, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(BrokerUnavailable(f"{self._name}: closed"))
            raise
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: not ours to keep
            return
        if len(results) != len(batch):  # a bug in run: no caller may get another's result
            error = RuntimeError(f"{self._name}: {len(results)} results for {len(batch)} calls")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue  # its caller was cancelled
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        """Cancel the batches in flight and refuse new calls; every caller still waiting
        gets BrokerUnavailable."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise  # close itself was cancelled
