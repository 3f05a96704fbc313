"""The production shape as separate processes on the event store's client protocol: two API processes,
two engine processes in one persistent-subscription group and one projector, on the local
KurrentDB-compatible server (and on a real server when ``EVENTSTORE_URL`` is set).

Sagas of two shapes are started through both APIs against participants that answer slowly past
deadlines, busy or with rejections (served from this process, recording every call). Both engines must
have called participants before one of them is killed with SIGKILL while it has calls in flight; more
sagas are started after the kill. Every saga must end terminal or waiting for a person, the surviving
engine must have finished sagas the killed one had begun, the read model served by the other API process
must agree with the histories, and the history checker (tests/faults/checker.py, R1 to R7) must find
nothing over the histories read back through the store's client protocol. ``SAGA_PROCESSES_SEED`` picks
the participants' seed; what happened is printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from orchestrator.dev import Topology
from tests.e2e.crash_support import DEFINITIONS, RATES, REJECTABLE, SERVICES, answered_to_the_dead, status_of
from tests.faults.checker import PAUSED, TERMINAL, check
from tests.faults.participant import FaultParticipants, ParticipantRates
from tests.system.deployment import (
    deployment,
    eventually,
    histories,
    metric,
    node_id,
    print_logs,
    store_process,
    stores,
    writers,
)

SEED = int(os.environ.get("SAGA_PROCESSES_SEED", "7"))
BEFORE_KILL, AFTER_KILL = 40, 20
#: sagas started one by one while waiting to catch the victim mid-call, at most
FEED = 300
STEP_CALLS = "saga_step_duration_seconds_count"


async def register(api: str) -> None:
    async with aiohttp.ClientSession() as http:
        for definition in DEFINITIONS.values():
            async with http.post(f"{api}/api/v1/sagas/definitions", json=definition) as response:
                assert response.status in (200, 201), await response.text()


async def start(apis: list[str], count: int, first: int) -> list[str]:
    """``count`` sagas, alternating the shapes and the API processes; the ids each API acknowledged."""
    names = sorted(DEFINITIONS)
    started = []
    async with aiohttp.ClientSession() as http:
        for i, api in zip(range(first, first + count), itertools.cycle(apis), strict=False):
            body = {"saga_name": names[i % 2], "context": {"order_id": f"o-{i}", "amount": 10 + i}}
            async with http.post(f"{api}/api/v1/sagas/instances", json=body) as response:
                assert response.status == 201, await response.text()
                started.append(str((await response.json())["saga_id"]))
    return started


async def read_model_status(api: str, saga_id: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{api}/api/v1/sagas/instances/{saga_id}") as r:
        return str((await r.json()).get("status")) if r.status == 200 else f"http {r.status}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("store_name", stores())
async def test_roles_as_processes_survive_the_kill_of_an_engine(tmp_path: Path, store_name: str) -> None:
    began = time.monotonic()
    participants = FaultParticipants(SEED, RATES, rejectable=REJECTABLE)
    await participants.start()
    report = [f"seed={SEED} (SAGA_PROCESSES_SEED), store {store_name}"]
    deploy, logs = deployment(
        tmp_path,
        store_process(store_name),
        {s: participants.url(s) for s in SERVICES},
        topology=Topology(apis=2, engines=2, projectors=1),
    )
    try:
        async with deploy:
            apis = deploy.api_urls
            engines = {name: deploy.roles[name].url for name in deploy.names_of("engine")}
            nodes = {name: await node_id(url) for name, url in engines.items()}
            victim, survivor = sorted(engines)
            await register(apis[0])
            acknowledged = await start(apis, BEFORE_KILL, 0)

            async def both_engines_called() -> bool:
                counts = [await metric(url, STEP_CALLS) for url in engines.values()]
                return all(counts)

            await eventually(both_engines_called, within=60, what="both engines calling participants")

            async def victim_mid_call() -> bool:
                return await metric(engines[victim], "saga_engine_calls_in_flight") > 0

            # Keep work coming until the victim is caught with a call in flight (on a loaded machine the
            # first batch may be done before that): a saga every 100 ms, at most FEED of them.
            caught = asyncio.Event()

            async def feed() -> None:
                # Never cancelled mid-start: every saga a participant hears of must be in the histories.
                for i in range(FEED):
                    if caught.is_set():
                        return
                    acknowledged.extend(await start(apis, 1, BEFORE_KILL + AFTER_KILL + i))
                    await asyncio.sleep(0.1)

            feeder = asyncio.create_task(feed())
            try:
                await eventually(
                    victim_mid_call, within=60, every=0.02, what=f"{victim} having calls in flight"
                )
            finally:
                caught.set()
            calls_by = {n: await metric(u, STEP_CALLS) for n, u in engines.items()}
            deploy.kill(victim)
            assert await deploy.child(victim).process.wait() == -9
            # Requests the victim sent just before it died may still be queued in this process's event
            # loop: let them arrive, so they count among the calls whose answers may have died with it.
            await asyncio.sleep(0.5)
            killed_at = len(participants.calls)
            report.append(f"killed {victim} ({nodes[victim]}) after {killed_at} calls; calls by {calls_by}")

            await feeder
            acknowledged += await start(apis, AFTER_KILL, BEFORE_KILL)

            async def all_settled() -> bool:
                found = await histories(deploy.store_url, acknowledged)
                return all(status_of(h) in TERMINAL | PAUSED for h in found.values())

            await eventually(all_settled, within=120, every=0.5, what="every saga settling")
            survivor_calls = await metric(engines[survivor], STEP_CALLS)
            assert survivor_calls > calls_by[survivor], "the surviving engine called nobody after the kill"

            found = await histories(deploy.store_url, acknowledged)
            # The read model (projector process -> Redis) as the other API process serves it.
            for saga_id, history in found.items():

                async def agrees(saga_id: str = saga_id, history: list = history) -> bool:  # type: ignore[type-arg]
                    return await read_model_status(apis[1], saga_id) == status_of(history)

                await eventually(agrees, within=30, what=f"the read model of {saga_id} agreeing")
            await participants.idle(within=10)
        exits = deploy.exited()
    except BaseException:
        print_logs(deploy, logs)
        raise
    finally:
        await participants.close()

    # Every process but the killed engine stopped cleanly.
    assert exits.pop(victim) == -9
    assert all(code == 0 for code in exits.values()), exits

    # The survivor took over: sagas the killed engine had begun were finished by the other one.
    victim_writer, survivor_writer = f"engine:{nodes[victim]}", f"engine:{nodes[survivor]}"
    taken_over = [
        saga_id
        for saga_id, history in found.items()
        if victim_writer in (w := writers(history)) and survivor_writer in w[w.index(victim_writer) :]
    ]
    both = Counter(w for h in found.values() for w in set(writers(h)) if w.startswith("engine:"))
    endings = Counter(status_of(h) for h in found.values())
    calls = answered_to_the_dead(participants.calls, killed_at, found)
    report += [
        f"{len(found)} sagas, endings {dict(endings)}, {len(participants.calls)} calls, "
        f"{time.monotonic() - began:.1f}s",
        f"sagas written to by each engine {dict(both)}; begun by {victim} and finished by {survivor}: "
        f"{len(taken_over)}",
        f"participant faults {dict(participants.counts)}",
    ]
    print("\n".join(report))
    assert both[victim_writer], report
    assert both[survivor_writer], report
    assert taken_over, report
    violations = check(found, calls, participants.effects, acknowledged, DEFINITIONS)
    assert not violations, f"{len(violations)} violation(s) with seed {SEED}:\n" + "\n".join(
        [*violations[:40], *report]
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_revoked_api_key_is_refused_by_every_api_process_within_seconds(tmp_path: Path) -> None:
    """Two API processes on one store: a key created on one works on the other; revoked on the first,
    the second refuses it within the README's 5 s (measured)."""
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {},
        topology=Topology(apis=2, engines=0, projectors=0),
        SAGA_AUTH__MODE="trusted-header",
    )
    admin = {"X-Tenant-Id": "acme", "X-Roles": "admin"}
    try:
        async with deploy, aiohttp.ClientSession() as http:
            first, second = deploy.api_urls
            body = {"name": "billing", "roles": ["viewer"]}
            async with http.post(f"{first}/api/v1/api-keys", json=body, headers=admin) as response:
                assert response.status == 201, await response.text()
                issued = await response.json()
            key = {"X-API-Key": issued["secret"]}

            async def status_on_second() -> int:
                async with http.get(f"{second}/api/v1/sagas/definitions", headers=key) as response:
                    return response.status

            async def accepted() -> bool:
                return await status_on_second() != 401

            await eventually(accepted, within=5, every=0.05, what="the new key working on the other node")
            path = f"{first}/api/v1/api-keys/{issued['key']['key_id']}/revoke"
            async with http.post(path, json={"reason": "leaked"}, headers=admin) as response:
                assert response.status == 200
            revoked_at = time.monotonic()

            async def refused() -> bool:
                return await status_on_second() == 401

            await eventually(refused, within=5, every=0.02, what="the other node refusing the revoked key")
            print(f"revocation reached the other API process in {time.monotonic() - revoked_at:.3f}s")
    except BaseException:
        print_logs(deploy, logs)
        raise


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_tenants_in_flight_cap_holds_across_api_processes(tmp_path: Path) -> None:
    """The cap is counted by the shared read models: sagas started through one API process count against
    a start through the other; another tenant is not held back."""
    # Every call hangs past its deadline: the sagas stay running, then compensating, for many seconds.
    participants = FaultParticipants(SEED, ParticipantRates(hang=0.99, hang_s=5), rejectable=set())
    await participants.start()
    deploy, logs = deployment(
        tmp_path,
        store_process("local-server"),
        {s: participants.url(s) for s in SERVICES},
        topology=Topology(apis=2, engines=1, projectors=1),
        SAGA_AUTH__MODE="trusted-header",
        SAGA_AUTH__TENANT_LIMITS__MAX_IN_FLIGHT="2",
    )
    acme = {"X-Tenant-Id": "acme", "X-Roles": "admin"}
    globex = {"X-Tenant-Id": "globex", "X-Roles": "admin"}
    body = {"saga_name": "order-fanout", "context": {"order_id": "o", "amount": 1}}
    try:
        async with deploy, aiohttp.ClientSession() as http:
            first, second = deploy.api_urls
            for tenant in (acme, globex):
                definition = DEFINITIONS["order-fanout"]
                async with http.post(
                    f"{first}/api/v1/sagas/definitions", json=definition, headers=tenant
                ) as r:
                    assert r.status == 201, await r.text()
            for _ in range(2):
                async with http.post(f"{first}/api/v1/sagas/instances", json=body, headers=acme) as r:
                    assert r.status == 201, await r.text()

            async def counted_on_the_other() -> bool:
                async with http.get(f"{second}/api/v1/sagas/metrics", headers=acme) as r:
                    return r.status == 200 and (await r.json())["by_status"].get("running", 0) >= 2

            await eventually(counted_on_the_other, within=10, every=0.05, what="the read models counting")
            async with http.post(f"{second}/api/v1/sagas/instances", json=body, headers=acme) as r:
                assert r.status == 429, await r.text()
                assert r.headers["Retry-After"] == "1"
            async with http.post(f"{second}/api/v1/sagas/instances", json=body, headers=globex) as r:
                assert r.status == 201, await r.text()
    except BaseException:
        print_logs(deploy, logs)
        raise
    finally:
        await participants.close()
