"""The leader lease: a compare-and-set on the lease stream, whose acquisition revision is the fencing token.

- **Acquire.** A candidate appends ``LeaseAcquired`` at the revision it observed (``NO_STREAM`` when there is
  no lease stream yet). The store lets exactly one such append through; its revision is the epoch.
- **Renew.** The leader appends at the revision it last wrote, every heartbeat. Any successful leader
  write renews the lease: it proves nobody took over before the write was *sent*.
- **Act.** The leader acts while ``now < sent + lease_ms - renew_margin_ms``, with ``sent`` the time on
  its own monotonic clock when it first sent its last successful write (a resend after an ambiguous
  failure counts from the first send: an idempotent success says the write landed then, not now).
- **Expire.** A follower takes over when it has seen the stream's revision unchanged for ``lease_ms`` on its
  own monotonic clock (or the latest event is a release). A leader's write lands before the follower
  can see it, so the follower's clock starts after the leader's did: with equal clock rates the leader
  has stopped ``renew_margin_ms`` before any follower acquires. Wall clocks are never compared.
- **Fence.** Leader-only data is appended to the lease stream at the leader's expected revision. A leader
  that was paused past its lease (SIGSTOP, a GC pause, a partition) and wakes up still holding its epoch
  in memory sends its next write at its old revision; the store refuses it (``WrongExpectedRevision``),
  the refusal is counted (``saga_cluster_stale_writes_refused_total``) and the node steps down. Nothing
  here checks the epoch in memory before writing: the store decides.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from orchestrator.cluster.metrics import ClusterMetrics
from orchestrator.cluster.records import (
    LEASE_ACQUIRED,
    LEASE_RELEASED,
    LEASE_RENEWED,
    LEASE_WINDOW,
    SHARDS_ASSIGNED,
    LeaseEvent,
    decode_lease,
    encode_lease,
)
from orchestrator.cluster.shards import Assignment
from orchestrator.cluster.tail import bound, read_after
from orchestrator.eventstore.errors import EventStoreError, IntegrityError, WrongExpectedRevision
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import NO_STREAM, Expected

log = structlog.get_logger("orchestrator.cluster")

Clock = Callable[[], float]
#: the leader's next write: given (epoch, head revision, latest assignment), the leader-only event due
#: now, or None for a plain renewal
LeaderDuty = Callable[[int, int, Assignment | None], LeaseEvent | None]
_DUTY_OF = {LEASE_RENEWED: "renewal", SHARDS_ASSIGNED: "shard_assignment", LEASE_RELEASED: "release"}


@dataclass(frozen=True, slots=True)
class LeaseView:
    """The lease as one node sees it now."""

    #: the node that may act as leader, as far as this node can tell (None: released, expired, none yet)
    leader: str | None
    #: the epoch of the latest lease event seen (the fencing token of its holder)
    epoch: int | None
    #: the lease stream's last revision seen
    revision: int | None
    #: seconds until this node would take the lease as expired (None: it would not wait)
    expires_in_s: float | None
    #: this node holds the lease and may act on it now
    this_node: bool
    assignment: Assignment | None


@dataclass(frozen=True, slots=True)
class _Write:
    events: tuple[LeaseEvent, ...]
    expected: Expected
    #: when it was first sent (this node's monotonic clock)
    first_sent: float


class LeaderLease:
    def __init__(
        self,
        store: EventStore,
        stream: str,
        node_id: str,
        *,
        lease_ms: int,
        renew_margin_ms: int,
        heartbeat_ms: int,
        candidate: bool,
        metrics: ClusterMetrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self.stream = stream
        self.node_id = node_id
        self.lease_ms = lease_ms
        self.candidate = candidate
        self._lease_s = lease_ms / 1000
        self._act_s = (lease_ms - renew_margin_ms) / 1000
        self._heartbeat_s = heartbeat_ms / 1000
        # A request slower than the time a leader may act could not keep a lease anyway.
        self._timeout_s = max(0.1, self._act_s)
        self._store = store
        self._metrics = metrics
        self._clock = clock
        # --- what this node has seen of the stream
        self._head: int | None = None
        self._changed_at = clock()
        self._latest: LeaseEvent | None = None
        self._assignment: Assignment | None = None
        self._seen_epoch: int | None = None
        # --- this node's own lease
        self._epoch: int | None = None
        self._valid_until = -math.inf
        #: a write whose outcome is unknown (timeout, lost connection): resent with the same bytes
        self._pending: _Write | None = None
        self._stopping = False

    # --- what others read ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """This node holds the lease and its time to act has not run out."""
        return self._epoch is not None and self._clock() < self._valid_until

    @property
    def epoch(self) -> int | None:
        """The epoch this node holds (possibly lapsed: its next write will tell), else None."""
        return self._epoch

    @property
    def assignment(self) -> Assignment | None:
        return self._assignment

    def view(self) -> LeaseView:
        now = self._clock()
        latest = self._latest
        expires_in: float | None = None
        if self._epoch is not None:
            leader = self.node_id if self.is_leader else None
            expires_in = max(0.0, self._valid_until - now)
        elif latest is None or latest.type == LEASE_RELEASED or latest.holder == self.node_id:
            # (its own lease, which it no longer holds: it knows it is not leading)
            leader = None
        else:
            remaining = self._lease_s - (now - self._changed_at)
            leader = latest.holder if remaining > 0 else None
            expires_in = max(0.0, remaining)
        return LeaseView(
            leader=leader,
            epoch=latest.epoch if latest is not None else None,
            revision=self._head,
            expires_in_s=expires_in,
            this_node=leader is not None and leader == self.node_id,
            assignment=self._assignment,
        )

    def next_round_in(self) -> float:
        """Seconds until the next round is due: a heartbeat, or sooner when a follower's wait for an
        expiry ends before that."""
        if self._epoch is not None or self._pending is not None or not self.candidate:
            return self._heartbeat_s
        if self._latest is None or self._latest.type == LEASE_RELEASED:
            return self._heartbeat_s
        remaining = self._lease_s - (self._clock() - self._changed_at)
        # Past the expiry the last round already tried to take over (and failed or could not read): a
        # heartbeat's pause, not a busy loop against a store that does not answer.
        return min(self._heartbeat_s, remaining) if remaining > 0 else self._heartbeat_s

    # --- one round ----------------------------------------------------------------------------------

    async def prepare(self) -> None:
        await bound(self._store, self.stream, LEASE_WINDOW)

    async def tick(self, duty: LeaderDuty | None = None) -> None:
        """One round. A write with an unknown outcome is resent first; the leader then renews (or writes
        what ``duty`` says is due); a follower reads the stream and, as a candidate, takes an expired or
        released lease over."""
        if self._pending is not None:
            await self._send(self._pending)
            return
        if self._epoch is not None:
            assert self._head is not None
            event = duty(self._epoch, self._head, self._assignment) if duty is not None else None
            if event is None:
                event = LeaseEvent(LEASE_RENEWED, self.node_id, self._epoch, self.lease_ms)
            await self._send(_Write((event,), self._head, self._clock()))
            return
        await self.observe()
        if self.candidate and not self._stopping and self._takeover_due():
            await self.acquire()

    async def observe(self) -> None:
        """Read what was appended to the lease stream since the last read."""
        events = await asyncio.wait_for(
            read_after(self._store, self.stream, self._head, LEASE_WINDOW), self._timeout_s
        )
        now = self._clock()
        for recorded in events:
            self._saw(recorded.revision, decode_lease(recorded), now)

    def _takeover_due(self) -> bool:
        if self._head is None:
            return True  # no lease stream yet: the first candidate takes it at NO_STREAM
        if self._latest is not None and self._latest.type == LEASE_RELEASED:
            return True
        return self._clock() - self._changed_at >= self._lease_s

    async def acquire(self) -> None:
        """Append ``LeaseAcquired`` at the revision this node observed; its revision is the new epoch."""
        expected: Expected = NO_STREAM if self._head is None else self._head
        epoch = 0 if self._head is None else self._head + 1
        event = LeaseEvent(LEASE_ACQUIRED, self.node_id, epoch, self.lease_ms)
        await self._send(_Write((event,), expected, self._clock()))

    async def release(self) -> None:
        """On a clean stop: take no more leases and, holding one, append a release at this node's revision
        (fenced like every leader write), so a follower takes over at its next read."""
        self._stopping = True
        if self._pending is not None:
            await self._send(self._pending)
        if self._epoch is not None and self._head is not None:
            event = LeaseEvent(LEASE_RELEASED, self.node_id, self._epoch, self.lease_ms)
            await self._send(_Write((event,), self._head, self._clock()))

    # --- writing ------------------------------------------------------------------------------------

    async def _send(self, write: _Write) -> None:
        self._pending = write
        events = encode_lease(self.stream, write.events, write.expected)
        quiet_since = self._changed_at
        started = self._clock()
        first = write.events[0]
        try:
            await asyncio.wait_for(
                self._store.append(self.stream, events, expected=write.expected), self._timeout_s
            )
        except WrongExpectedRevision as e:
            self._pending = None
            if first.type == LEASE_ACQUIRED:
                log.debug("lease_acquisition_lost", epoch=first.epoch, actual=e.actual)
            else:
                self._refused(first, e.actual)
            return
        except IntegrityError as e:
            # Not a conflict (a tombstoned lease stream, say): resending cannot succeed.
            self._pending = None
            log.error("lease_write_failed", error=str(e), epoch=first.epoch)
            self._step_down()
            return
        except (EventStoreError, TimeoutError) as e:
            # Outcome unknown: the same bytes go again next round (idempotent if they landed).
            log.warning("lease_write_unknown", error=str(e) or type(e).__name__, epoch=first.epoch)
            return
        self._pending = None
        now = self._clock()
        self._metrics.renew_seconds.observe(now - started)
        revision = write.expected + 1 if isinstance(write.expected, int) else 0
        for offset, event in enumerate(write.events):
            self._saw(revision + offset, event, now)
        if first.type == LEASE_RELEASED:
            log.info("lease_released", epoch=first.epoch)
            self._step_down()
            return
        if first.type == LEASE_ACQUIRED:
            # How long the lease stood still (or released) before this node took it, on this node's clock.
            handover = started - quiet_since
            self._metrics.handover_seconds.observe(max(0.0, handover))
            log.info("lease_acquired", epoch=first.epoch, handover_s=round(handover, 3))
        self._epoch = first.epoch
        self._valid_until = write.first_sent + self._act_s
        self._metrics.leader.set(1 if self.is_leader else 0)

    def _refused(self, event: LeaseEvent, actual: int | None) -> None:
        """The store refused a write of this node as leader: another node took the lease."""
        duty = _DUTY_OF.get(event.type, event.type)
        self._metrics.stale_writes_refused.labels(duty).inc()
        log.warning("lease_lost", epoch=event.epoch, refused=duty, stream_revision=actual)
        self._step_down()

    def _step_down(self) -> None:
        self._epoch = None
        self._valid_until = -math.inf
        self._metrics.leader.set(0)

    def _saw(self, revision: int, event: LeaseEvent | None, now: float) -> None:
        """Note one event of the stream (None: one this node cannot read, which still moves the head)."""
        if self._head is not None and revision <= self._head:
            return
        self._head = revision
        self._changed_at = now
        if event is None:
            return
        self._latest = event
        if event.type == SHARDS_ASSIGNED:
            self._assignment = Assignment(event.epoch, event.holder, revision, event.shards, event.assignment)
        if event.epoch != self._seen_epoch:
            if self._seen_epoch is not None:
                self._metrics.leader_changes.inc()
            self._seen_epoch = event.epoch
            self._metrics.epoch.set(event.epoch)

    def refresh_gauges(self) -> None:
        self._metrics.leader.set(1 if self.is_leader else 0)
