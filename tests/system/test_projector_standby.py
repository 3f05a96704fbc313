"""The projector active/standby as processes: one API, one engine and two projector processes on the local
KurrentDB-compatible server and the bundled Redis (README "Cluster mode", projections.service).

- Pause the active projector (SIGSTOP) past its lease: the standby takes over within the bound; woken
  (SIGCONT), the old one stands by and its writes are refused by the lease fence. Then SIGKILL the new
  active one: the first takes over again, from the stored position. Sagas run throughout; at the end the
  read models (every saga, the counters, the DLQ, and every key of the generation) equal what a rebuild
  produces.
- A rebuild whose owner dies (SIGKILL, caught between recording its target and switching) is resumed by
  the standby from the target's stored position; readers see the old generation until the switch.

The take-over times are measured and printed (``pytest -s``); the bound is the lease TTL plus a tenth of it
(the standby's poll), counted from the holder's last renewal, so from the kill or the pause too.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.dev import Deployment, Topology
from projections.redis_store import RedisViewStore
from projections.runner import RunnerSettings
from tests.e2e.crash_support import DEFINITIONS, REJECTABLE, SERVICES, status_of
from tests.faults.checker import PAUSED, TERMINAL
from tests.faults.participant import FaultParticipants, ParticipantRates
from tests.integration._projection_support import dump_generation
from tests.system.deployment import deployment, eventually, histories, metric, print_logs, store_process

TTL = RunnerSettings().lease_ttl
BOUND = TTL * 1.1
#: the test's own polling and a loaded 2-core machine
SLACK = 2.0
PREFIX = "saga"  # the roles' default redis.prefix
RATES = ParticipantRates(reject=0.15)


async def register(http: aiohttp.ClientSession, api: str) -> None:
    for definition in DEFINITIONS.values():
        async with http.post(f"{api}/api/v1/sagas/definitions", json=definition) as response:
            assert response.status in (200, 201), await response.text()


async def start(http: aiohttp.ClientSession, api: str, count: int, first: int) -> list[str]:
    names = sorted(DEFINITIONS)
    started = []
    for i in range(first, first + count):
        body = {"saga_name": names[i % 2], "context": {"order_id": f"o-{i}", "amount": 10 + i}}
        async with http.post(f"{api}/api/v1/sagas/instances", json=body) as response:
            assert response.status == 201, await response.text()
            started.append(str((await response.json())["saga_id"]))
    return started


async def sample(url: str, name: str) -> float | None:
    """One metric of one process; None when it does not answer promptly (paused, say)."""
    try:
        return await asyncio.wait_for(metric(url, name), 1.0)
    except (aiohttp.ClientError, TimeoutError):
        return None


async def holder(deploy: Deployment) -> str | None:
    """The projector process that says it holds the projector lease (None: none, or not only one)."""
    held = [
        name
        for name in deploy.names_of("projector")
        if deploy.child(name).running and await sample(deploy.roles[name].url, "projection_lease_held") == 1
    ]
    return held[0] if len(held) == 1 else None


async def takes_over(deploy: Deployment, name: str, since: float, what: str) -> float:
    """Wait until ``name`` holds the lease; seconds since ``since`` (must be within the bound)."""

    async def holds() -> bool:
        return await sample(deploy.roles[name].url, "projection_lease_held") == 1

    await eventually(holds, within=BOUND + SLACK + 5, every=0.05, what=what)
    took = time.monotonic() - since
    print(f"{what}: {took:.2f} s (bound {BOUND:.1f} s = lease TTL {TTL:.0f} s + its standby poll)")
    assert took <= BOUND + SLACK, f"{what} took {took:.2f} s"
    return took


async def settled(http: aiohttp.ClientSession, deploy: Deployment, saga_ids: list[str]) -> None:
    """Every saga ended (or waits for a person), and the read model has applied its last event. (Not the
    lag in positions: records that no saga view takes, after the last saga event, are passed only at the
    subscription's next checkpoint.)"""
    api = deploy.api_urls[0]

    async def all_settled() -> bool:
        found = await histories(deploy.store_url, saga_ids)
        return all(status_of(h) in TERMINAL | PAUSED for h in found.values())

    await eventually(all_settled, within=120, every=0.5, what="every saga settling")
    found = await histories(deploy.store_url, saga_ids)

    async def applied() -> bool:
        for saga_id, history in found.items():
            async with http.get(f"{api}/api/v1/sagas/instances/{saga_id}") as response:
                view = await response.json()
            if response.status != 200 or view["revision"] != history[-1].revision:
                return False
            assert view["status"] == status_of(history), view
        return True

    await eventually(applied, within=30, what="the read model applying every saga's last event")


async def read_models(http: aiohttp.ClientSession, api: str, saga_ids: list[str]) -> dict[str, Any]:
    """What the API serves from the read model: every saga, the counters, the DLQ."""
    out: dict[str, Any] = {}
    for saga_id in saga_ids:
        async with http.get(f"{api}/api/v1/sagas/instances/{saga_id}") as response:
            out[saga_id] = await response.json()
    for path in ("/api/v1/sagas/metrics", "/api/v1/sagas/dlq?limit=200"):
        async with http.get(f"{api}{path}") as response:
            assert response.status == 200, await response.text()
            out[path] = await response.json()
    return out


async def rebuild(http: aiohttp.ClientSession, projector: str) -> dict[str, Any]:
    """Start a rebuild on the active projector's admin API."""
    async with http.post(f"{projector}/api/v1/admin/projections/rebuild") as response:
        assert response.status == 202, await response.text()
        return dict(await response.json())


async def rebuilt(http: aiohttp.ClientSession, projector: str) -> dict[str, Any]:
    """Wait for the projector's current (or resumed) rebuild to finish; its last progress."""

    async def finished() -> dict[str, Any] | None:
        async with http.get(f"{projector}/api/v1/admin/projections/rebuild") as response:
            body = dict(await response.json())
        # `running` is about a rebuild started through this API; a resumed one shows in its progress.
        progress = body["progress"]
        if body["running"] or progress is None or progress["phase"] not in ("done", "failed"):
            return None
        return body

    body = await eventually(finished, within=60, what="the rebuild finishing")
    assert body["error"] is None, body
    assert body["progress"]["phase"] == "done", body
    return dict(body["progress"])


async def compare_with_a_rebuild(
    http: aiohttp.ClientSession, deploy: Deployment, views: RedisViewStore, projector: str, ids: list[str]
) -> None:
    api = deploy.api_urls[0]
    generation = await views.active_generation()
    assert generation is not None
    served, (keys, expiries) = await read_models(http, api, ids), await dump_generation(views, generation)
    await rebuild(http, deploy.roles[projector].url)
    progress = await rebuilt(http, deploy.roles[projector].url)
    assert progress["generation"] == await views.active_generation() != generation
    again, (rebuilt_keys, rebuilt_expiries) = (
        await read_models(http, api, ids),
        await dump_generation(views, progress["generation"]),
    )
    assert again == served
    assert rebuilt_keys == keys
    assert rebuilt_expiries.keys() == expiries.keys()
    assert all(abs(rebuilt_expiries[k] - expiries[k]) <= 2_000 for k in expiries)
    print(f"read models of {len(ids)} sagas ({len(keys)} keys) identical to a rebuild")


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_standby_projector_takes_over_a_paused_and_a_killed_one(tmp_path: Path) -> None:
    participants = FaultParticipants(3, RATES, rejectable=REJECTABLE)
    await participants.start()
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {s: participants.url(s) for s in SERVICES},
        topology=Topology(apis=1, engines=1, projectors=2),
        SAGA_LOG_LEVEL="INFO",
    )
    try:
        async with deploy, aiohttp.ClientSession() as http:
            views = RedisViewStore.connect(deploy.redis_url, PREFIX)
            try:
                api = deploy.api_urls[0]
                first = await eventually(lambda: holder(deploy), within=10, what="one active projector")
                (second,) = set(deploy.names_of("projector")) - {first}
                urls = {name: deploy.roles[name].url for name in (first, second)}
                await register(http, api)
                ids = await start(http, api, 20, 0)

                async def applied() -> bool:
                    return await metric(urls[first], "projection_events_applied_total") > 0

                await eventually(applied, within=30, what="the active projector applying")
                assert await metric(urls[second], "projection_events_applied_total") == 0

                # A pause past the lease: the standby takes over; the woken one stands by, fenced.
                deploy.child(first).pause()
                paused = time.monotonic()
                ids += await start(http, api, 10, 20)
                await takes_over(deploy, second, paused, f"{second} taking over from the paused {first}")
                ids += await start(http, api, 10, 30)
                deploy.child(first).resume()

                async def stood_down() -> bool:
                    return await metric(urls[first], "projection_lease_losses_total") == 1

                await eventually(stood_down, within=10, what=f"the woken {first} standing by")
                assert await metric(urls[first], "projection_lease_held") == 0
                assert await metric(urls[second], "projection_lease_held") == 1
                assert await holder(deploy) == second
                owner, _ = await views.lease_holder()
                fenced = await metric(urls[first], "projection_fenced_batches_total")
                print(f"{first} woke, stood by (lease held by {owner!r}; {fenced:.0f} batches fenced)")

                # SIGKILL of the active one: the first takes over again, from the stored position.
                deploy.kill(second)
                assert await deploy.child(second).process.wait() == -9
                killed = time.monotonic()
                before = await metric(urls[first], "projection_events_applied_total")
                ids += await start(http, api, 10, 40)
                await takes_over(deploy, first, killed, f"{first} taking over from the killed {second}")
                await settled(http, deploy, ids)
                resumed = await metric(urls[first], "projection_events_applied_total") - before
                saga_events = sum(len(h) for h in (await histories(deploy.store_url, ids)).values())
                print(f"{first} applied {resumed:.0f} events after the kill, of {saga_events} saga events")
                assert resumed < saga_events  # from the stored position, not a replay from the start
                assert await metric(urls[first], "projection_lease_takeovers_total") == 2
                assert await metric(urls[first], "projection_handover_seconds_count") == 1
                assert await metric(urls[first], "projection_handover_seconds_sum") <= BOUND + SLACK

                await compare_with_a_rebuild(http, deploy, views, first, ids)
            finally:
                await views.close()
    except BaseException:
        print_logs(deploy, logs)
        raise
    finally:
        await participants.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_rebuild_whose_owner_is_killed_is_resumed_by_the_standby(tmp_path: Path) -> None:
    participants = FaultParticipants(5, RATES, rejectable=REJECTABLE)
    await participants.start()
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {s: participants.url(s) for s in SERVICES},
        topology=Topology(apis=1, engines=1, projectors=2),
        SAGA_LOG_LEVEL="INFO",
    )
    try:
        async with deploy, aiohttp.ClientSession() as http:
            views = RedisViewStore.connect(deploy.redis_url, PREFIX)
            try:
                api = deploy.api_urls[0]
                owner = await eventually(lambda: holder(deploy), within=10, what="one active projector")
                (standby,) = set(deploy.names_of("projector")) - {owner}
                await register(http, api)
                ids = await start(http, api, 60, 0)
                await settled(http, deploy, ids)
                serving = await views.active_generation()

                await rebuild(http, deploy.roles[owner].url)

                # Caught between recording its target and switching: frozen, looked at, then killed.
                async def building() -> int | None:
                    target = await views.rebuild_target()
                    return target if target and await views.position(target) is not None else None

                target = await eventually(building, within=10, every=0.001, what="the rebuild's first batch")
                deploy.child(owner).pause()
                state = await views.active_generation(), await views.position(target)
                deploy.kill(owner)
                assert await deploy.child(owner).process.wait() == -9
                killed = time.monotonic()
                print(f"{owner} killed mid-rebuild: generation {target} at {state[1]}, serving {state[0]}")
                assert state[0] == serving, "the rebuild switched before the kill"
                ids += await start(http, api, 10, 60)
                assert await views.active_generation() == serving  # readers keep the old generation

                await takes_over(deploy, standby, killed, f"{standby} taking over from the killed {owner}")
                progress = await rebuilt(http, deploy.roles[standby].url)
                assert progress["generation"] == target
                assert await views.active_generation() == target
                assert await views.rebuild_target() is None
                assert await views.generations() == [target]
                url = deploy.roles[standby].url
                assert await metric(url, "projection_rebuilds_resumed_total") == 1
                print(f"{standby} resumed the rebuild: {json.dumps(progress)}")

                await settled(http, deploy, ids)
                await compare_with_a_rebuild(http, deploy, views, standby, ids)
            finally:
                await views.close()
    except BaseException:
        print_logs(deploy, logs)
        raise
    finally:
        await participants.close()
