"""Regression: a projection task cancelled while it cancels a child of its own must end.

A ``suppress(CancelledError)`` around ``await child`` swallowed the outer cancellation too: a runner
stopped while it was closing its subscription carried on into waiting for the lease, and the projector
standing down (after a pause past its lease) waited for it until the process was stopped."""

from __future__ import annotations

import asyncio

import pytest

from projections.runner import _cancel as cancel_in_runner
from projections.service import _cancel as cancel_in_service


@pytest.mark.parametrize("cancel", [cancel_in_runner, cancel_in_service])
async def test_a_cancellation_of_the_caller_is_not_swallowed(cancel: object) -> None:
    running, stopping, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            running.set()
            await asyncio.Event().wait()
        finally:
            stopping.set()
            await release.wait()  # the caller is cancelled meanwhile

    async def parent(child: asyncio.Task[None]) -> None:
        await cancel(child)  # type: ignore[operator]
        await asyncio.Event().wait()  # where a swallowed cancellation used to leave it

    child = asyncio.create_task(slow_to_stop())
    await running.wait()
    task = asyncio.create_task(parent(child))
    await stopping.wait()
    task.cancel()
    release.set()
    await asyncio.wait_for(asyncio.wait([task]), 2)
    assert task.cancelled()
