"""Two tenants in trusted-header mode: nothing crosses (404), and one client id makes one saga per tenant."""

from __future__ import annotations

import asyncio
import json

from tests.api.conftest import (
    DEFINITIONS,
    INSTANCES,
    Api,
    ApiFactory,
    fast_definition,
    problem,
)
from tests.seed import SEED_DEFINITION, SEED_START

ACME = {"X-Tenant-Id": "acme", "X-Actor": "alice", "X-Roles": "admin"}
GLOBEX = {"X-Tenant-Id": "globex", "X-Actor": "bob", "X-Roles": "admin"}


async def two_tenants(api: Api) -> tuple[str, str]:
    """A dead-lettered saga of acme (client id order-123) and a completed one of globex (same id)."""
    for tenant in (ACME, GLOBEX):
        assert (await api.register(SEED_DEFINITION, tenant)).status == 201
    assert (await api.register(fast_definition(), ACME)).status == 201
    api.participants.script[("payment-service", "charge")] = [422]
    api.participants.script[("inventory-service", "release-reservation")] = [422]
    body = {"saga_name": "fast-order", "context": {}, "saga_id": "order-123"}
    acme = (await api.start(body, ACME))["saga_id"]
    await api.wait_for(acme, {"SagaDeadLettered"}, tenant="acme")
    api.participants.script.clear()
    globex = (await api.start({**json.loads(SEED_START), "saga_id": "order-123"}, GLOBEX))["saga_id"]
    await api.wait_for(globex, {"SagaCompleted"}, tenant="globex")
    return acme, globex


async def test_nothing_crosses_tenants_on_the_write_side(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    acme, globex = await two_tenants(api)
    assert acme != globex  # the same client id in two tenants: two sagas
    before = await api.snapshot()
    for saga_id, other in ((acme, GLOBEX), (globex, ACME)):
        await problem(await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=other), 404)
        await problem(await api.client.get(f"{INSTANCES}/{saga_id}/stream", headers=other), 404)
        for name in ("abort", "retry", "skip", "resolve", "resume"):
            response = await api.post(f"{INSTANCES}/{saga_id}/{name}", {"reason": "x"}, other)
            await problem(response, 404)
    await problem(await api.client.get(f"{DEFINITIONS}/fast-order", headers=GLOBEX), 404)
    assert await api.snapshot() == before
    # Each tenant sees its own.
    events = await (await api.client.get(f"{INSTANCES}/{acme}/events", headers=ACME)).json()
    assert events["items"][0]["actor"] == "alice"
    assert (await api.client.get(f"{INSTANCES}/{globex}/events", headers=GLOBEX)).status == 200
    # Acme's person can act on acme's saga.
    retried = await api.post(f"{INSTANCES}/{acme}/resolve", {"reason": "done by hand"}, ACME)
    assert retried.status == 202


async def test_tenant_header_is_required_and_checked(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    body = await problem(await api.register(SEED_DEFINITION), 401)
    assert body["errors"][0]["field"] == "header.X-Tenant-Id"
    body = await problem(await api.register(SEED_DEFINITION, {"X-Tenant-Id": "../etc"}), 400)
    assert body["errors"][0]["field"] == "header.X-Tenant-Id"
    assert (await api.client.get("/health/live")).status == 200  # health needs no tenant
    assert await api.snapshot() == []
    # The deployment's admin routes need the admin role in the operations tenant (the default one).
    viewer = {**ACME, "X-Roles": "viewer"}
    await problem(await api.client.get("/api/v1/admin/subscriptions", headers=viewer), 403)
    await problem(await api.client.get("/api/v1/admin/subscriptions", headers=ACME), 403)
    operator = {"X-Tenant-Id": "default", "X-Roles": "admin"}
    ok = await api.client.get("/api/v1/admin/subscriptions", headers=operator)
    assert ok.status == 200


async def test_nothing_crosses_tenants_on_the_read_side(
    make_api: ApiFactory, redis_url: str, redis_prefix: str
) -> None:
    api = await make_api(mode="trusted-header", redis=(redis_url, redis_prefix))
    acme, globex = await two_tenants(api)

    async def listed(path: str, tenant: dict[str, str]) -> set[str]:
        page = await (await api.client.get(path, headers=tenant)).json()
        return {s["saga_id"] for s in page["items"]}

    deadline = asyncio.get_running_loop().time() + 20
    while await listed("/api/v1/sagas/dlq", ACME) != {acme} or await listed(INSTANCES, GLOBEX) != {globex}:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert await listed(INSTANCES, ACME) == {acme}
    assert await listed("/api/v1/sagas/dlq", GLOBEX) == set()
    await problem(await api.client.get(f"{INSTANCES}/{acme}", headers=GLOBEX), 404)
    await problem(await api.client.get(f"{INSTANCES}/{globex}", headers=ACME), 404)
    assert (await api.client.get(f"{INSTANCES}/{acme}", headers=ACME)).status == 200
    catalogue = await (await api.client.get(DEFINITIONS, headers=GLOBEX)).json()
    assert [d["name"] for d in catalogue["items"]] == ["order-processing"]
    globex_counts = await (await api.client.get("/api/v1/sagas/metrics", headers=GLOBEX)).json()
    assert globex_counts["total"] == 1
