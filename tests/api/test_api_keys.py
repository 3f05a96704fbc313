"""API keys through the HTTP API (trusted-header mode, where an admin's gateway headers manage them and a
service presents the key alone): the secret is shown once and stored only as a hash; the key carries its
tenant and roles; rotation, revocation and expiry take effect; tenants never see each other's keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.app.api_keys import ApiKeys
from orchestrator.app.errors import Forbidden
from orchestrator.app.principal import Principal
from orchestrator.eventstore.embedded import EmbeddedEventStore
from tests.api.conftest import INSTANCES, Api, ApiFactory, problem
from tests.seed import SEED_DEFINITION, SEED_START

KEYS = "/api/v1/api-keys"
ADMIN = {"X-Tenant-Id": "acme", "X-Actor": "alice", "X-Roles": "admin"}
GLOBEX_ADMIN = {"X-Tenant-Id": "globex", "X-Actor": "bob", "X-Roles": "admin"}


async def create(api: Api, headers: dict[str, str] = ADMIN, **body: object) -> dict[str, object]:
    response = await api.post(KEYS, {"name": "billing", "roles": ["operator"], **body}, headers)
    assert response.status == 201, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    answer: dict[str, object] = await response.json()
    return answer


def key(secret: object) -> dict[str, str]:
    return {"X-API-Key": str(secret)}


async def test_a_key_is_shown_once_and_acts_as_its_tenant_and_roles(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    assert (await api.register(SEED_DEFINITION, ADMIN)).status == 201
    issued = await create(api)
    secret, key_id = str(issued["secret"]), issued["key"]["key_id"]  # type: ignore[index]
    assert secret.startswith(f"sk_{key_id}_")
    # The secret is never stored or listed: not in the store, not in the list.
    stored = [e async for batch in api.store.read_all() for e in batch]
    assert all(secret.encode() not in e.data + e.metadata for e in stored)
    listed = await (await api.client.get(KEYS, headers=ADMIN)).json()
    assert secret not in json.dumps(listed)
    assert [(k["key_id"], k["status"], k["roles"]) for k in listed["items"]] == [
        (key_id, "active", ["operator"])
    ]
    # The key starts a saga as its tenant, under its own name; its roles do not reach admin routes.
    started = await api.post(INSTANCES, json.loads(SEED_START), key(secret))
    assert started.status == 201, await started.text()
    saga_id = (await started.json())["saga_id"]
    events = await (await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=ADMIN)).json()
    assert events["items"][0]["actor"] == f"api-key:{key_id}"
    await problem(await api.register(SEED_DEFINITION, key(secret)), 403)
    await problem(await api.client.get(f"{INSTANCES}/{saga_id}/events", headers={**GLOBEX_ADMIN}), 404)
    # Alternative header.
    assert (await api.client.get(KEYS, headers={"Authorization": f"ApiKey {secret}"})).status == 403


async def test_revocation_rotation_and_bad_keys(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    assert (await api.register(SEED_DEFINITION, ADMIN)).status == 201
    issued = await create(api)
    old, key_id = str(issued["secret"]), issued["key"]["key_id"]  # type: ignore[index]
    start = json.loads(SEED_START)

    rotated = await api.post(f"{KEYS}/{key_id}/rotate", {"grace_s": 60}, ADMIN)
    assert rotated.status == 200, await rotated.text()
    new = (await rotated.json())["secret"]
    assert new != old
    for secret in (old, new):  # the old one within its grace
        assert (await api.post(INSTANCES, start, key(secret))).status == 201
    rotated = await api.post(f"{KEYS}/{key_id}/rotate", {}, ADMIN)  # no grace: the previous one ends
    newest = (await rotated.json())["secret"]
    for secret in (old, new):
        body = await problem(await api.post(INSTANCES, start, key(secret)), 401)
        assert secret not in json.dumps(body)
    assert (await api.post(INSTANCES, start, key(newest))).status == 201

    revoked = await api.post(f"{KEYS}/{key_id}/revoke", {"reason": "leaked"}, ADMIN)
    assert revoked.status == 200
    assert (await revoked.json())["status"] == "revoked"
    response = await api.post(INSTANCES, start, key(newest))
    await problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith('ApiKey realm="saga-orchestrator"')
    await problem(await api.post(f"{KEYS}/{key_id}/rotate", {}, ADMIN), 409)  # a revoked key stays revoked

    for bad in (
        newest[:-1] + ("A" if newest[-1] != "A" else "B"),
        "sk_nothing",
        "",
        f"sk_{key_id}_" + "x" * 43,
    ):
        await problem(await api.post(INSTANCES, start, key(bad)), 401)


async def test_tenants_never_see_each_others_keys(make_api: ApiFactory) -> None:
    api = await make_api(mode="trusted-header")
    issued = await create(api)
    key_id = issued["key"]["key_id"]  # type: ignore[index]
    assert (await (await api.client.get(KEYS, headers=GLOBEX_ADMIN)).json())["items"] == []
    await problem(await api.post(f"{KEYS}/{key_id}/revoke", {}, GLOBEX_ADMIN), 404)
    await problem(await api.post(f"{KEYS}/{key_id}/rotate", {}, GLOBEX_ADMIN), 404)
    # Only admins manage keys; a role the table does not know is refused by name.
    operator = {**ADMIN, "X-Roles": "operator"}
    await problem(await api.post(KEYS, {"name": "x", "roles": ["viewer"]}, operator), 403)
    body = await problem(await api.post(KEYS, {"name": "x", "roles": ["root"]}, ADMIN), 422)
    assert body["errors"][0]["field"] == "body.roles"


async def test_expiry_and_last_use(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = await EmbeddedEventStore.open(tmp_path / "store")
    try:
        keys = ApiKeys(store, use_interval_s=60, clock=lambda: now[0])
        keys.index.caught_up.set()
        admin = Principal("acme", "alice", frozenset({"admin"}), "jwt")
        issued = await keys.create(admin, name="ci", roles=["viewer"], expires_at=now[0] + timedelta(hours=1))
        who = await keys.authenticate(issued.secret)
        assert who is not None
        assert (who.tenant, who.roles, who.credential_id) == (
            "acme",
            frozenset({"viewer"}),
            issued.key.key_id,
        )
        await keys.record_uses()
        await keys.record_uses()  # nothing new: nothing written
        [listed] = await keys.list(admin)
        assert listed.last_used_at == now[0]
        history = await store.read_stream(f"apikeys-{'acme'}")
        assert [e.type for e in history] == ["ApiKeyCreated", "ApiKeyUsed"]
        now[0] += timedelta(hours=1)
        assert await keys.authenticate(issued.secret) is None  # expired
        [listed] = await keys.list(admin)
        assert listed.status(now[0]) == "expired"
        viewer = Principal("acme", "v", frozenset({"viewer"}), "jwt")
        try:
            await keys.list(viewer)
        except Forbidden:
            pass
        else:
            raise AssertionError("a viewer listed the keys")
    finally:
        await store.close()
