"""The leader-only duties. Each one's data is appended to the lease stream at the leader's expected revision,
so a stale leader's write is refused by the store (see :mod:`orchestrator.cluster.lease`).

1. **Timer shard assignment** (``ShardsAssigned{epoch, shards, assignment}``): the leader spreads the timer
   shards over the live engine nodes of its membership view, and writes the assignment when it differs
   from the latest one in the stream, once at the start of every epoch, and again before it would fall
   out of the window readers look back over.

The lease's own writes (acquisition, renewal, release) are fenced the same way. Nothing else is
leader-only: firing timers stays idempotent on every engine, and the persistent subscription's consumers
compete without a leader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orchestrator.cluster.records import LEASE_WINDOW, SHARDS_ASSIGNED, LeaseEvent
from orchestrator.cluster.shards import SHARDS, Assignment, assign

#: the leader writes the assignment again after this many lease events, so it stays in readers' window
REFRESH_EVERY = LEASE_WINDOW // 4


class ShardAssignmentDuty:
    """Decides, at each of the leader's rounds, whether a ``ShardsAssigned`` is due (else: a renewal)."""

    def __init__(
        self, node_id: str, lease_ms: int, engines: Callable[[], Sequence[str]], shards: int = SHARDS
    ) -> None:
        self.node_id = node_id
        self.lease_ms = lease_ms
        self.shards = shards
        self._engines = engines

    def __call__(self, epoch: int, head: int, current: Assignment | None) -> LeaseEvent | None:
        nodes = self._engines()
        if not nodes:
            return None  # a view without engines (not read yet): keep what is there
        desired = assign(nodes, current.by_node if current is not None else None, self.shards)
        due = (
            current is None
            or current.epoch != epoch
            or current.shards != self.shards
            or dict(current.by_node) != desired
            or head - current.revision >= REFRESH_EVERY
        )
        if not due:
            return None
        return LeaseEvent(SHARDS_ASSIGNED, self.node_id, epoch, self.lease_ms, self.shards, desired)
