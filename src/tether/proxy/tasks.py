"""Stopping the outboxes' background tasks."""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("tether.outbox")


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended. A cancel that a library swallowed
    (turned into an error the task handles and retries after) is sent again, so a stop
    never hangs on it; after 10 s the task is logged and left."""
    for _ in range(50):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.2)
        if done:
            return
    log.error("task did not stop", task=task.get_name())
