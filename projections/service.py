"""The projector role: what the composition root starts and the admin API drives.

``start_projector`` refuses an evicting Redis, makes sure a generation is active (rebuilding one whose
views cannot be trusted), runs the saga projectors over ``$all`` and exports the global gauges computed
from the read model (only this role exports them, so a multi-node deployment does not count twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.eventstore import EventStore
from projections.metrics import ProjectionMetrics
from projections.projectors import SAGA_FILTER, saga_projectors
from projections.projectors.keys import tenants_key
from projections.queries import ReadModels
from projections.rebuild import Rebuild, RebuildProgress, start_serving
from projections.redis_store import ReadModelError, RedisViewStore, translated
from projections.runner import Runner, RunnerSettings
from projections.views import SagaCounters

__all__ = ["ProjectorService", "RebuildInProgress", "SagaGauges", "start_projector"]

log = structlog.get_logger(__name__)


class RebuildInProgress(ReadModelError):
    """A rebuild was requested while one is running (the admin API answers 409)."""


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
    """One projector process: the serving runner, the read models it keeps, rebuilds, the gauges."""

    def __init__(
        self,
        store: EventStore,
        views: RedisViewStore,
        runner: Runner,
        *,
        retention: timedelta,
        metrics: ProjectionMetrics,
        gauges: SagaGauges,
        settings: RunnerSettings | None = None,
        gauge_interval: float = 5.0,
    ) -> None:
        self._store = store
        self.views = views
        self.runner = runner
        self.read_models = ReadModels(views)
        self.metrics = metrics
        self.gauges = gauges
        self._retention = retention
        self._settings = settings
        self._rebuild: Rebuild | None = None
        self._last_progress: RebuildProgress | None = None
        self._stopped = False
        self._refresher = asyncio.create_task(self._refresh_gauges(gauge_interval), name="saga-gauges")

    @property
    def progress(self) -> RebuildProgress | None:
        """The running rebuild's latest snapshot, else the last rebuild's final one (None: never)."""
        return self._rebuild.progress if self._rebuild is not None else self._last_progress

    @property
    def rebuilding(self) -> bool:
        return self._rebuild is not None

    async def rebuild(self, on_progress: Callable[[RebuildProgress], None] | None = None) -> RebuildProgress:
        """Blue/green rebuild (:mod:`projections.rebuild`); returns the final progress once the new
        generation serves. One at a time: a second request raises :class:`RebuildInProgress`."""
        if self._rebuild is not None:
            raise RebuildInProgress("a read-model rebuild is already running; follow its progress")
        rebuild = Rebuild(
            self._store,
            self.views,
            saga_projectors(self._retention),
            current=self.runner,
            filter=SAGA_FILTER,
            settings=self._settings,
            metrics=self.metrics,
            on_progress=on_progress,
        )
        self._rebuild = rebuild
        try:
            self.runner = await rebuild.run()
        finally:
            self._last_progress = rebuild.progress
            self._rebuild = None
        assert self._last_progress is not None  # run() reports "done" before it returns
        return self._last_progress

    async def refresh_gauges(self) -> None:
        await self.gauges.refresh(self.views, self.read_models)

    async def _refresh_gauges(self, interval: float) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except ReadModelError as e:
                log.warning("saga gauges not refreshed", error=str(e))
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop the runner and the gauges and close the Redis client; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        await self.runner.stop()
        await self.views.close()


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
    """Start the projector role; ``await service.stop()`` on shutdown. Raises
    :class:`~projections.redis_store.EvictionPolicyError` for a Redis that may evict keys."""
    if retention_days <= 0:
        raise ValueError("retention_days must be positive")
    retention = timedelta(days=retention_days)
    views = RedisViewStore.connect(redis_url, prefix)
    try:
        metrics = ProjectionMetrics(registry)
        runner = await start_serving(
            store, views, saga_projectors(retention), filter=SAGA_FILTER, settings=settings, metrics=metrics
        )
    except BaseException:
        await views.close()
        raise
    gauges = SagaGauges()
    registry.register(gauges)
    return ProjectorService(
        store,
        views,
        runner,
        retention=retention,
        metrics=metrics,
        gauges=gauges,
        settings=settings,
        gauge_interval=gauge_interval,
    )
