"""Prometheus metrics of the engine, on an injectable registry (tests and several engines in one
process each get their own), and the exposition ``/metrics`` serves: the plain text format, or
OpenMetrics when the scraper asks for it (only OpenMetrics carries exemplars)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from opentelemetry.trace import Span
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics_exposition
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
        self.timers_left_to_owner = Counter(
            "saga_engine_timers_left_to_owner_total",
            "Due timers this node left to the node that owns their shard (cluster mode)",
            registry=r,
        )
        self.timers_fired_for_owner = Counter(
            "saga_engine_timers_fired_for_owner_total",
            "Due timers this node fired although another node owns their shard: nobody visibly owned it,"
            " or the owner left it pending past the fallback",
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


def trace_exemplar(span: Span) -> dict[str, str] | None:
    """The exemplar that ties an observation to its trace: the span's trace and span ids, when the span
    is sampled (an unsampled trace is not in the tracing backend, so pointing at it would mislead)."""
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def dependency_family(reachable: Mapping[str, bool]) -> GaugeMetricFamily:
    """``saga_dependency_up``: what this process could reach when it was scraped, one series each."""
    family = GaugeMetricFamily(
        "saga_dependency_up",
        "1 when this process reached the dependency at scrape time, else 0 (event_store: every role;"
        " redis: the roles that serve reads)",
        labels=["dependency"],
    )
    for name, up in sorted(reachable.items()):
        family.add_metric([name], 1.0 if up else 0.0)
    return family


class _Scrape:
    """The process registry plus what the scrape itself measured, exposed as one."""

    def __init__(self, registry: Collector, measured: Iterable[Metric]) -> None:
        self._registry = registry
        self._measured = tuple(measured)

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._measured


#: the client library's OpenMetrics encoder (untyped there)
_openmetrics: Callable[[Collector], bytes] = openmetrics_exposition.generate_latest
#: what ``generate_latest`` writes (the library's own name for it is recent: spelt out here)
_PLAIN_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _quality(accept: str, acceptable: Callable[[str, dict[str, str]], bool]) -> float:
    """The highest ``q`` the ``Accept`` header gives a media range that ``acceptable`` takes (0: none)."""
    best = 0.0
    for media_range in accept.split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        params = dict(
            (name.strip().lower(), value.strip().strip('"'))
            for name, _, value in (p.partition("=") for p in parameters)
        )
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        if acceptable(kind.lower(), params):
            best = max(best, q)
    return best


def wants_openmetrics(accept: str) -> bool:
    """Whether a scrape with this ``Accept`` header gets OpenMetrics 1.0.0: the header names it (without a
    version, or 1.0.0) with a quality at least that of the plain text format (named, or by a wildcard)."""
    openmetrics = _quality(
        accept,
        lambda kind, params: (
            kind == "application/openmetrics-text" and params.get("version", "1.0.0") == "1.0.0"
        ),
    )
    plain = _quality(accept, lambda kind, _: kind in ("text/plain", "text/*", "*/*"))
    return openmetrics > 0 and openmetrics >= plain


def exposition(registry: Collector, accept: str, measured: Iterable[Metric] = ()) -> tuple[bytes, str]:
    """The body and content type of a scrape with this ``Accept`` header: OpenMetrics, the only format
    with exemplars, when the scraper prefers it (:func:`wants_openmetrics`), else the plain text format."""
    scrape = _Scrape(registry, measured)
    if wants_openmetrics(accept):
        return _openmetrics(scrape), openmetrics_exposition.CONTENT_TYPE_LATEST
    return generate_latest(scrape), _PLAIN_TEXT
