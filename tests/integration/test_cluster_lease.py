"""The leader lease, membership and the shard-assignment duty on the embedded store, several nodes in one
process, each round driven by the test with an injected monotonic clock (no sleeping): one leader among
candidates; expiry measured on the follower's own clock; a stale leader's writes refused by the store and
counted; a release handing over at once; an ambiguous write resent with the same bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.cluster import ClusterNode, NodeRecord
from orchestrator.cluster.lease import LeaderLease
from orchestrator.cluster.membership import Membership
from orchestrator.cluster.metrics import ClusterMetrics
from orchestrator.cluster.records import LEASE_WINDOW, lease_stream
from orchestrator.cluster.shards import SHARDS
from orchestrator.eventstore import EventFilter, OperationalError
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.settings import ClusterSettings

LEASE_MS, MARGIN_MS, HEARTBEAT_MS = 3_000, 500, 500
STREAM = "cluster-test-lease"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedEventStore]:
    opened = await EmbeddedEventStore.open(tmp_path / "eventstore")
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def lease(store: Any, node_id: str, clock: FakeClock, *, candidate: bool = True) -> LeaderLease:
    return LeaderLease(
        store,
        STREAM,
        node_id,
        lease_ms=LEASE_MS,
        renew_margin_ms=MARGIN_MS,
        heartbeat_ms=HEARTBEAT_MS,
        candidate=candidate,
        metrics=ClusterMetrics(CollectorRegistry()),
        clock=clock,
    )


def refused(lease: LeaderLease, duty: str) -> float:
    value = lease._metrics.registry.get_sample_value(
        "saga_cluster_stale_writes_refused_total", {"duty": duty}
    )
    return value or 0.0


async def lease_history(store: EmbeddedEventStore, stream: str = STREAM) -> list[dict[str, Any]]:
    """Every event of the lease stream, from $all (which no $maxCount truncates)."""
    found = []
    async for batch in store.read_all(filter=EventFilter(stream_prefixes=(stream,))):
        for e in batch:
            found.append({"type": e.type, "revision": e.revision, **json.loads(e.data)})
    return found


async def test_two_candidates_racing_make_one_leader(store: EmbeddedEventStore, clock: FakeClock) -> None:
    a, b = lease(store, "a", clock), lease(store, "b", clock)
    await asyncio.gather(a.tick(), b.tick())
    assert [a.is_leader, b.is_leader].count(True) == 1
    leader, follower = (a, b) if a.is_leader else (b, a)
    assert leader.epoch == 0  # the acquisition's revision
    await follower.tick()
    assert follower.view().leader == leader.node_id
    assert follower.view().epoch == 0
    assert not follower.is_leader
    history = await lease_history(store)
    assert [(e["type"], e["holder"]) for e in history] == [("LeaseAcquired", leader.node_id)]


async def test_expiry_takes_lease_ms_on_the_followers_own_clock(
    store: EmbeddedEventStore, clock: FakeClock
) -> None:
    a, b = lease(store, "a", clock), lease(store, "b", clock)
    await a.tick()
    assert a.is_leader
    sent = clock.now
    # The follower first reads the stream half a second after the leader's last write: its wait for
    # the lease to expire starts then, not when the leader wrote (no clock is compared with another).
    clock.advance(0.5)
    await b.tick()
    assert b.view().leader == "a"
    assert b.next_round_in() == HEARTBEAT_MS / 1000
    clock.advance(LEASE_MS / 1000 - 0.2)
    assert b.next_round_in() == pytest.approx(0.2)  # woken when the wait ends, not a heartbeat later
    clock.advance(-(LEASE_MS / 1000 - 0.2))
    # The leader stops acting lease_ms - renew_margin_ms after it sent its last successful write.
    clock.now = sent + (LEASE_MS - MARGIN_MS) / 1000 - 0.001
    assert a.is_leader
    clock.now = sent + (LEASE_MS - MARGIN_MS) / 1000
    assert not a.is_leader
    assert a.view().leader is None  # it knows it may not act; it still holds the epoch until refused
    # lease_ms after the follower's first sight, less a millisecond: still held.
    clock.now = sent + 0.5 + LEASE_MS / 1000 - 0.001
    await b.tick()
    assert not b.is_leader
    assert b.view().leader == "a"
    clock.advance(0.001)
    await b.tick()
    assert b.is_leader
    assert b.epoch == 1
    assert b.view().epoch == 1


async def test_renewals_keep_the_lease(store: EmbeddedEventStore, clock: FakeClock) -> None:
    a, b = lease(store, "a", clock), lease(store, "b", clock)
    await a.tick()
    await b.tick()
    for _ in range(20):  # ten lease lengths, renewed every heartbeat
        clock.advance(HEARTBEAT_MS / 1000)
        await a.tick()
        await b.tick()
        assert a.is_leader
        assert not b.is_leader
        assert b.view().leader == "a"
    assert b.view().epoch == 0


async def test_a_stale_leaders_writes_are_refused_by_the_store_and_counted(
    store: EmbeddedEventStore, clock: FakeClock
) -> None:
    a, b = lease(store, "a", clock), lease(store, "b", clock)
    await a.tick()
    await b.tick()
    # "a" is paused (no rounds) past its lease; "b" takes over.
    clock.advance(LEASE_MS / 1000)
    await b.tick()
    assert b.is_leader
    assert b.epoch == 1
    # "a" wakes up still holding epoch 0 in memory and writes leader-only data at its old revision.
    assert a.epoch == 0

    def assignment(epoch: int, head: int, current: object) -> Any:
        from orchestrator.cluster.records import SHARDS_ASSIGNED, LeaseEvent

        return LeaseEvent(SHARDS_ASSIGNED, "a", epoch, LEASE_MS, SHARDS, {"a": tuple(range(SHARDS))})

    await a.tick(assignment)
    assert refused(a, "shard_assignment") == 1
    assert a.epoch is None
    assert not a.is_leader
    # Its next round reads the stream and follows the new leader.
    await a.tick()
    assert a.view().leader == "b"
    assert a.view().epoch == 1
    history = await lease_history(store)
    assert [(e["type"], e["holder"], e["epoch"]) for e in history] == [
        ("LeaseAcquired", "a", 0),
        ("LeaseAcquired", "b", 1),
    ]


async def test_a_stale_renewal_is_refused_too(store: EmbeddedEventStore, clock: FakeClock) -> None:
    a, b = lease(store, "a", clock), lease(store, "b", clock)
    await a.tick()
    await b.tick()
    clock.advance(LEASE_MS / 1000)
    await b.tick()
    await a.tick()
    assert refused(a, "renewal") == 1
    assert a.epoch is None


async def test_release_hands_over_at_once(store: EmbeddedEventStore, clock: FakeClock) -> None:
    a, b = lease(store, "a", clock), lease(store, "b", clock)
    await a.tick()
    await b.tick()
    await a.release()
    assert not a.is_leader
    assert a.epoch is None
    await b.tick()  # no time has passed
    assert b.is_leader
    assert b.epoch == 2
    # A released node takes no lease again (it is stopping).
    clock.advance(LEASE_MS / 1000)
    await a.tick()
    assert not a.is_leader
    types = [e["type"] for e in await lease_history(store)]
    assert types == ["LeaseAcquired", "LeaseReleased", "LeaseAcquired"]


async def test_an_observer_never_leads(store: EmbeddedEventStore, clock: FakeClock) -> None:
    api = lease(store, "api", clock, candidate=False)
    for _ in range(3):
        await api.tick()
        clock.advance(LEASE_MS / 1000)
    assert not api.is_leader
    assert api.view().leader is None
    assert await lease_history(store) == []


class LostResponses:
    """Appends reach the store, but the first ``lose`` answers are lost (the caller sees an error)."""

    def __init__(self, store: EmbeddedEventStore, lose: int) -> None:
        self._store = store
        self.lose = lose
        self.appends = 0

    async def append(self, stream: str, events: Any, *, expected: Any) -> Any:
        self.appends += 1
        result = await self._store.append(stream, events, expected=expected)
        if self.lose > 0:
            self.lose -= 1
            raise OperationalError("connection lost after the write")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_an_ambiguous_write_is_resent_with_the_same_bytes_and_counts_from_its_first_send(
    store: EmbeddedEventStore, clock: FakeClock
) -> None:
    flaky = LostResponses(store, lose=0)
    a = lease(flaky, "a", clock)
    await a.tick()
    assert a.is_leader
    flaky.lose = 1
    clock.advance(HEARTBEAT_MS / 1000)
    first_sent = clock.now
    await a.tick()  # the renewal landed, its answer was lost
    clock.advance(1.0)
    await a.tick()  # resent: the store answers with the original (idempotent), nothing is added
    assert a.is_leader
    clock.now = first_sent + (LEASE_MS - MARGIN_MS) / 1000
    assert not a.is_leader  # the validity counts from the first send, not from the resend
    assert [e["type"] for e in await lease_history(store)] == ["LeaseAcquired", "LeaseRenewed"]
    assert flaky.appends == 3


# --- membership -----------------------------------------------------------------------------------------


def record(node_id: str, *roles: str) -> NodeRecord:
    return NodeRecord(node_id, "1.0", roles or ("engine",), f"http://{node_id}:8080", "2024-01-01T00:00:00Z")


async def test_a_silent_node_leaves_the_view_after_the_ttl_on_the_observers_clock(
    store: EmbeddedEventStore, clock: FakeClock
) -> None:
    ttl = LEASE_MS / 1000
    a = Membership(store, "cluster-test-members", record("a"), ttl_s=ttl, window=64, clock=clock)
    b = Membership(store, "cluster-test-members", record("b", "api"), ttl_s=ttl, window=64, clock=clock)
    await a.prepare()
    await a.beat()
    await b.beat()
    changes = await a.observe()
    assert [n.node_id for n in changes.joined] == ["a", "b"]
    assert [m.node.roles for m in a.live()] == [("engine",), ("api",)]
    # "b" stops beating; "a" keeps beating and reading.
    for _ in range(int(ttl / 0.5) - 1):
        clock.advance(0.5)
        await a.beat()
        await a.observe()
    assert [m.node.node_id for m in a.live()] == ["a", "b"]
    clock.advance(0.5)
    await a.beat()
    changes = await a.observe()
    assert changes.left == ("b",)
    assert [m.node.node_id for m in a.live()] == ["a"]
    # A beat brings it back.
    await b.beat()
    assert [n.node_id for n in (await a.observe()).joined] == ["b"]


async def test_a_clean_leave_is_seen_at_the_next_read(store: EmbeddedEventStore, clock: FakeClock) -> None:
    a = Membership(store, "cluster-test-members", record("a"), ttl_s=3, window=64, clock=clock)
    b = Membership(store, "cluster-test-members", record("b"), ttl_s=3, window=64, clock=clock)
    await a.beat()
    await b.beat()
    await a.observe()
    await b.leave()
    assert (await a.observe()).left == ("b",)


async def test_the_streams_are_bounded(store: EmbeddedEventStore, clock: FakeClock) -> None:
    settings = ClusterSettings(enabled=True, lease_ms=LEASE_MS, heartbeat_ms=HEARTBEAT_MS)
    node = ClusterNode(store, settings, record("a"), name="test", clock=clock)
    await node.run_once()
    assert (await store.get_stream_metadata("cluster-test-members")).values == {"$maxCount": 64}
    assert (await store.get_stream_metadata(lease_stream("test"))).values == {"$maxCount": LEASE_WINDOW}


# --- the shard assignment, through whole nodes ------------------------------------------------------------


async def test_nodes_agree_on_leader_epoch_and_assignment_and_a_stop_hands_over(
    store: EmbeddedEventStore, clock: FakeClock
) -> None:
    settings = ClusterSettings(enabled=True, lease_ms=LEASE_MS, heartbeat_ms=HEARTBEAT_MS)
    nodes = [
        ClusterNode(
            store, settings, record(n, *roles), name="test", clock=clock, registry=CollectorRegistry()
        )
        for n, roles in (("e1", ("engine",)), ("e2", ("engine",)), ("api", ("api",)))
    ]

    async def rounds(count: int, among: list[ClusterNode]) -> None:
        for _ in range(count):
            for node in among:
                await node.run_once()
            clock.advance(HEARTBEAT_MS / 1000)

    await rounds(3, nodes)
    statuses = [n.status() for n in nodes]
    leaders = {(s.leader.node_id, s.leader.epoch) for s in statuses}
    assert len(leaders) == 1
    (leader_id, epoch) = leaders.pop()
    assert leader_id in ("e1", "e2")
    assert [s.leader.this_node for s in statuses] == [n.me.node_id == leader_id for n in nodes]
    for status in statuses:
        assert [m.node.node_id for m in status.members] == ["api", "e1", "e2"]
        assert status.assignment is not None
        assert status.assignment.epoch == epoch
    owned = {n: nodes[0].owned_shards(n) for n in ("e1", "e2", "api")}
    assert len(owned["e1"]) == len(owned["e2"]) == SHARDS // 2
    assert owned["e1"] | owned["e2"] == set(range(SHARDS))
    assert owned["api"] == frozenset()

    # The leader stops cleanly: it releases the lease and leaves; the other engine takes over at its
    # next round and assigns every shard to itself.
    leader = next(n for n in nodes if n.me.node_id == leader_id)
    rest = [n for n in nodes if n is not leader]
    await leader.stop()
    await rounds(2, rest)
    survivor = next(n.me.node_id for n in rest if "engine" in n.me.roles)
    for node in rest:
        status = node.status()
        assert status.leader.node_id == survivor
        assert status.leader.epoch is not None
        assert status.leader.epoch > epoch
        assert [m.node.node_id for m in status.members] == ["api", survivor]
        assert node.owned_shards(survivor) == set(range(SHARDS))
    history = await lease_history(store, lease_stream("test"))
    by_epoch: dict[int, set[str]] = {}
    for event in history:
        by_epoch.setdefault(event["epoch"], set()).add(event["holder"])
    assert all(len(holders) == 1 for holders in by_epoch.values()), by_epoch
