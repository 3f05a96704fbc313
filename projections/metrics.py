"""Prometheus metrics of the projection runners, on an injectable registry (tests use their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ProjectionMetrics"]


class ProjectionMetrics:
    """One set per process; every series is labelled with the generation, because during a rebuild two
    runners (G serving, G+1 building) report side by side."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("generation",)
        self.lag_positions = Gauge(
            "projection_lag_positions",
            "Head of $all minus the applied position (events, in the embedded store)",
            labels,
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "projection_lag_seconds",
            "Age of the newest applied event when applied (0 once caught up)",
            labels,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "projection_batch_events",
            "Events per applied batch",
            labels,
            buckets=(0, 1, 5, 10, 50, 100, 250, 500, 1000, 5000),
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "projection_apply_seconds",
            "Duration of one batch apply (the Lua call)",
            labels,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.events = Counter(
            "projection_events_applied",
            "Events applied to the read model",
            labels,
            registry=self.registry,
        )
        self.conflicts = Counter(
            "projection_conflicts",
            "Batches refused by the compare-and-set (another writer moved the position)",
            labels,
            registry=self.registry,
        )
        self.op_errors = Counter(
            "projection_op_errors",
            "View updates Redis refused inside an applied batch (a projector bug)",
            labels,
            registry=self.registry,
        )
