"""The audit log through the HTTP API: every mutation is derived once (also with two derivers and a
restart), every 403 is a direct record, unauthenticated requests are sampled, the log is the auditor's
and the tenant's own, and its filters and cursor work."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.app.audit import AuditTrail, audit_stream
from tests.api.conftest import INSTANCES, Api, ApiFactory, problem
from tests.seed import SEED_DEFINITION, SEED_START

AUDIT = "/api/v1/audit"
ADMIN = {"X-Tenant-Id": "acme", "X-Actor": "alice", "X-Roles": "admin"}
AUDITOR = {"X-Tenant-Id": "acme", "X-Actor": "carol", "X-Roles": "auditor"}
VIEWER = {"X-Tenant-Id": "acme", "X-Actor": "victor", "X-Roles": "viewer"}
GLOBEX_AUDITOR = {"X-Tenant-Id": "globex", "X-Actor": "gina", "X-Roles": "auditor"}


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)  # the deriver follows the store; bounded by the deadline


async def records(api: Api, headers: dict[str, str] = AUDITOR, **query: str) -> list[dict[str, Any]]:
    response = await api.client.get(AUDIT, headers=headers, params=query)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return list(body["items"])


async def test_mutations_and_denials_are_recorded_once_for_the_tenants_auditor(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    derivers = [asyncio.create_task(AuditTrail(api.store).derive_forever()) for _ in range(2)]
    try:
        assert (await api.register(SEED_DEFINITION, ADMIN)).status == 201
        saga_id = (await api.start(json.loads(SEED_START), ADMIN))["saga_id"]
        aborted = await api.post(f"{INSTANCES}/{saga_id}/abort", {"reason": "customer called"}, ADMIN)
        assert aborted.status in (200, 202, 409)
        key = await (await api.post("/api/v1/api-keys", {"name": "ci", "roles": ["viewer"]}, ADMIN)).json()
        await problem(await api.register(SEED_DEFINITION, VIEWER), 403)  # a denial
        expected = {"definition.register", "saga.start", "api-key.create"}
        if aborted.status != 409:
            expected.add("saga.abort")

        async def all_there() -> bool:
            return expected <= {r["action"] for r in await records(api)}

        await until(all_there)
        # A restart of a deriver (and a third one) writes nothing twice.
        derivers.append(asyncio.create_task(AuditTrail(api.store).derive_forever()))
        await asyncio.sleep(0.5)  # a negative: nothing more must appear while the derivers run
        found = await records(api)
    finally:
        for task in derivers:
            task.cancel()
        await asyncio.gather(*derivers, return_exceptions=True)
    sources = Counter(r["source"] for r in found if r.get("source"))
    assert all(n == 1 for n in sources.values()), sources
    by_action = {r["action"]: r for r in found}
    start = by_action["saga.start"]
    assert (start["actor"], start["auth"], start["saga_id"], start["result"]) == (
        "alice",
        "trusted-header",
        saga_id,
        "ok",
    )
    assert start["trace_id"] is None or len(start["trace_id"]) == 32
    assert by_action["api-key.create"]["target"] == key["key"]["key_id"]
    denied = [r for r in found if r["result"] == "denied"]
    assert [(r["actor"], r["action"]) for r in denied] == [("victor", "POST /api/v1/sagas/definitions")]
    assert key["secret"] not in json.dumps(found)
    # The log is the auditor's, and the tenant's own.
    await problem(await api.client.get(AUDIT, headers=ADMIN), 403)
    await problem(await api.client.get(AUDIT, headers=VIEWER), 403)
    assert await records(api, GLOBEX_AUDITOR) == []


async def test_filters_and_the_cursor(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    deriver = asyncio.create_task(AuditTrail(api.store).derive_forever())
    try:
        assert (await api.register(SEED_DEFINITION, ADMIN)).status == 201
        bob = {**ADMIN, "X-Actor": "bob"}
        ids = [(await api.start(json.loads(SEED_START), who))["saga_id"] for who in (ADMIN, bob, ADMIN)]

        async def three() -> bool:
            return len(await records(api, action="saga.start")) == 3

        await until(three)
    finally:
        deriver.cancel()
        await asyncio.gather(deriver, return_exceptions=True)
    assert [r["saga_id"] for r in await records(api, actor="bob")] == [ids[1]]
    assert [r["saga_id"] for r in await records(api, saga_id=ids[2])] == [ids[2]]
    assert len(await records(api, action="saga")) == 3  # a prefix
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await records(api, since=later) == []
    assert len(await records(api, until=later)) == 4
    seen, cursor = [], None
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        body = await (await api.client.get(AUDIT, headers=AUDITOR, params=params)).json()
        seen += [r["action"] for r in body["items"]]
        cursor = body["next_cursor"]
        if not body["items"]:
            break
    assert Counter(seen) == Counter({"definition.register": 1, "saga.start": 3})
    for bad in ({"since": "yesterday"}, {"until": "2026-01-01T00:00:00"}, {"cursor": "x"}):
        body = await problem(await api.client.get(AUDIT, headers=AUDITOR, params=bad), 400)
        assert body["errors"][0]["field"].startswith("query.")


async def test_unauthenticated_requests_are_sampled_not_recorded_one_by_one(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    for _ in range(25):
        await problem(await api.client.get(f"{INSTANCES}/x/events"), 401)  # no tenant header
    from orchestrator.api.deps import AUDIT as AUDIT_KEY

    await api.client.app[AUDIT_KEY].flush_samples()
    written = list(await api.store.read_stream(audit_stream("default")))
    assert len(written) == 1
    record = json.loads(written[0].data)
    assert (record["action"], record["result"], record["detail"]) == (
        "request.unauthenticated",
        "denied",
        "tenant-required: 25",
    )
