"""What the interfaces see of cluster mode (``/health/cluster``): plain values and one small protocol, so the
API depends on neither the membership nor the lease machinery."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestrator.cluster.records import NodeRecord
from orchestrator.cluster.shards import Assignment

Liveness = Literal["alive", "suspect"]


@dataclass(frozen=True, slots=True)
class MemberStatus:
    node: NodeRecord
    #: alive: its heartbeat moved within half the TTL; suspect: later than that (it leaves at the TTL)
    liveness: Liveness
    #: since this node saw its heartbeat move (this node's monotonic clock)
    heartbeat_age_ms: int
    leader: bool
    #: the timer shards the latest assignment gives it
    shards: tuple[int, ...]
    #: what it reported of itself with its latest heartbeat (at most one heartbeat old)
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaderStatus:
    #: None: no node may act as leader now (none yet, released, or expired as this node sees it)
    node_id: str | None
    #: the latest epoch (fencing token) seen
    epoch: int | None
    lease_ms: int
    #: how long this node still counts the lease as held (the leader: how long it may still act)
    expires_in_ms: int | None
    this_node: bool


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    node_id: str
    #: live nodes of this node's membership view, by node id
    members: tuple[MemberStatus, ...]
    leader: LeaderStatus
    assignment: Assignment | None


class ClusterView(Protocol):
    def status(self) -> ClusterStatus: ...

    def owned_shards(self, node_id: str) -> frozenset[int]: ...
