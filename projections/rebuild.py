"""Blue/green rebuild of the read models (design.md §6), and the start-up decision that forces one.

A rebuild builds generation G+1 from the start of ``$all`` with its own runner while G keeps serving,
switches ``active`` to G+1 with a compare-and-set that also requires G+1 to have applied the head it was
measured against, stops G's runner, then deletes G. Progress (events applied, events/s, ETA against the
head) goes to a callback and to any number of async iterators, for the CLI's progress bar and the admin
API. In v1 one projector process owns both generations, so there is no lease hand-off between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import structlog

from orchestrator.app.ports import RebuildPhase as Phase
from orchestrator.app.ports import RebuildProgress
from orchestrator.eventstore import EventFilter, EventStore, Position
from projections.metrics import ProjectionMetrics
from projections.redis_store import RedisViewStore
from projections.runner import Runner, RunnerSettings, wait_for_position
from projections.updates import Projector

__all__ = [
    "Rebuild",
    "RebuildError",
    "RebuildProgress",
    "ensure_active",
    "needs_rebuild",
    "start_serving",
]

log = structlog.get_logger(__name__)


class RebuildError(Exception):
    """The rebuild could not switch (the active generation changed under it) or its runner failed."""


async def ensure_active(views: RedisViewStore) -> int:
    """The serving generation; on a first start, a fresh one (above any leftovers, cleared first)."""
    active = await views.active_generation()
    if active is not None:
        return active
    generation = max(await views.generations(), default=0) + 1
    await views.delete_generation(generation)
    result = await views.set_active(None, generation)
    if result.switched:
        return generation
    if result.active is None:
        raise RebuildError("could not set the active generation")
    return result.active  # another process initialised it first


async def needs_rebuild(views: RedisViewStore) -> bool:
    """True when the active generation holds views but no position: its keys cannot be trusted (a lost
    AOF tail, a half-deleted generation, a flushed position) and following $all from the start would
    apply everything on top of them."""
    active = await views.active_generation()
    if active is None or await views.position(active) is not None:
        return False
    return await views.has_views(active)


class Rebuild:
    """One rebuild. ``await run()`` returns the new generation's runner, already running and serving."""

    def __init__(
        self,
        events: EventStore,
        views: RedisViewStore,
        projectors: Sequence[Projector],
        *,
        current: Runner | None = None,
        filter: EventFilter | None = None,
        settings: RunnerSettings | None = None,
        metrics: ProjectionMetrics | None = None,
        on_progress: Callable[[RebuildProgress], None] | None = None,
        progress_interval: float = 0.5,
        switch_timeout: float = 60.0,
    ) -> None:
        self._events = events
        self._views = views
        self._projectors = tuple(projectors)
        self._current = current
        self._filter = filter
        self._settings = settings
        self._metrics = metrics
        self._on_progress = on_progress
        self._interval = progress_interval
        self._switch_timeout = switch_timeout
        self._listeners: list[asyncio.Queue[RebuildProgress]] = []
        self._progress: RebuildProgress | None = None
        self._started = time.monotonic()

    @property
    def progress(self) -> RebuildProgress | None:
        """The latest snapshot (for an admin API that polls)."""
        return self._progress

    async def updates(self) -> AsyncIterator[RebuildProgress]:
        """Every snapshot from now on, ending with the ``done`` or ``failed`` one."""
        queue: asyncio.Queue[RebuildProgress] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while True:
                snapshot = await queue.get()
                yield snapshot
                if snapshot.phase in ("done", "failed"):
                    return
        finally:
            self._listeners.remove(queue)

    async def run(self) -> Runner:
        old = await self._views.active_generation()
        target = max([old or 0, *await self._views.generations()]) + 1
        # A rebuild that died before switching leaves keys behind, perhaps without a position.
        await self._views.delete_generation(target)
        runner = Runner(
            self._events,
            self._views,
            target,
            self._projectors,
            filter=self._filter,
            settings=self._settings,
            metrics=self._metrics,
        )
        self._started = time.monotonic()
        task = runner.start()
        try:
            await self._build(runner, task)
            await self._switch(runner, task, old)
        except BaseException as e:
            await runner.stop()
            await self._report(runner, "failed", None, error=str(e) or type(e).__name__)
            with contextlib.suppress(Exception):
                await self._views.delete_generation(target)
            raise
        log.info("read models switched", old=old, new=target)
        if self._current is not None:
            await self._current.stop()
        head = await self._events.head_position()
        await self._report(runner, "cleaning", head)
        # Older leftovers go too; anything above `target` would be a later rebuild's, so it stays.
        stale = {g for g in await self._views.generations() if g < target}
        if old is not None:
            stale.add(old)  # even when it had lost its position
        for generation in sorted(stale):
            await self._views.delete_generation(generation)
        await self._report(runner, "done", head)
        return runner

    async def _build(self, runner: Runner, task: asyncio.Task[None]) -> None:
        while True:
            head = await self._events.head_position()
            await self._report(runner, "building", head)
            if await runner.wait_caught_up(self._interval):
                return
            _raise_if_failed(task)

    async def _switch(self, runner: Runner, task: asyncio.Task[None], old: int | None) -> None:
        deadline = time.monotonic() + self._switch_timeout
        while True:
            _raise_if_failed(task)
            head = await self._events.head_position()
            await self._report(runner, "switching", head)
            if head is not None:
                reached, _ = await wait_for_position(
                    self._views, head, self._interval, generation=runner.generation
                )
                if not reached:
                    if time.monotonic() > deadline:
                        raise RebuildError(f"generation {runner.generation} did not reach {head} in time")
                    continue
            result = await self._views.set_active(old, runner.generation, min_position=head)
            if result.switched:
                return
            if not result.not_caught_up:
                raise RebuildError(
                    f"active generation changed from {old} to {result.active} during the rebuild"
                )

    async def _report(self, runner: Runner, phase: Phase, head: Position | None, *, error: str = "") -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        position = runner.position
        rate = runner.events_applied / elapsed
        eta: float | None = None
        if head is not None and position is not None and position.commit > 0:
            # The position moved from the start of $all, so position/elapsed is the positions' rate.
            eta = max(0, head.commit - position.commit) / (position.commit / elapsed)
        snapshot = RebuildProgress(
            runner.generation, phase, runner.events_applied, position, head, elapsed, rate, eta, error
        )
        if phase in ("done", "cleaning") and head is not None:
            snapshot = replace(snapshot, eta_seconds=0.0)
        self._progress = snapshot
        if self._on_progress is not None:
            self._on_progress(snapshot)
        for queue in self._listeners:
            queue.put_nowait(snapshot)


def _raise_if_failed(task: asyncio.Task[None]) -> None:
    if task.done():
        error = task.exception() if not task.cancelled() else None
        raise RebuildError(f"the rebuild runner stopped: {error!r}") from error


async def start_serving(
    events: EventStore,
    views: RedisViewStore,
    projectors: Sequence[Projector],
    *,
    filter: EventFilter | None = None,
    settings: RunnerSettings | None = None,
    metrics: ProjectionMetrics | None = None,
    on_progress: Callable[[RebuildProgress], None] | None = None,
) -> Runner:
    """What the projector role does at start-up: refuse an evicting Redis, make sure a generation is
    active, rebuild when its views cannot be trusted, and return the serving runner (running)."""
    await views.check_eviction_policy()
    generation = await ensure_active(views)
    if await needs_rebuild(views):
        log.warning("active read models have views but no position; rebuilding", generation=generation)
        rebuild = Rebuild(
            events,
            views,
            projectors,
            filter=filter,
            settings=settings,
            metrics=metrics,
            on_progress=on_progress,
        )
        return await rebuild.run()
    runner = Runner(events, views, generation, projectors, filter=filter, settings=settings, metrics=metrics)
    runner.start()
    return runner
