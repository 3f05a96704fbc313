"""Cluster mode (design.md §10): node membership, the leader lease with its fencing token, and the timer
shard assignment, all kept in the event store, so there is no other server to run and every store adapter
gives the same guarantees (the store's append at an expected revision is the one linearizable primitive;
there is no home-made consensus).

Leader-only duties (each appended to the lease stream at the leader's expected revision, so the store
refuses a stale leader's write; see :mod:`orchestrator.cluster.duties`):

1. the timer shard assignment (``ShardsAssigned``), and the lease's own acquisition, renewals and release.

Modules: ``records`` (streams and events), ``membership``, ``lease``, ``duties``, ``shards`` (pure),
``metrics``, ``node`` (one process's cluster mode), ``view`` (what ``/health/cluster`` reads), ``config``.
"""

from orchestrator.cluster.config import ClusterConfigError, check_store
from orchestrator.cluster.node import ClusterNode
from orchestrator.cluster.records import NodeRecord
from orchestrator.cluster.shards import SHARDS, shard_of
from orchestrator.cluster.view import ClusterStatus, ClusterView

__all__ = [
    "SHARDS",
    "ClusterConfigError",
    "ClusterNode",
    "ClusterStatus",
    "ClusterView",
    "NodeRecord",
    "check_store",
    "shard_of",
]
