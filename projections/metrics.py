"""Prometheus metrics of the projection runners, on an injectable registry (tests use their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ProjectionMetrics"]


class ProjectionMetrics:
    """One set per process. The runners' series are labelled with the generation, because during a
    rebuild two runners (G serving, G+1 building) report side by side; the projector lease's are not."""

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
        self.fenced = Counter(
            "projection_fenced_batches",
            "Batches refused because this process no longer held the lease (a stale owner's writes)",
            labels,
            registry=self.registry,
        )
        self.op_errors = Counter(
            "projection_op_errors",
            "View updates Redis refused inside an applied batch (a projector bug)",
            labels,
            registry=self.registry,
        )
        # The projector role's lease (active/standby): one per process, no generation.
        self.lease_held = Gauge(
            "projection_lease_held",
            "1 while this process holds the projector lease (the active projector), 0 on a standby",
            registry=self.registry,
        )
        self.takeovers = Counter(
            "projection_lease_takeovers",
            "Times this process became the active projector (took the projector lease)",
            registry=self.registry,
        )
        self.losses = Counter(
            "projection_lease_losses",
            "Times this process lost the projector lease while it was active (and stood by)",
            registry=self.registry,
        )
        self.handover_seconds = Histogram(
            "projection_handover_seconds",
            "From the previous holder's last lease renewal to this standby holding the lease",
            buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60),
            registry=self.registry,
        )
        self.rebuilds_resumed = Counter(
            "projection_rebuilds_resumed",
            "Rebuilds this process resumed from the position another owner had built them to",
            registry=self.registry,
        )
