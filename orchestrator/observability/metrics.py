"""Prometheus metrics of the engine, on an injectable registry (tests and several engines in one
process each get their own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step_duration = Histogram(
            "saga_step_duration_seconds",
            "Duration of one step call attempt (action or compensation), by outcome",
            ["service", "phase", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.compensations = Counter(
            "saga_compensation_calls_total", "Compensation calls made, by outcome", ["outcome"], registry=r
        )
        self.append_conflicts = Counter(
            "saga_engine_append_conflicts_total",
            "Appends that lost their slot to another writer (the actor re-read and re-decided)",
            registry=r,
        )
        self.unknown_events = Counter(
            "saga_engine_unreadable_sagas_total",
            "Deliveries for sagas whose history this node cannot read (unknown type or schema)",
            registry=r,
        )
        self.timer_fire_lag = Histogram(
            "saga_timer_fire_lag_seconds",
            "From a timer's due time to the commit of the append that handled it",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "saga_engine_deliveries_total",
            "Deliveries (hints) taken from the persistent subscription",
            registry=r,
        )
        self.actors = Gauge("saga_engine_actors", "Saga actors active in this process", registry=r)
        self.calls_in_flight = Gauge(
            "saga_engine_calls_in_flight", "Step calls in flight in this process", registry=r
        )
        self.sagas_waiting_for_store = Gauge(
            "saga_engine_sagas_waiting_for_store",
            "Sagas holding observed outcomes the event store has not taken yet (while above 0 the engine"
            " takes no new deliveries)",
            registry=r,
        )
        self.timers_pending = Gauge(
            "saga_engine_timers_pending", "Pending timers in this process's timer index", registry=r
        )
        self.subscription_in_flight = Gauge(
            "saga_subscription_in_flight",
            "Deliveries of the persistent subscription group not yet acked (whole group)",
            ["group"],
            registry=r,
        )
        self.subscription_parked = Gauge(
            "saga_subscription_parked",
            "Parked messages of the persistent subscription group",
            ["group"],
            registry=r,
        )
        self.internal_errors = Counter(
            "saga_engine_internal_errors_total",
            "Exceptions in our own engine code while handling a saga (the saga is suspended)",
            registry=r,
        )


class WriterCounters(Protocol):
    """What the collector reads of the embedded writer's stats (no import of the store itself, so the
    engine and the API do not load the SQLite store for their metrics)."""

    @property
    def wal_bytes(self) -> int: ...
    @property
    def commits(self) -> int: ...
    @property
    def appends(self) -> int: ...
    @property
    def events(self) -> int: ...
    @property
    def wal_checkpoints(self) -> int: ...
    @property
    def after_commit_errors(self) -> int: ...
    @property
    def grouped_requests(self) -> int: ...


class WriterStatsSource(Protocol):
    @property
    def stats(self) -> WriterCounters: ...


class EmbeddedStoreCollector(Collector):
    """Exports the embedded store's writer counters (WAL size, commits, group sizes) at scrape time."""

    def __init__(self, store: WriterStatsSource) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats
        yield GaugeMetricFamily(
            "saga_eventstore_wal_bytes", "Bytes written to the WAL since its last checkpoint", stats.wal_bytes
        )
        yield CounterMetricFamily(
            "saga_eventstore_commits", "Transactions committed (one fsync each)", stats.commits
        )
        yield CounterMetricFamily("saga_eventstore_appends", "Appends written", stats.appends)
        yield CounterMetricFamily("saga_eventstore_events", "Events written", stats.events)
        yield CounterMetricFamily(
            "saga_eventstore_wal_checkpoints", "WAL checkpoints run by the writer", stats.wal_checkpoints
        )
        yield CounterMetricFamily(
            "saga_eventstore_after_commit_errors",
            "Errors after a group committed (a refused WAL checkpoint); the group was acknowledged",
            stats.after_commit_errors,
        )
        yield CounterMetricFamily(
            "saga_eventstore_grouped_requests",
            "Requests written over all commits (divided by commits: the mean group size)",
            stats.grouped_requests,
        )
