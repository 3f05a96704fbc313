"""A canary secret, put everywhere a secret can reach the service — the JWT secret and a participant's
credential in the configuration, forged bearer tokens and API keys in headers, a field of a refused body,
a query parameter — is found nowhere the service writes: its log, its metrics, its events (saga, key,
audit streams) or its answers' headers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest

from orchestrator.eventstore.embedded import EmbeddedEventStore
from tests.seed import SEED_DEFINITION, SEED_START
from tests.system.service import curl, free_port, running_service

CANARY = f"CANARY{uuid.uuid4().hex}"
SECRET = f"{CANARY}-jwt-hmac-secret"  # the configured HS256 secret (over 32 bytes)
ISSUER, AUDIENCE = "canary-issuer", "saga-orchestrator"


def token(**claims: object) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme", "roles": ["admin", "auditor"]}
    return jwt.encode({**body, "iat": now, "exp": now + 600, **claims}, SECRET, algorithm="HS256")


async def completed(url: str, auth: str, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (answer := await curl(f"curl {url} {auth}")).body.get("status") != "completed":
        assert loop.time() < deadline, answer.text
        await asyncio.sleep(0.2)  # the read model follows the store; bounded by the deadline


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_canary_secret_is_found_nowhere(tmp_path: Path) -> None:
    demo_port = free_port()
    demo = f"http://127.0.0.1:{demo_port}"
    services = {
        name: {"base_url": f"{demo}/{name}", "auth": {"header": "Authorization", "value": f"Bearer {CANARY}"}}
        for name in ("order-service", "inventory-service", "payment-service")
    }
    env = {
        "SAGA_DEMO__PORT": str(demo_port),
        "SAGA_AUTH__MODE": "jwt",
        "SAGA_AUTH__JWT__ALGORITHMS": '["HS256"]',
        "SAGA_AUTH__JWT__SECRET": SECRET,
        "SAGA_AUTH__JWT__ISSUER": ISSUER,
        "SAGA_AUTH__JWT__AUDIENCE": AUDIENCE,
        "SAGA_SERVICES": json.dumps(services),
        "SAGA_LOG_LEVEL": "DEBUG",
    }
    async with running_service(tmp_path, **env) as service:
        admin = f"-H 'Authorization: Bearer {token()}'"
        json_type = "-H 'Content-Type: application/json'"
        base = f"{service.url}/api/v1"
        ok = await curl(f"curl -X POST {base}/sagas/definitions {admin} {json_type} -d '{SEED_DEFINITION}'")
        assert ok.status == 201, ok.text
        started = await curl(f"curl -X POST {base}/sagas/instances {admin} {json_type} -d '{SEED_START}'")
        assert started.status == 201, started.text
        # The participants got the configured credential (that is what it is for) and the saga completed.
        await completed(f"{base}/sagas/instances/{started.body['saga_id']}", admin)
        key = json.dumps({"name": "n", "roles": ["viewer"]})
        assert (await curl(f"curl -X POST {base}/api-keys {admin} {json_type} -d '{key}'")).status == 201
        with_password = json.dumps({"saga_name": "x", "password": CANARY})
        as_name = json.dumps({"saga_name": CANARY})
        refused = [
            f"curl {base}/sagas/instances -H 'Authorization: Bearer {CANARY}'",
            f"curl {base}/sagas/instances -H 'Authorization: Bearer {CANARY}.{CANARY}.{CANARY}'",
            f"curl {base}/sagas/instances -H 'X-API-Key: sk_{CANARY}'",
            f"curl {base}/sagas/instances -H 'Authorization: ApiKey sk_0123456789abcdef_{CANARY[:43]}'",
            f"curl {base}/sagas/instances -H 'Authorization: Basic {CANARY}'",
            f"curl {base}/sagas/instances?api_key={CANARY} -H 'X-API-Key: {CANARY}'",
            f"curl -X POST {base}/sagas/instances {admin} {json_type} -d '{with_password}'",
            f"curl -X POST {base}/sagas/instances {admin} {json_type} -d '{as_name}'",
        ]
        for command in refused:
            answer = await curl(command)
            assert answer.status in (400, 401, 403, 422), (command, answer.status)
            assert CANARY not in json.dumps(answer.headers), command
        metrics = await curl(f"curl {service.url}/metrics")
        assert metrics.status == 200
        assert CANARY not in metrics.text
        audit = await curl(f"curl {base}/audit {admin}")
        assert audit.status == 200
        assert CANARY not in audit.text
    log = service.log.read_text()
    assert "http_request" in log  # the log was written (and is what was searched)
    assert CANARY not in log, [line for line in log.splitlines() if CANARY in line][:5]
    store = await EmbeddedEventStore.open(tmp_path / "data" / "eventstore", read_only=True)
    try:
        events = [e async for batch in store.read_all() for e in batch]
    finally:
        await store.close()
    assert {e.stream.split("-")[0] for e in events} >= {"saga", "apikeys", "audit"}
    assert not [e.stream for e in events if CANARY.encode() in e.data + e.metadata]
