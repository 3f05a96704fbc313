"""The permission table (orchestrator.app.permissions), cell by cell through the HTTP API: every role (and
no role) against one request per permission that has a route; a refused request answers 403 as
problem+json, is counted, and changes nothing. The README's table is the code's."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from orchestrator.app.permissions import TABLE, Permission, Role, table_rows
from tests.api.conftest import DEFINITIONS, INSTANCES, Api, ApiFactory, fast_definition, problem
from tests.system.service import ROOT

TENANT = "default"  # the operations tenant: its admins may use the deployment's routes


def who(*roles: str) -> dict[str, str]:
    return {"X-Tenant-Id": TENANT, "X-Actor": f"as-{'-'.join(roles) or 'nobody'}", "X-Roles": ",".join(roles)}


ADMIN = who("admin")


async def request_for(api: Api, permission: Permission, headers: dict[str, str], saga_id: str) -> Any:
    """One request that needs ``permission`` (and nothing more)."""
    match permission:
        case Permission.READ_SAGAS:
            return await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=headers)
        case Permission.READ_DEFINITIONS:
            return await api.client.get(f"{DEFINITIONS}/fast-order", headers=headers)
        case Permission.START:
            return await api.post(INSTANCES, {"saga_name": "fast-order", "context": {}}, headers)
        case Permission.INTERVENE:
            return await api.post(f"{INSTANCES}/{saga_id}/abort", {"reason": "test"}, headers)
        case Permission.REGISTER_DEFINITIONS:
            return await api.register(fast_definition(name=f"def-{headers['X-Actor']}"), headers)
        case Permission.MANAGE_API_KEYS:
            return await api.client.get("/api/v1/api-keys", headers=headers)
        case Permission.READ_AUDIT:
            return await api.client.get("/api/v1/audit", headers=headers)
        case Permission.OPERATE:
            return await api.client.get("/api/v1/admin/subscriptions", headers=headers)
    raise AssertionError(permission)


#: the permissions that have an HTTP route today (bulk interventions are checked where their use case is:
#: tests/integration/test_projectors.py)
ROUTED = [
    Permission.READ_SAGAS,
    Permission.READ_DEFINITIONS,
    Permission.START,
    Permission.INTERVENE,
    Permission.REGISTER_DEFINITIONS,
    Permission.MANAGE_API_KEYS,
    Permission.OPERATE,
    Permission.READ_AUDIT,
]


def denials(api: Api) -> float:
    return sum(
        s.value
        for m in api.registry.collect()
        if m.name == "saga_auth_denials"
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("reason") == "forbidden"
    )


@pytest.mark.parametrize("role", [*Role, None], ids=[*(str(r) for r in Role), "no-role"])
async def test_each_cell_of_the_permission_table(make_api: ApiFactory, role: Role | None) -> None:
    api = await make_api(mode="trusted-header")
    assert (await api.register(fast_definition(), ADMIN)).status == 201
    headers = who(role) if role is not None else who()
    for permission in ROUTED:
        saga_id = (await api.start({"saga_name": "fast-order", "context": {}}, ADMIN))["saga_id"]
        allowed = role is not None and permission in TABLE[role]
        before, refused = await api.snapshot(), denials(api)
        response = await request_for(api, permission, headers, saga_id)
        if allowed:
            # Let through: it may still be refused for the saga's state (an abort of a saga that already
            # finished is 409), never for the caller's roles.
            assert response.status in (200, 201, 202, 409), (role, permission, await response.text())
            if response.status == 409:
                assert (await response.json())["type"].endswith(":intervention-refused")
        else:
            body = await problem(response, 403)
            assert body["type"].endswith(":forbidden"), body
            assert str(permission) in body["detail"]
            assert denials(api) == refused + 1
            engine_free = [e for e in await api.snapshot() if e not in before]
            assert engine_free == [], (role, permission)


async def test_the_operations_routes_are_for_the_operations_tenant_only(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    other_admin = {"X-Tenant-Id": "acme", "X-Roles": "admin"}
    body = await problem(await api.client.get("/api/v1/admin/subscriptions", headers=other_admin), 403)
    assert "operations tenant" in body["detail"]
    assert (await api.client.get("/api/v1/admin/subscriptions", headers=ADMIN)).status == 200


async def test_an_unknown_role_grants_nothing(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    await problem(await api.register(fast_definition(), who("superuser", "root")), 403)


def test_the_readme_table_is_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z:-]+)` \| (.+?) \| (.+?) \|$", readme, re.M)
    shown = [(p, what, [r.strip(" `") for r in roles.split(",")]) for p, what, roles in rows]
    assert shown == [(p, what, roles) for p, what, roles in table_rows()], json.dumps(shown, indent=1)
