"""Blue/green rebuild of the read models (design.md §6), and the start-up decision that forces one.

A rebuild records its target generation T (a number never handed out before) in ``{prefix}:rebuild``,
builds T from the start of ``$all`` with its own runner while the active generation G keeps serving,
switches ``active`` to T with a compare-and-set that also requires T to have applied the head it was
measured against, stops G's runner, deletes G and clears the record. Progress (events applied, events/s,
ETA against the head) goes to a callback and to any number of async iterators, for the CLI's progress bar
and the admin API.

Active/standby: the process holding the projector lease runs the rebuild, and every write that matters
(the batches, the switch, the record) is fenced by that lease. When the owner dies mid-rebuild, the
record stays and the next holder **resumes** it (``resume=True``): T's stored position is exact (each
batch moved it by compare-and-set with its updates), so T is followed on from there, not rebuilt from
the start. Only a T that holds views but no position (Redis lost data) is abandoned and a fresh rebuild
started. Readers never see a half-switched state: ``active`` is one key, moved once, to a generation that
has caught up.
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
from projections.lease import Lease, LeaseLost
from projections.metrics import ProjectionMetrics
from projections.redis_store import ReadModelError, RedisViewStore
from projections.runner import Runner, RunnerSettings, wait_for_position
from projections.updates import Projector

__all__ = [
    "Rebuild",
    "RebuildError",
    "RebuildInProgress",
    "RebuildProgress",
    "ensure_active",
    "finish_switched",
    "needs_rebuild",
    "start_serving",
]

log = structlog.get_logger(__name__)


class RebuildError(Exception):
    """The rebuild could not switch (the active generation changed under it) or its runner failed."""


class RebuildInProgress(ReadModelError):
    """A rebuild was requested while one is running (the admin API answers 409)."""


async def ensure_active(views: RedisViewStore) -> int:
    """The serving generation; on a first start, a fresh one (above any leftovers, cleared first)."""
    active = await views.active_generation()
    if active is not None:
        return active
    generation = await views.allocate_generation(max(await views.generations(), default=0))
    await views.delete_generation(generation)
    result = await views.set_active(None, generation)
    if result.switched:
        return generation
    if result.active is None:
        raise RebuildError("could not set the active generation")
    return result.active  # another process initialised it first


async def finish_switched(views: RedisViewStore, target: int) -> None:
    """The end of a rebuild whose target serves: delete the older generations, clear the record. Safe to
    repeat, and by a late process: retired generation numbers are never used again."""
    for generation in await views.generations():
        if generation < target:
            await views.delete_generation(generation)
    await views.finish_rebuild(target)


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
        lease: Lease | None = None,
        resume: bool = False,
    ) -> None:
        """``lease``: the projector lease every write is fenced by (``None``: a lone process, each runner
        with a lease of its own). ``resume``: carry on with a recorded rebuild instead of refusing with
        :class:`RebuildInProgress` (what a new owner does)."""
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
        self._lease = lease
        self._fence = lease.fence if lease is not None else None
        self._resume = resume
        #: the target's position when this process started on it (a resumed rebuild is not at zero)
        self._from: Position | None = None
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
        target = await self._begin(old)
        if target == old:
            # Switched already (its owner died before the clean-up): finish, serve it.
            await finish_switched(self._views, target)
            runner = self._current if self._current is not None else self._runner(target)
            runner.start()
            await self._report(runner, "done", await self._events.head_position())
            return runner
        runner = self._runner(target)
        self._from = await self._views.position(target)
        self._started = time.monotonic()
        task = runner.start()
        try:
            await self._build(runner, task)
            await self._switch(runner, task, old)
        except (asyncio.CancelledError, LeaseLost) as e:
            # This process stops or lost the lease: the record stays, the next owner resumes it.
            await _stop_quietly(runner)
            await self._report(runner, "failed", None, error=f"interrupted ({type(e).__name__}); resumable")
            raise
        except BaseException as e:
            await _stop_quietly(runner)
            await self._report(runner, "failed", None, error=str(e) or type(e).__name__)
            with contextlib.suppress(Exception):
                if await self._views.abandon_rebuild(target, fence=self._fence):
                    await self._views.delete_generation(target)
            raise
        log.info("read models switched", old=old, new=target)
        if self._current is not None:
            await self._current.stop()
        head = await self._events.head_position()
        await self._report(runner, "cleaning", head)
        # Every generation below `target` goes, the old one even when it had lost its position.
        if old is not None:
            await self._views.delete_generation(old)
        await finish_switched(self._views, target)
        await self._report(runner, "done", head)
        return runner

    async def _begin(self, old: int | None) -> int:
        """Record a new rebuild, or (``resume``) take over the recorded one; its target generation."""
        floor = max([old or 0, *await self._views.generations()])
        start = await self._views.begin_rebuild(floor, fence=self._fence)
        if start.lease_lost:
            raise LeaseLost("the projector lease is not held: another process is the active projector")
        assert start.generation is not None
        target = start.generation
        if start.started:
            # A fresh number; keys of it could only be orphans of a Redis that lost the counter.
            await self._views.delete_generation(target)
            return target
        if not self._resume:
            raise RebuildInProgress(f"a rebuild into generation {target} is already running")
        if (
            target != old
            and await self._views.position(target) is None
            and await self._views.has_views(target)
        ):
            # Views without a position cannot be followed on: start again, under a new number.
            log.warning("recorded rebuild cannot be resumed; starting a new one", generation=target)
            if await self._views.abandon_rebuild(target, fence=self._fence):
                await self._views.delete_generation(target)
            return await self._begin(old)
        if target != old:
            log.info(
                "resuming the recorded rebuild",
                generation=target,
                position=await self._views.position(target),
            )
            if self._metrics is not None:
                self._metrics.rebuilds_resumed.inc()
        return target

    def _runner(self, generation: int) -> Runner:
        return Runner(
            self._events,
            self._views,
            generation,
            self._projectors,
            filter=self._filter,
            settings=self._settings,
            metrics=self._metrics,
            lease=self._lease,
        )

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
            result = await self._views.set_active(
                old, runner.generation, min_position=head, fence=self._fence
            )
            if result.switched:
                return
            if result.lease_lost:
                raise LeaseLost("the projector lease was lost before the switch")
            if not result.not_caught_up:
                raise RebuildError(
                    f"active generation changed from {old} to {result.active} during the rebuild"
                )

    async def _report(self, runner: Runner, phase: Phase, head: Position | None, *, error: str = "") -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        position = runner.position
        rate = runner.events_applied / elapsed
        eta: float | None = None
        moved = (position.commit if position else 0) - (self._from.commit if self._from else 0)
        if head is not None and position is not None and moved > 0:
            # The position moved from where this process started, so moved/elapsed is the positions' rate.
            eta = max(0, head.commit - position.commit) / (moved / elapsed)
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


async def _stop_quietly(runner: Runner) -> None:
    """Stop a runner on the way out of a failed rebuild: the rebuild's own error is the one to raise."""
    with contextlib.suppress(Exception):
        await runner.stop()


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
    """What a lone projection process does at start-up (no projector lease; the projector service does the
    same under it): refuse an evicting Redis, make sure a generation is active, rebuild when its views
    cannot be trusted or resume a recorded rebuild, and return the serving runner (running)."""
    await views.check_eviction_policy()
    generation = await ensure_active(views)
    repair = await needs_rebuild(views)
    if repair or await views.rebuild_target() is not None:
        if repair:
            log.warning("active read models have views but no position; rebuilding", generation=generation)
        current = None
        if not repair:
            current = Runner(
                events, views, generation, projectors, filter=filter, settings=settings, metrics=metrics
            )
            current.start()
        rebuild = Rebuild(
            events,
            views,
            projectors,
            current=current,
            filter=filter,
            settings=settings,
            metrics=metrics,
            on_progress=on_progress,
            resume=True,
        )
        return await rebuild.run()
    runner = Runner(events, views, generation, projectors, filter=filter, settings=settings, metrics=metrics)
    runner.start()
    return runner
