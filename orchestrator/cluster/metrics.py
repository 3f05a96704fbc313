"""Prometheus metrics of cluster mode, on the registry of the process (the composition root passes it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_RENEW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_HANDOVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60)
ROLES = ("api", "engine", "projector")
#: what a leader writes to the lease stream (the ``duty`` label of refused writes)
DUTIES = ("renewal", "shard_assignment", "release")


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.leader_changes = Counter(
            "saga_cluster_leader_changes_total",
            "Lease epochs this node has seen replace the one it saw before (a new leader, or the same after a"
            " lapse)",
            registry=r,
        )
        self.leader = Gauge("saga_cluster_leader", "1 while this node holds a valid leader lease", registry=r)
        self.epoch = Gauge(
            "saga_cluster_lease_epoch",
            "The latest lease epoch (fencing token) this node has seen",
            registry=r,
        )
        self.renew_seconds = Histogram(
            "saga_cluster_lease_renew_seconds",
            "Round trip of the leader's successful lease writes (acquisition, renewal, leader-only data)",
            buckets=_RENEW_BUCKETS,
            registry=r,
        )
        self.handover_seconds = Histogram(
            "saga_cluster_handover_seconds",
            "On the node that took the lease: from the last change it saw on the lease stream (the old"
            " leader's last write, or its release) to its own acquisition, on its own clock",
            buckets=_HANDOVER_BUCKETS,
            registry=r,
        )
        self.shards_owned = Gauge(
            "saga_cluster_shards_owned", "Timer shards the latest assignment gives this node", registry=r
        )
        self.stale_writes_refused = Counter(
            "saga_cluster_stale_writes_refused_total",
            "Writes of this node as leader that the store refused because another node took the lease",
            ["duty"],
            registry=r,
        )
        self.members = Gauge(
            "saga_cluster_members", "Live nodes in this node's membership view, by role", ["role"], registry=r
        )
        for role in ROLES:
            self.members.labels(role)
        for duty in DUTIES:
            self.stale_writes_refused.labels(duty)
        self.epoch.set(-1)
