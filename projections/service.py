"""The projector role: what the composition root starts and the admin API drives.

Active/standby: every projector process competes for the projector lease (``{prefix}:lease``, see
:mod:`projections.lease`); the one holding it is the active projector, the others stand by and take it
over within ``lease_ttl * 1.1`` of the holder's last renewal. On taking over, a process makes sure a
generation is active (rebuilding one whose views cannot be trusted), finishes or resumes the rebuild a dead
owner left recorded, and follows ``$all`` from the stored position of the active generation. All its
writes are fenced by the lease, and batches by the compare-and-set on positions, so an old owner that
wakes up after a pause writes nothing. Only the active projector exports the global gauges computed from
the read model, so a deployment does not count twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.eventstore import EventFilter, EventStore, EventStoreError, StoreClosed
from projections.lease import Lease, LeaseLost
from projections.metrics import ProjectionMetrics
from projections.projectors import SAGA_FILTER, saga_projectors
from projections.projectors.keys import tenants_key
from projections.queries import ReadModels
from projections.rebuild import (
    Rebuild,
    RebuildInProgress,
    RebuildProgress,
    ensure_active,
    finish_switched,
    needs_rebuild,
)
from projections.redis_store import ReadModelError, RedisViewStore, translated
from projections.runner import Runner, RunnerSettings
from projections.updates import Projector
from projections.views import SagaCounters

__all__ = ["NotActive", "ProjectorService", "RebuildInProgress", "SagaGauges", "start_projector"]

log = structlog.get_logger(__name__)


class NotActive(ReadModelError):
    """This process is a standby projector: the active one runs rebuilds."""


class SagaGauges(Collector):
    """The global saga gauges, from a snapshot of the per-tenant counters that ``refresh`` takes (a
    scrape is synchronous and must not wait on Redis)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, SagaCounters] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names appear with the first snapshot; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily("saga_instances", "Sagas started", labels=["tenant"])
        active = GaugeMetricFamily(
            "saga_instances_active", "Sagas running or compensating (not paused)", labels=["tenant"]
        )
        by_status = GaugeMetricFamily(
            "saga_instances_status",
            "Sagas by status (open statuses: now; terminal ones: ever, within the read model)",
            labels=["tenant", "status"],
        )
        compensations = CounterMetricFamily("saga_compensation", "Rollbacks started", labels=["tenant"])
        failures = CounterMetricFamily(
            "saga_failures",
            "Failures: rollbacks by cause, and dead-lettering (reason=dead_lettered)",
            labels=["tenant", "reason"],
        )
        for tenant, c in sorted(self.snapshot.items()):
            total.add_metric([tenant], c.total)
            active.add_metric([tenant], c.by_status.get("running", 0) + c.by_status.get("compensating", 0))
            for status, count in sorted(c.by_status.items()):
                by_status.add_metric([tenant, status], count)
            compensations.add_metric([tenant], c.compensations)
            for reason, count in sorted(c.failures_by_reason.items()):
                failures.add_metric([tenant, reason], count)
        yield from (total, active, by_status, compensations, failures)

    async def refresh(self, views: RedisViewStore, read_models: ReadModels) -> None:
        generation = await views.active_generation()
        if generation is None:
            return
        async with translated():
            tenants = await views.client.zrange(views.key(generation, tenants_key()), 0, -1)
        self.snapshot = {t: await read_models.counters(t) for t in tenants}


class ProjectorService:
    """One projector process: the projector lease (active or standby), the serving runner and the rebuild
    it runs while active, the gauges. ``start()`` before use, ``stop()`` at the end."""

    def __init__(
        self,
        store: EventStore,
        views: RedisViewStore,
        projectors: Sequence[Projector],
        *,
        metrics: ProjectionMetrics,
        gauges: SagaGauges,
        filter: EventFilter | None = None,
        settings: RunnerSettings | None = None,
        gauge_interval: float = 5.0,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self.views = views
        self._projectors = tuple(projectors)
        self._filter = filter
        self.read_models = ReadModels(views)
        self.metrics = metrics
        self.gauges = gauges
        self._settings = settings or RunnerSettings()
        self._gauge_interval = gauge_interval
        #: readable in the lease key by an operator: which host and process is the active projector
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = Lease(views, self.owner, self._settings.lease_ttl)
        #: the serving runner while this process is the active projector (None on a standby)
        self.runner: Runner | None = None
        self._rebuild: Rebuild | None = None
        self._rebuild_task: asyncio.Task[Runner] | None = None
        self._last_progress: RebuildProgress | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._leader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        #: a rebuild that repaired the views (no runner serves meanwhile) failed: retry after a backoff
        self._failed: BaseException | None = None
        self._stopped = False

    @property
    def lag_seconds(self) -> float | None:
        """The serving runner's lag at its last batch (None: not serving, or nothing applied yet)."""
        return self.runner.lag_seconds if self.runner is not None else None

    @property
    def active(self) -> bool:
        """Whether this process is the active projector (holds the lease and serves)."""
        return self.lease.held and self.runner is not None

    @property
    def progress(self) -> RebuildProgress | None:
        """The running rebuild's latest snapshot, else the last rebuild's final one (None: never)."""
        return self._rebuild.progress if self._rebuild is not None else self._last_progress

    @property
    def rebuilding(self) -> bool:
        return self._rebuild is not None

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Refuse an evicting Redis; when the lease is free, become the active projector before returning
        (repairing untrustworthy views first, as a lone projector always did); else stand by."""
        await self.views.check_eviction_policy()
        self.metrics.lease_held.set(0)
        if await self.lease.try_acquire():
            self._took_over(None)
            try:
                await self._take_over(repair_inline=True)
            except BaseException:
                await self._stand_down()
                with contextlib.suppress(ReadModelError):
                    await self.lease.release()
                raise
        else:
            log.info("projector standing by", owner=self.owner)
        self._leader = asyncio.create_task(self._lead(), name="projector-lease")
        self._refresher = asyncio.create_task(self._refresh_gauges(), name="saga-gauges")

    async def stop(self) -> None:
        """Stop the runners (a rebuild in progress stays recorded: the next owner resumes it), release
        the lease so a standby takes over at once, close the Redis client; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._refresher, self._leader):
            if task is not None:
                await _cancel(task)
        await self._stand_down()
        with contextlib.suppress(ReadModelError):
            await self.lease.release()  # only if it is ours (checked in Redis)
        await self.views.close()

    # --- active / standby ------------------------------------------------------------------------------
    async def _lead(self) -> None:
        """Stand by until the lease is ours, take over, serve until it is lost, stand by again."""
        backoff = self._settings.backoff
        while True:
            try:
                if not self.lease.held:
                    handover = await self.lease.acquire()
                    self._took_over(handover)
                if self.runner is None and self._rebuild_task is None:
                    await self._take_over(repair_inline=False)
                await self.lease.wait_lost()
                self.metrics.lease_held.set(0)
                failed, self._failed = self._failed, None
                if failed is None:
                    self.metrics.losses.inc()
                    log.warning("projector lease lost; standing by", owner=self.owner)
                    backoff = self._settings.backoff
                await self._stand_down()
                if failed is not None:
                    await asyncio.sleep(backoff)  # then take the lease (or stand by) and repair again
                    backoff = min(backoff * 2, self._settings.max_backoff)
            except (ReadModelError, EventStoreError) as e:
                if isinstance(e, StoreClosed):
                    raise
                log.warning("projector retrying", error=str(e))
                self.lease.lose()  # taken back (or over) at the next acquire, once things work again
                await self._stand_down()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.max_backoff)

    def _took_over(self, handover: float | None) -> None:
        self.metrics.takeovers.inc()
        self.metrics.lease_held.set(1)
        if handover is not None:
            self.metrics.handover_seconds.observe(handover)
        log.info("projector lease acquired: active", owner=self.owner, handover_s=handover)

    async def _take_over(self, *, repair_inline: bool) -> None:
        """What a new active projector does: make sure a generation is active, finish a switched rebuild
        or resume a recorded one (its owner died), repair untrustworthy views, serve the active one."""
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self.lease.keep(), name="projector-lease-keeper")
        try:
            active = await ensure_active(self.views)
            target = await self.views.rebuild_target()
            if target is not None and target == active:
                await finish_switched(self.views, target)
                target = None
            repair = await needs_rebuild(self.views)
            if not repair:
                self.runner = self._serving_runner(active)
                self.runner.start()
            if repair or target is not None:
                if repair:
                    log.warning(
                        "active read models have views but no position; rebuilding", generation=active
                    )
                task = self._start_rebuild(self._new_rebuild(None, resume=True))
                if repair and repair_inline:
                    await task
        except BaseException:
            await self._stand_down()
            raise

    async def _stand_down(self) -> None:
        """Stop working (the lease is lost, or the process stops): rebuild, runner, gauges."""
        began = time.monotonic()
        if self._keeper is not None:
            await _cancel(self._keeper)
            self._keeper = None
        task, self._rebuild_task = self._rebuild_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its outcome is the done callback's
        runner, self.runner = self.runner, None
        if runner is not None:
            try:
                await runner.stop()
            except Exception as e:  # it had failed (a projector bug): said here, standing down goes on
                log.error("projection runner had stopped", error=str(e) or type(e).__name__)
        self.gauges.snapshot = {}
        self.metrics.lease_held.set(0)
        log.info("projector stood down", owner=self.owner, took_s=round(time.monotonic() - began, 3))

    def _serving_runner(self, generation: int) -> Runner:
        runner = Runner(
            self._store,
            self.views,
            generation,
            self._projectors,
            filter=self._filter,
            settings=self._settings,
            owner=self.owner,
            lease=self.lease,
            metrics=self.metrics,
        )
        return runner

    # --- rebuilds --------------------------------------------------------------------------------------
    async def rebuild(self, on_progress: Callable[[RebuildProgress], None] | None = None) -> RebuildProgress:
        """Blue/green rebuild (:mod:`projections.rebuild`); returns the final progress once the new
        generation serves. One at a time (:class:`RebuildInProgress`), on the active projector only
        (:class:`NotActive`); if this process loses the lease meanwhile it raises :class:`LeaseLost`,
        and the new active projector resumes the rebuild."""
        if self._rebuild is not None:
            raise RebuildInProgress("a read-model rebuild is already running; follow its progress")
        if not self.active:
            raise NotActive("this projector is a standby: rebuilds run on the active projector")
        task = self._start_rebuild(self._new_rebuild(on_progress, resume=False))
        # The rebuild belongs to the service, not to the caller: a caller that goes away does not stop it.
        await asyncio.wait([task])
        if task.cancelled():
            raise LeaseLost(
                "this projector stopped or lost the lease; the active projector resumes the rebuild"
            )
        task.result()
        assert self._last_progress is not None  # run() reports "done" before it returns
        return self._last_progress

    def _new_rebuild(self, on_progress: Callable[[RebuildProgress], None] | None, *, resume: bool) -> Rebuild:
        return Rebuild(
            self._store,
            self.views,
            self._projectors,
            current=self.runner,
            filter=self._filter,
            settings=self._settings,
            metrics=self.metrics,
            on_progress=on_progress,
            lease=self.lease,
            resume=resume,
        )

    def _start_rebuild(self, rebuild: Rebuild) -> asyncio.Task[Runner]:
        self._rebuild = rebuild
        task = asyncio.create_task(rebuild.run(), name="projection-rebuild")
        self._rebuild_task = task

        def done(finished: asyncio.Task[Runner]) -> None:
            self._last_progress = rebuild.progress
            if self._rebuild is rebuild:
                self._rebuild = None
            if self._rebuild_task is finished:
                self._rebuild_task = None
            if finished.cancelled():
                return
            error = finished.exception()
            if error is None:
                self.runner = finished.result()  # the new generation's runner serves now
            else:
                log.error("read-model rebuild failed", error=str(error) or type(error).__name__)
                if self.runner is None and self.lease.held:
                    # It was repairing untrustworthy views and nothing serves: stand down, try again.
                    self._failed = error
                    self.lease.lose()

        task.add_done_callback(done)
        return task

    # --- gauges ----------------------------------------------------------------------------------------
    async def refresh_gauges(self) -> None:
        if self.active:
            await self.gauges.refresh(self.views, self.read_models)
        else:
            self.gauges.snapshot = {}  # a standby exports nothing: the active projector does

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except ReadModelError as e:
                log.warning("saga gauges not refreshed", error=str(e))
            await asyncio.sleep(self._gauge_interval)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end; a cancellation of the caller itself propagates."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("projector task failed", task=task.get_name(), error=str(error) or type(error).__name__)


async def start_projector(
    store: EventStore,
    redis_url: str,
    prefix: str,
    *,
    registry: CollectorRegistry,
    retention_days: float = 30,
    settings: RunnerSettings | None = None,
    gauge_interval: float = 5.0,
) -> ProjectorService:
    """Start the projector role (active, or standby when another process holds the projector lease);
    ``await service.stop()`` on shutdown. Raises
    :class:`~projections.redis_store.EvictionPolicyError` for a Redis that may evict keys."""
    if retention_days <= 0:
        raise ValueError("retention_days must be positive")
    retention = timedelta(days=retention_days)
    views = RedisViewStore.connect(redis_url, prefix)
    metrics = ProjectionMetrics(registry)
    gauges = SagaGauges()
    service = ProjectorService(
        store,
        views,
        saga_projectors(retention),
        metrics=metrics,
        gauges=gauges,
        filter=SAGA_FILTER,
        settings=settings,
        gauge_interval=gauge_interval,
    )
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    registry.register(gauges)
    return service
