"""Cluster mode for one process: membership (every role), the leader lease (engine processes are the
candidates), the leader-only duties, and the view ``/health/cluster`` reports.

Two background loops, each one round per heartbeat: membership (beat, then read the others' beats) and
the lease (renew or write a duty as leader; read, and take an expired lease over, as a follower). A
failing store costs rounds, never the process: errors are logged and the next round tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog
from prometheus_client import CollectorRegistry

from orchestrator.cluster.duties import ShardAssignmentDuty
from orchestrator.cluster.lease import Clock, LeaderLease
from orchestrator.cluster.membership import Membership
from orchestrator.cluster.metrics import ROLES, ClusterMetrics
from orchestrator.cluster.records import NodeRecord, lease_stream, members_stream, members_window
from orchestrator.cluster.shards import SHARDS, shard_of
from orchestrator.cluster.view import ClusterStatus, LeaderStatus, MemberStatus
from orchestrator.eventstore.errors import EventStoreError
from orchestrator.eventstore.port import EventStore
from orchestrator.records.streams import SAGA_STREAM_PREFIX
from orchestrator.settings import ClusterSettings

log = structlog.get_logger("orchestrator.cluster")


class ClusterNode:
    def __init__(
        self,
        store: EventStore,
        settings: ClusterSettings,
        me: NodeRecord,
        *,
        name: str,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
        shards: int = SHARDS,
    ) -> None:
        self.me = me
        self.settings = settings
        self.metrics = ClusterMetrics(registry)
        self._heartbeat_s = settings.heartbeat_ms / 1000
        self.membership = Membership(
            store,
            members_stream(name),
            me,
            ttl_s=settings.lease_ms / 1000,
            window=members_window(settings.nodes),
            clock=clock,
        )
        self.lease = LeaderLease(
            store,
            lease_stream(name),
            me.node_id,
            lease_ms=settings.lease_ms,
            renew_margin_ms=settings.renew_margin_ms,
            heartbeat_ms=settings.heartbeat_ms,
            candidate="engine" in me.roles,
            metrics=self.metrics,
            clock=clock,
        )
        self.duty = ShardAssignmentDuty(me.node_id, settings.lease_ms, self.live_engines, shards)
        self._tasks: list[asyncio.Task[None]] = []
        self._prepared = False
        self._stopped = False

    def live_engines(self) -> list[str]:
        return [m.node.node_id for m in self.membership.live() if "engine" in m.node.roles]

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Announce this node and read the view once (so the first ``/health/cluster`` has it), then run
        the loops. A store that fails now is retried by the loops."""
        await self.run_once()
        self._tasks = [
            asyncio.create_task(
                self._loop(self._membership_round, lambda: self._heartbeat_s), name="cluster-members"
            ),
            asyncio.create_task(
                self._loop(self._lease_round, self.lease.next_round_in), name="cluster-lease"
            ),
        ]

    async def run_once(self) -> None:
        """One membership round and one lease round (what the loops do each heartbeat)."""
        await self._membership_round()
        await self._lease_round()

    async def stop(self) -> None:
        """Release the lease and say this node leaves, so the others move on at their next read instead of
        after the TTL. Bounded: a store that does not answer leaves the TTL to do it."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        bound_s = max(1.0, 2 * self._heartbeat_s)
        steps: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("release_lease", self.lease.release),
            ("announce_leaving", self.membership.leave),
        )
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), bound_s)
            except (EventStoreError, TimeoutError) as e:
                log.warning("cluster_leave_incomplete", step=name, error=str(e) or type(e).__name__)
        self.metrics.leader.set(0)
        log.info("cluster_left", node_id=self.me.node_id)

    async def _loop(self, round_: Callable[[], Awaitable[None]], interval: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(interval())
            try:
                await round_()
            except Exception:
                # A bug in one round must not end cluster mode for the life of the process; it is logged
                # with its traceback, and a node that cannot renew loses its lease to another.
                log.exception("cluster_round_crashed")

    async def _membership_round(self) -> None:
        try:
            if not self._prepared:
                await self.membership.prepare()
                await self.lease.prepare()
                self._prepared = True
            # A beat slower than the TTL could not keep this node in any view anyway.
            await asyncio.wait_for(self.membership.beat(), self.membership.ttl_s)
            changes = await asyncio.wait_for(self.membership.observe(), self.membership.ttl_s)
        except (EventStoreError, TimeoutError) as e:
            log.warning("cluster_membership_round_failed", error=str(e) or type(e).__name__)
            return
        for node in changes.joined:
            log.info(
                "cluster_node_joined", node_id=node.node_id, roles=list(node.roles), address=node.address
            )
        for node_id in changes.left:
            log.info("cluster_node_left", node_id=node_id)
        live = self.membership.live()
        for role in ROLES:
            self.metrics.members.labels(role).set(sum(1 for m in live if role in m.node.roles))

    async def _lease_round(self) -> None:
        try:
            await self.lease.tick(self.duty if self.lease.candidate else None)
        except (EventStoreError, TimeoutError) as e:
            log.warning("cluster_lease_round_failed", error=str(e) or type(e).__name__)
        self.lease.refresh_gauges()
        self.metrics.shards_owned.set(len(self.owned_shards(self.me.node_id)))

    # --- what the interfaces read -------------------------------------------------------------------

    def owned_shards(self, node_id: str) -> frozenset[int]:
        """The timer shards the latest assignment in the store gives ``node_id`` (its epoch: ``status()``)."""
        assignment = self.lease.assignment
        return frozenset(assignment.owned(node_id)) if assignment is not None else frozenset()

    def fires(self, stream: str) -> Literal["mine", "unowned", "theirs"]:
        """Whose due timer this saga's is (the engine's ``TimerPlacement``): ``mine`` when the latest
        assignment gives its shard to this node, ``unowned`` when there is no assignment yet or the shard's
        owner is not in this node's live view (so differing views never leave a timer unfired), else
        ``theirs``. Firing stays idempotent, so a hand-over overlap only costs a redundant wake."""
        assignment = self.lease.assignment
        if assignment is None:
            return "unowned"
        owner = assignment.owner(shard_of(stream.removeprefix(SAGA_STREAM_PREFIX), assignment.shards))
        if owner == self.me.node_id:
            return "mine"
        if owner is None or owner not in self.live_engines():
            return "unowned"
        return "theirs"

    def status(self) -> ClusterStatus:
        lease = self.lease.view()
        assignment = lease.assignment
        half_ttl = self.membership.ttl_s / 2
        members = tuple(
            MemberStatus(
                node=m.node,
                liveness="alive" if m.age_s <= half_ttl else "suspect",
                heartbeat_age_ms=round(m.age_s * 1000),
                leader=m.node.node_id == lease.leader,
                shards=assignment.owned(m.node.node_id) if assignment is not None else (),
                state=m.state,
            )
            for m in self.membership.live()
        )
        leader = LeaderStatus(
            node_id=lease.leader,
            epoch=lease.epoch,
            lease_ms=self.settings.lease_ms,
            expires_in_ms=round(lease.expires_in_s * 1000) if lease.expires_in_s is not None else None,
            this_node=lease.this_node,
        )
        return ClusterStatus(self.me.node_id, members, leader, assignment)
