"""Fairness between tenants: a tenant over its start rate or its in-flight cap gets 429 with Retry-After
and nothing is appended; another tenant starts as usual; each refusal is counted by tenant and cap."""

from __future__ import annotations

import asyncio
import json

from orchestrator.settings import AuthSettings, TenantLimitSettings
from tests.api.conftest import INSTANCES, Api, ApiFactory, problem
from tests.seed import SEED_DEFINITION, SEED_START

ACME = {"X-Tenant-Id": "acme", "X-Roles": "admin"}
GLOBEX = {"X-Tenant-Id": "globex", "X-Roles": "admin"}


def throttled(api: Api, tenant: str, cap: str) -> float:
    return sum(
        s.value
        for m in api.registry.collect()
        if m.name == "saga_tenant_throttled"
        for s in m.samples
        if s.name.endswith("_total") and s.labels == {"tenant": tenant, "cap": cap}
    )


def limited(**limits: float) -> AuthSettings:
    return AuthSettings(mode="trusted-header", tenant_limits=TenantLimitSettings(**limits))  # type: ignore[arg-type]


async def test_a_tenant_over_its_start_rate_waits_and_the_others_do_not(make_api: ApiFactory) -> None:
    api = await make_api(mode=limited(start_rate_per_s=0.5, start_burst=2))
    for tenant in (ACME, GLOBEX):
        assert (await api.register(SEED_DEFINITION, tenant)).status == 201
    start = json.loads(SEED_START)
    for _ in range(2):
        assert (await api.post(INSTANCES, start, ACME)).status == 201
    before = await api.snapshot()
    response = await api.post(INSTANCES, start, ACME)
    body = await problem(response, 429)
    assert body["type"].endswith(":start-rate")
    assert int(response.headers["Retry-After"]) >= 1
    assert [e for e in await api.snapshot() if e not in before] == []
    assert throttled(api, "acme", "start-rate") == 1
    assert (await api.post(INSTANCES, start, GLOBEX)).status == 201


async def test_a_tenant_at_its_in_flight_cap_waits_and_the_others_do_not(
    make_api: ApiFactory, redis_url: str, redis_prefix: str
) -> None:
    api = await make_api(mode=limited(max_in_flight=2), redis=(redis_url, redis_prefix))
    for tenant in (ACME, GLOBEX):
        assert (await api.register(SEED_DEFINITION, tenant)).status == 201
    api.participants.script[("order-service", "validate")] = ["slow:3"]  # keeps the sagas running
    start = json.loads(SEED_START)
    for _ in range(2):
        assert (await api.post(INSTANCES, start, ACME)).status == 201
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # the read models count the two as running (they follow the store within milliseconds)
        counters = await (await api.client.get("/api/v1/sagas/metrics", headers=ACME)).json()
        if counters.get("by_status", {}).get("running", 0) >= 2 or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    before = await api.snapshot()
    response = await api.post(INSTANCES, start, ACME)
    body = await problem(response, 429)
    assert body["type"].endswith(":in-flight-cap")
    assert response.headers["Retry-After"] == "1"
    assert [e for e in await api.snapshot() if e not in before] == []
    assert throttled(api, "acme", "in-flight-cap") == 1
    assert (await api.post(INSTANCES, start, GLOBEX)).status == 201
