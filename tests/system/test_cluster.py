"""Cluster mode as separate processes on the local KurrentDB-compatible server: three engine processes, one
API and one projector, ``SAGA_CLUSTER__ENABLED=true`` with a 1.5 s lease.

(a) one leader, and ``/health/cluster`` on every node agrees on the leader and its epoch and lists every
node; (b) ``kill -9`` of the leader: a new leader within lease_ms + 2 s (measured and printed), and the
killed node leaves every view within its bound; (c) SIGSTOP of the leader past its lease, another takes
over, SIGCONT: its next leader-only write is refused by the store and counted, it follows, and the lease
stream never holds two writers for one epoch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.cluster.records import lease_stream
from orchestrator.cluster.shards import SHARDS
from orchestrator.dev import Deployment, Topology
from orchestrator.eventstore import EventFilter
from tests.system.deployment import LogFiles, deployment, eventually, metric, store_process

LEASE_MS, HEARTBEAT_MS, MARGIN_MS = 1_500, 250, 300
LEASE_S = LEASE_MS / 1000
#: the issue's bound for a new leader after the leader's death, and (the same) for leaving the view
FAILOVER_BOUND_S = LEASE_S + 2
CLUSTER_ENV = {
    "SAGA_CLUSTER__ENABLED": "true",
    "SAGA_CLUSTER__NODES": "5",
    "SAGA_CLUSTER__LEASE_MS": str(LEASE_MS),
    "SAGA_CLUSTER__HEARTBEAT_MS": str(HEARTBEAT_MS),
    "SAGA_CLUSTER__RENEW_MARGIN_MS": str(MARGIN_MS),
}
STALE = "saga_cluster_stale_writes_refused_total"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Cluster:
    def __init__(self, deploy: Deployment, group: str, http: aiohttp.ClientSession) -> None:
        self.deploy = deploy
        self.group = group
        self.http = http
        self.urls = {name: role.url for name, role in deploy.roles.items()}
        self.ids: dict[str, str] = {}

    async def view(self, name: str) -> dict[str, Any] | None:
        """The node's /health/cluster (None if it does not answer within a second)."""
        try:
            timeout = aiohttp.ClientTimeout(total=1)
            async with self.http.get(f"{self.urls[name]}/health/cluster", timeout=timeout) as response:
                found: dict[str, Any] = await response.json()
                return found
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def views(self, names: list[str]) -> dict[str, dict[str, Any]] | None:
        found = {name: await self.view(name) for name in names}
        if any(v is None for v in found.values()):
            return None
        return {name: v for name, v in found.items() if v is not None}

    def name_of(self, node_id: str) -> str:
        return next(name for name, i in self.ids.items() if i == node_id)

    async def agreed(self, names: list[str], members: set[str]) -> tuple[str, int] | None:
        """(leader name, epoch) when every one of ``names`` reports the same leader and epoch, exactly
        ``members`` as its live nodes, and the assignment of that epoch; else None."""
        views = await self.views(names)
        if views is None:
            return None
        leaders = {(v["leader"]["node_id"], v["leader"]["epoch"]) for v in views.values()}
        if len(leaders) != 1:
            return None
        ((leader, epoch),) = leaders
        if leader is None:
            return None
        engines = {n for n in members if self.deploy.roles[n].role == "engine"}
        for v in views.values():
            if {self.name_of(n["node_id"]) for n in v["nodes"]} != members:
                return None
            assignment = v["assignment"]
            if assignment is None or assignment["epoch"] != epoch:
                return None
            if {self.name_of(n) for n in assignment["by_node"]} != engines:
                return None  # written before the leader saw every engine: the next one will be
        return self.name_of(leader), epoch

    async def lease_history(self) -> list[dict[str, Any]]:
        """Every event of the lease stream, read from $all (which no $maxCount truncates)."""
        from orchestrator.eventstore.kurrent import open_kurrent_store

        store = await open_kurrent_store(self.deploy.store_url)
        try:
            found = []
            flt = EventFilter(stream_prefixes=(lease_stream(self.group),))
            async for batch in store.read_all(filter=flt):
                found += [{"type": e.type, "revision": e.revision, **json.loads(e.data)} for e in batch]
            return found
        finally:
            await store.close()


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    group = f"orchestrator-{uuid.uuid4().hex[:8]}"
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {},
        topology=Topology(apis=1, engines=3, projectors=1),
        SAGA_ENGINE__GROUP=group,
        **CLUSTER_ENV,
    )
    try:
        async with deploy, aiohttp.ClientSession() as http:
            found = Cluster(deploy, group, http)
            for name in found.urls:
                body = await found.view(name)
                assert body is not None
                found.ids[name] = body["node"]["node_id"]
            try:
                yield found
            finally:
                # A paused child would not take SIGTERM.
                for name in deploy.roles:
                    deploy.child(name).resume()
    except BaseException:
        _dump(logs, deploy)
        raise


def _dump(logs: LogFiles, deploy: Deployment) -> None:
    for name in ("eventstore", *sorted(deploy.roles)):
        print(f"--- {name}\n{logs.tail(name)}")


def _engines(c: Cluster) -> list[str]:
    return c.deploy.names_of("engine")


async def _one_leader(c: Cluster) -> tuple[str, int]:
    everyone = set(c.urls)

    async def agreed() -> tuple[str, int] | None:
        return await c.agreed(sorted(everyone), everyone)

    found: tuple[str, int] = await eventually(agreed, within=20, every=0.1, what="every node agreeing")
    return found


async def test_one_leader_and_every_node_agrees(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        leader, epoch = await _one_leader(c)
        assert leader in _engines(c)
        views = await c.views(sorted(c.urls))
        assert views is not None
        for name, view in views.items():
            assert view["cluster"] is True
            assert view["node"]["node_id"] == c.ids[name]
            assert view["node"]["store"]["status"] == "ok"
            assert view["leader"]["lease_ms"] == LEASE_MS
            roles = {c.name_of(n["node_id"]): n["roles"] for n in view["nodes"]}
            assert roles == {n: [c.deploy.roles[n].role] for n in c.urls}
            assert all(n["liveness"] in ("alive", "suspect") for n in view["nodes"])
            leaders = [c.name_of(n["node_id"]) for n in view["nodes"] if n["leader"]]
            assert leaders == [leader]
            by_node = view["assignment"]["by_node"]
            assert {c.name_of(n) for n in by_node} == set(_engines(c))
            assert sorted(s for owned in by_node.values() for s in owned) == list(range(SHARDS))

        # Every node's own state, as it reported it with its heartbeat, is on every node's answer.
        async def reported() -> bool:
            views = await c.views(sorted(c.urls))
            if views is None:
                return False
            for view in views.values():
                for n in view["nodes"]:
                    state = n["reported"] or {}
                    role = c.deploy.roles[c.name_of(n["node_id"])].role
                    if role == "engine" and not (
                        state.get("consuming") and state.get("timers", {}).get("running")
                    ):
                        return False
                    if role == "projector" and not state.get("projector", {}).get("active"):
                        return False
            return True

        await eventually(
            reported, within=10, every=0.1, what="every engine reporting its consumer and timers"
        )
        # Exactly one process says it leads, in its metrics too.
        assert [await metric(c.urls[n], "saga_cluster_leader") for n in _engines(c)].count(1.0) == 1
        assert await metric(c.urls[leader], "saga_cluster_lease_epoch") == epoch
        print(f"leader {leader} ({c.ids[leader]}), epoch {epoch}")


async def test_kill_9_of_the_leader_fails_over_within_the_bound(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        leader, epoch = await _one_leader(c)
        survivors = sorted(n for n in c.urls if n != leader)
        c.deploy.kill(leader)
        killed_at = time.monotonic()
        assert await c.deploy.child(leader).process.wait() == -9

        async def new_leader() -> tuple[str, int] | None:
            views = await c.views(survivors)
            if views is None:
                return None
            leaders = {(v["leader"]["node_id"], v["leader"]["epoch"]) for v in views.values()}
            if len(leaders) != 1:
                return None
            ((node, new_epoch),) = leaders
            return (c.name_of(node), new_epoch) if node is not None and new_epoch > epoch else None

        successor, new_epoch = await eventually(new_leader, within=10, every=0.05, what="a new leader")
        failover = time.monotonic() - killed_at

        async def gone_from_every_view() -> bool:
            views = await c.views(survivors)
            return views is not None and all(
                c.ids[leader] not in {n["node_id"] for n in v["nodes"]} for v in views.values()
            )

        await eventually(gone_from_every_view, within=10, every=0.05, what="the killed node leaving")
        left = time.monotonic() - killed_at
        print(
            f"kill -9 of leader {leader} (epoch {epoch}): {successor} leads epoch {new_epoch} after "
            f"{failover:.2f}s (bound {FAILOVER_BOUND_S:.1f}s); the killed node left every view after "
            f"{left:.2f}s"
        )
        assert successor in _engines(c)
        assert failover <= FAILOVER_BOUND_S
        # The successor measured the hand-over itself: how long the lease stood still before it took it.
        handovers = await metric(c.urls[successor], "saga_cluster_handover_seconds_count")
        handover_s = await metric(c.urls[successor], "saga_cluster_handover_seconds_sum")
        assert handovers >= 1
        assert handover_s <= FAILOVER_BOUND_S * handovers
        print(f"the successor's own hand-over measure: {handover_s / handovers:.2f}s on average")
        # Liveness: lease_ms without a moving heartbeat, plus one read interval, plus the poll above.
        assert left <= FAILOVER_BOUND_S

        # The new leader spreads every shard over the two engines left, and every survivor agrees.
        async def reassigned() -> bool:
            return await c.agreed(survivors, set(survivors)) == (successor, new_epoch)

        await eventually(reassigned, within=10, every=0.1, what="the shards reassigned")


async def test_a_paused_leaders_next_write_is_refused_by_the_store(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        leader, epoch = await _one_leader(c)
        others = sorted(n for n in c.urls if n != leader)
        assert await metric(c.urls[leader], STALE) == 0
        child = c.deploy.child(leader)
        child.pause()
        paused_at = time.monotonic()

        async def taken_over() -> tuple[str, int] | None:
            views = await c.views(others)
            if views is None:
                return None
            leaders = {(v["leader"]["node_id"], v["leader"]["epoch"]) for v in views.values()}
            if len(leaders) != 1:
                return None
            ((node, new_epoch),) = leaders
            return (c.name_of(node), new_epoch) if node is not None and new_epoch > epoch else None

        successor, new_epoch = await eventually(taken_over, within=10, every=0.05, what="a takeover")
        took = time.monotonic() - paused_at
        child.resume()

        async def refused() -> float:
            return await metric(c.urls[leader], STALE)

        count = await eventually(refused, within=10, every=0.1, what="the stale write refused and counted")

        async def follows() -> bool:
            view = await c.view(leader)
            return (
                view is not None
                and view["leader"]["node_id"] == c.ids[successor]
                and view["leader"]["epoch"] >= new_epoch
                and view["node"]["leader"] is not True
            )

        await eventually(follows, within=10, every=0.1, what="the woken leader following")
        assert await metric(c.urls[leader], "saga_cluster_leader") == 0
        print(
            f"SIGSTOP of leader {leader} (epoch {epoch}): {successor} took over (epoch {new_epoch}) after "
            f"{took:.2f}s; after SIGCONT the store refused {count:.0f} stale write(s) of {leader}"
        )

        # Fencing, as the store holds it: one writer per epoch, and each epoch is its acquisition's revision.
        history = await c.lease_history()
        writers: dict[int, set[str]] = defaultdict(set)
        for event in history:
            writers[event["epoch"]].add(event["holder"])
            if event["type"] == "LeaseAcquired":
                assert event["epoch"] == event["revision"]
        assert all(len(w) == 1 for w in writers.values()), dict(writers)
        assigned = [(e["epoch"], e["holder"]) for e in history if e["type"] == "ShardsAssigned"]
        assert {epoch, new_epoch} <= {e for e, _ in assigned}
        assert len({e for e, _ in assigned}) == len(set(assigned))  # one writer per epoch's assignments


# --- the embedded store: one process, every role --------------------------------------------------------


async def test_on_the_embedded_store_cluster_mode_is_one_process_with_every_role(tmp_path: Path) -> None:
    from tests.system.service import running_service

    async with (
        running_service(tmp_path, **CLUSTER_ENV) as service,
        aiohttp.ClientSession() as http,
    ):

        async def leading() -> dict[str, Any] | None:
            async with http.get(f"{service.url}/health/cluster") as response:
                body: dict[str, Any] = await response.json()
            return body if body["assignment"] is not None else None

        body = await eventually(leading, within=10, every=0.1, what="the one node leading")
        me = body["node"]["node_id"]
        assert body["cluster"] is True
        assert body["leader"]["node_id"] == me
        assert [n["node_id"] for n in body["nodes"]] == [me]
        assert body["nodes"][0]["roles"] == ["api", "engine", "projector"]
        assert body["assignment"]["by_node"] == {me: list(range(SHARDS))}


def test_a_single_role_on_the_embedded_store_is_refused_in_cluster_mode(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.system.service import ROOT, outside_settings

    environment = {
        **outside_settings(),
        **CLUSTER_ENV,
        "SAGA_EVENT_STORE__DATA_DIR": str(tmp_path / "data"),
        "SAGA_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--role", "engine"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    output = (done.stdout + done.stderr).decode()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("event") == "configuration_error"]
    assert len(errors) == 1
    assert errors[0]["detail"].startswith("cluster.enabled: cluster mode needs an event store every node")


async def test_each_engine_fires_the_due_timers_of_its_shards(tmp_path: Path) -> None:
    """Three engines share the timers: each leaves the others' due timers to them (counted) and every
    saga still ends; the checker finds nothing in the histories."""
    from tests.e2e.crash_support import DEFINITIONS, SERVICES, status_of
    from tests.faults.checker import PAUSED, TERMINAL, check
    from tests.faults.participant import FaultParticipants, ParticipantRates
    from tests.system.deployment import histories

    # Busy answers make retries, and every retry waits for its timer.
    participants = FaultParticipants(3, ParticipantRates(busy=0.3), rejectable=set())
    await participants.start()
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {s: participants.url(s) for s in SERVICES},
        topology=Topology(apis=1, engines=3, projectors=0),
        **CLUSTER_ENV,
    )
    try:
        async with deploy, aiohttp.ClientSession() as http:
            api = deploy.api_urls[0]
            engines = {n: deploy.roles[n].url for n in deploy.names_of("engine")}

            async def assigned() -> bool:
                async with http.get(f"{api}/health/cluster") as r:
                    body = await r.json()
                assignment = body["assignment"]
                return assignment is not None and len(assignment["by_node"]) == 3

            await eventually(assigned, within=20, every=0.1, what="the shards spread over three engines")
            for definition in DEFINITIONS.values():
                async with http.post(f"{api}/api/v1/sagas/definitions", json=definition) as r:
                    assert r.status == 201, await r.text()
            names = sorted(DEFINITIONS)
            started = []
            for i in range(30):
                body = {"saga_name": names[i % 2], "context": {"order_id": f"o-{i}", "amount": i}}
                async with http.post(f"{api}/api/v1/sagas/instances", json=body) as r:
                    assert r.status == 201, await r.text()
                    started.append((await r.json())["saga_id"])

            async def settled() -> bool:
                found = await histories(deploy.store_url, started)
                return all(status_of(h) in TERMINAL | PAUSED for h in found.values())

            await eventually(settled, within=60, every=0.5, what="every saga settling")
            left = {n: await metric(u, "saga_engine_timers_left_to_owner_total") for n, u in engines.items()}
            fired_for = {
                n: await metric(u, "saga_engine_timers_fired_for_owner_total") for n, u in engines.items()
            }
            found = await histories(deploy.store_url, started)
            await participants.idle(within=10)
    except BaseException:
        _dump(logs, deploy)
        raise
    finally:
        await participants.close()
    print(f"timers left to their owner by node {left}; fired for an owner {fired_for}")
    assert all(n > 0 for n in left.values()), left  # every engine left some timers to the others
    violations = check(found, participants.calls, participants.effects, started, DEFINITIONS)
    assert not violations, violations[:20]


#: the longest a saga may sit between two of its own events while the cluster fails over: the failover
#: bound, the longest retry backoff and participant hang of the run, and a slack for a loaded machine
STALL_BOUND_S = FAILOVER_BOUND_S + 2.0 + 1.6 + 3.0


def _longest_stall(history: list[Any]) -> float:
    times = [e.recorded_at.timestamp() for e in history]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def _saga_run(
    tmp_path: Path, disrupt: Any, *, rates: Any, rejectable: Any, expect_all_completed: bool
) -> str:
    """Three engines (cluster mode) and one API run sagas against participants while ``disrupt`` does
    its worst; then every saga must settle, none may stall past the bound, and the checker must find
    nothing. Returns the run's report."""
    from tests.e2e.crash_support import DEFINITIONS, SERVICES, answered_to_the_dead, status_of
    from tests.faults.checker import PAUSED, TERMINAL, check
    from tests.faults.participant import FaultParticipants
    from tests.system.deployment import histories

    participants = FaultParticipants(5, rates, rejectable=rejectable)
    await participants.start()
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {s: participants.url(s) for s in SERVICES},
        topology=Topology(apis=1, engines=3, projectors=0),
        **CLUSTER_ENV,
    )
    started: list[str] = []
    try:
        async with deploy, aiohttp.ClientSession() as http:
            api = deploy.api_urls[0]
            for definition in DEFINITIONS.values():
                async with http.post(f"{api}/api/v1/sagas/definitions", json=definition) as r:
                    assert r.status == 201, await r.text()
            names = sorted(DEFINITIONS)

            async def start(count: int) -> None:
                for _ in range(count):
                    i = len(started)
                    body = {"saga_name": names[i % 2], "context": {"order_id": f"o-{i}", "amount": i}}
                    async with http.post(f"{api}/api/v1/sagas/instances", json=body) as r:
                        assert r.status == 201, await r.text()
                        started.append((await r.json())["saga_id"])

            await start(30)
            killed_at_call, report = await disrupt(deploy, http, participants, start)

            async def settled() -> bool:
                found = await histories(deploy.store_url, started)
                return all(status_of(h) in TERMINAL | PAUSED for h in found.values())

            await eventually(settled, within=90, every=0.5, what="every saga settling")
            found = await histories(deploy.store_url, started)
            await participants.idle(within=10)
    except BaseException:
        _dump(logs, deploy)
        raise
    finally:
        await participants.close()
    endings = defaultdict(int)
    for h in found.values():
        endings[str(status_of(h))] += 1
    stall = max(_longest_stall(h) for h in found.values())
    report += f"; {len(found)} sagas, endings {dict(endings)}, longest stall {stall:.1f}s"
    print(report)
    assert stall <= STALL_BOUND_S, report
    if expect_all_completed:
        assert dict(endings) == {"completed": len(started)}, report
    calls = answered_to_the_dead(participants.calls, killed_at_call, found)
    violations = check(found, calls, participants.effects, started, DEFINITIONS)
    assert not violations, violations[:20]
    return report


async def test_sagas_in_flight_move_on_time_when_the_leader_is_killed(tmp_path: Path) -> None:
    """kill -9 of the leader while sagas run: a new leader takes its shards, due timers keep firing,
    retries and timeouts happen within the bound, no saga is stuck, no step is called under two keys."""
    from tests.e2e.crash_support import RATES, REJECTABLE

    async def kill_the_leader(deploy: Deployment, http: Any, participants: Any, start: Any) -> Any:
        async def leader() -> str | None:
            for name in deploy.names_of("engine"):
                if await metric(deploy.roles[name].url, "saga_cluster_leader") == 1.0:
                    return name
            return None

        victim = await eventually(leader, within=20, every=0.1, what="a leader")
        deploy.kill(victim)
        assert await deploy.child(victim).process.wait() == -9
        await asyncio.sleep(0.5)  # the victim's last requests reach the participants
        killed_at_call = len(participants.calls)
        await start(15)
        return killed_at_call, f"killed the leader {victim}"

    await _saga_run(tmp_path, kill_the_leader, rates=RATES, rejectable=REJECTABLE, expect_all_completed=False)


async def test_a_rolling_restart_loses_stalls_and_compensates_nothing(tmp_path: Path) -> None:
    """Every engine restarted in turn (SIGTERM, start again) while sagas run, against participants that
    do not fail (so any compensation would be the restart's): every saga completes, none stalls past the
    bound."""
    from tests.faults.participant import ParticipantRates

    async def roll(deploy: Deployment, http: Any, participants: Any, start: Any) -> Any:
        codes = []
        for name in deploy.names_of("engine"):
            codes.append(await deploy.restart(name))
            await start(5)
        assert codes == [0, 0, 0]
        return 0, "rolled every engine"

    await _saga_run(tmp_path, roll, rates=ParticipantRates(), rejectable=set(), expect_all_completed=True)


async def test_a_paused_engines_sagas_move_on_through_the_others(tmp_path: Path) -> None:
    """SIGSTOP of an engine that is not the leader, with sagas in flight: it keeps its share of the
    persistent subscription (the server has not timed it out), but it leaves the others' views after
    lease_ms, so its shards' timers are fired by them and its sagas move on within the stall bound;
    SIGCONT after 6 s: what it then tries to write for sagas that moved on loses (expected revision) and
    the checker finds nothing."""
    from tests.e2e.crash_support import RATES, REJECTABLE

    async def pause_one(deploy: Deployment, http: Any, participants: Any, start: Any) -> Any:
        leaders = [
            n for n in deploy.names_of("engine") if await metric(deploy.roles[n].url, "saga_cluster_leader")
        ]
        victim = next(n for n in deploy.names_of("engine") if n not in leaders)
        deploy.child(victim).pause()
        paused_at = len(participants.calls)
        await start(10)
        await asyncio.sleep(6)
        deploy.child(victim).resume()
        return paused_at, f"paused {victim} for 6 s"

    await _saga_run(tmp_path, pause_one, rates=RATES, rejectable=REJECTABLE, expect_all_completed=False)
