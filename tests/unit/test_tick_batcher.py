"""TickBatcher: the calls of one loop iteration run as one batch, and every caller gets
exactly its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from tether.brokers.batching import TickBatcher
from tether.errors import BrokerUnavailable


class Recorder:
    """A ``run`` that records its batches; an item ``"bad:..."`` fails alone, and while
    ``gate`` is set a batch waits for it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.broken: BaseException | None = None

    async def run(self, items: list[str]) -> list[str | BaseException]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.broken is not None:
            raise self.broken
        return [ValueError(item) if item.startswith("bad:") else item.upper() for item in items]


async def test_calls_made_in_one_iteration_run_as_one_batch_and_each_gets_its_own_result() -> None:
    recorder = Recorder()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    results = await asyncio.gather(*(batcher.call(x) for x in ["a", "b", "c"]))
    assert results == ["A", "B", "C"]
    assert recorder.batches == [["a", "b", "c"]]


async def test_an_item_that_fails_fails_only_its_own_caller() -> None:
    recorder = Recorder()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    results = await asyncio.gather(
        batcher.call("a"), batcher.call("bad:b"), batcher.call("c"), return_exceptions=True
    )
    assert results[0] == "A"
    assert results[2] == "C"
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "bad:b"
    assert len(recorder.batches) == 1


async def test_a_batch_that_fails_as_a_whole_fails_every_caller_of_that_batch() -> None:
    recorder = Recorder()
    recorder.broken = ConnectionError("connection lost")
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    results = await asyncio.gather(batcher.call("a"), batcher.call("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    recorder.broken = None
    assert await batcher.call("c") == "C"  # the next batch is not affected


async def test_a_cancelled_caller_leaves_the_others_results_intact() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    first = asyncio.ensure_future(batcher.call("a"))
    second = asyncio.ensure_future(batcher.call("b"))
    await asyncio.sleep(0.01)
    first.cancel()
    recorder.gate.set()
    assert await second == "B"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_caller_cancelled_before_its_batch_starts_is_left_out_of_it() -> None:
    recorder = Recorder()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    gone = asyncio.ensure_future(batcher.call("gone"))
    kept = asyncio.ensure_future(batcher.call("kept"))
    await asyncio.sleep(0)  # both calls are queued, the batch not yet started
    gone.cancel()
    assert await kept == "KEPT"
    assert recorder.batches == [["kept"]]


async def test_calls_made_while_a_batch_is_out_go_together_in_the_next_one() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    first = asyncio.ensure_future(batcher.call("a"))
    await asyncio.sleep(0.01)  # "a" is out, waiting
    later = [asyncio.ensure_future(batcher.call(x)) for x in ["b", "c"]]
    await asyncio.sleep(0.01)
    assert recorder.batches == [["a"]]  # nothing else started while "a" is out
    recorder.gate.set()
    assert await first == "A"
    assert await asyncio.gather(*later) == ["B", "C"]
    assert recorder.batches == [["a"], ["b", "c"]]


async def test_with_more_batches_allowed_in_flight_a_new_batch_does_not_wait() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test", max_in_flight=2)
    first = asyncio.ensure_future(batcher.call("a"))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.call("b"))
    await asyncio.sleep(0.01)
    assert recorder.batches == [["a"], ["b"]]
    recorder.gate.set()
    assert await asyncio.gather(first, second) == ["A", "B"]


async def test_closing_fails_the_waiting_callers_as_unavailable_and_refuses_new_calls() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    batcher: TickBatcher[str, str] = TickBatcher(recorder.run, "test")
    out = asyncio.ensure_future(batcher.call("a"))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(batcher.call("b"))
    await asyncio.sleep(0.01)
    await batcher.close()
    with pytest.raises(BrokerUnavailable):
        await out
    with pytest.raises(BrokerUnavailable):
        await queued
    with pytest.raises(BrokerUnavailable):
        await batcher.call("c")


async def test_a_run_that_returns_the_wrong_number_of_results_gives_nobody_a_wrong_one() -> None:
    async def short(items: list[str]) -> list[str | BaseException]:
        return items[:-1]

    batcher: TickBatcher[str, str] = TickBatcher(short, "test")
    results = await asyncio.gather(batcher.call("a"), batcher.call("b"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
