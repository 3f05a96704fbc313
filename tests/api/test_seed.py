"""The brief's curl examples, verbatim, against the live app: definition create (201), again (200),
changed (409), invalid (422); start (201), repeat (200), different (422); events; SSE frames."""

from __future__ import annotations

import json
from typing import Any

from tests.api.conftest import (
    DEFINITIONS,
    INSTANCES,
    Api,
    fields,
    problem,
)
from tests.seed import SEED_DEFINITION, SEED_START


async def test_seed_definition_created_then_same_then_changed(api: Api) -> None:
    created = await api.register(SEED_DEFINITION)
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["name"] == "order-processing"
    assert body["version"] == "1.0.0"
    assert body["created"] is True
    assert body["position"].startswith("p1.")
    assert created.headers["Location"] == f"{DEFINITIONS}/order-processing/versions/1.0.0"
    assert body["definition"]["steps"][1]["timeout"] == 15000

    again = await api.register(SEED_DEFINITION)
    assert again.status == 200
    assert (await again.json()) == {**body, "created": False}

    before = await api.snapshot()
    changed = json.loads(SEED_DEFINITION)
    changed["steps"][0]["retries"] = 5
    body409 = await problem(await api.register(changed), 409)
    assert "different content" in body409["detail"]
    assert await api.snapshot() == before

    versions = await (await api.client.get(f"{DEFINITIONS}/order-processing")).json()
    assert versions["latest"] == "1.0.0"
    assert [v["version"] for v in versions["versions"]] == ["1.0.0"]
    one = await api.client.get(f"{DEFINITIONS}/order-processing/versions/1.0.0")
    assert (await one.json())["hash"] == body["hash"]
    await problem(await api.client.get(f"{DEFINITIONS}/order-processing/versions/9.9.9"), 404)
    await problem(await api.client.get(f"{DEFINITIONS}/no-such-saga"), 404)


async def test_invalid_definition_names_every_problem(api: Api) -> None:
    before = await api.snapshot()
    bad = json.loads(SEED_DEFINITION)
    bad["version"] = "one"
    bad["steps"][0]["timeout"] = -1
    bad["steps"][1]["when"] = "always"
    bad["steps"][2]["service"] = "unknown-service"
    body = await problem(await api.register(bad), 422)
    named = fields(body)
    assert "body.version" in named
    assert "body.steps[0].timeout" in named
    assert "body.steps[1].when" in named  # conditions: not supported yet
    assert any("not supported yet" in e["problem"] for e in body["errors"])
    assert await api.snapshot() == before
    # Semantic problems come after the field checks pass; unknown services are named too.
    unknown = json.loads(SEED_DEFINITION)
    unknown["steps"][2]["service"] = "unknown-service"
    body = await problem(await api.register(unknown), 422)
    assert fields(body) == ["body.steps[2].service"]
    assert any("unknown-service" in e["problem"] for e in body["errors"])
    # Each semantic problem names the part of the body it is about (no message is parsed for it).
    tangled = json.loads(SEED_DEFINITION)
    tangled["steps"][2]["name"] = tangled["steps"][0]["name"]
    tangled["steps"][1]["depends_on"] = ["nowhere"]
    body = await problem(await api.register(tangled), 422)
    assert set(fields(body)) == {"body.steps[2].name", "body.steps[1].depends_on"}
    assert await api.snapshot() == before


async def test_seed_start_runs_to_completion_and_repeats_answer_the_same(api: Api) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    started = await api.start(SEED_START)
    assert started["status"] == "running"
    assert started["version"] == "1.0.0"
    assert started["position"].startswith("p1.")
    assert started["client_id"] is None
    state = await api.wait_for(started["saga_id"])
    assert state.status == "completed"
    calls = [(c.service, c.action) for c in api.participants.received]
    assert calls == [
        ("order-service", "validate"),
        ("inventory-service", "reserve"),
        ("payment-service", "charge"),
    ]
    assert api.participants.received[0].json["input"]["amount"] == 99.99

    events = await (await api.client.get(f"{INSTANCES}/{started['saga_id']}/events")).json()
    types = [e["type"] for e in events["items"]]
    assert types[0] == "SagaStarted"
    assert types[-1] == "SagaCompleted"
    first = events["items"][0]
    assert first["actor"] == "anonymous"
    assert first["recorded_at"]
    assert first["causation_id"]
    assert first["data"]["context"]["order_id"] == "order-123"
    assert [e["revision"] for e in events["items"]] == list(range(len(types)))
    page = await (await api.client.get(f"{INSTANCES}/{started['saga_id']}/events?limit=2")).json()
    assert len(page["items"]) == 2
    assert page["next_from_revision"] == 2


async def test_client_id_identity_201_200_422(api: Api) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    body: dict[str, Any] = {**json.loads(SEED_START), "saga_id": "order-123"}
    first = await api.post(INSTANCES, body)
    assert first.status == 201
    answer = await first.json()
    assert first.headers["Location"] == f"{INSTANCES}/{answer['saga_id']}"
    again = await api.post(INSTANCES, body)
    assert again.status == 200
    assert await again.json() == answer  # the same body: same id, pinned version, original position
    # The same id with another request is refused, and nothing is appended.
    before = await api.snapshot()
    other = {**body, "context": {"order_id": "order-999"}}
    refused = await problem(await api.post(INSTANCES, other), 422)
    assert fields(refused) == ["body.saga_id"]
    assert await api.snapshot() == before
    # An Idempotency-Key makes a request repeatable without a client id.
    keyed = await api.post(INSTANCES, SEED_START, {"Idempotency-Key": "k-1"})
    assert keyed.status == 201
    keyed_again = await api.post(INSTANCES, SEED_START, {"Idempotency-Key": "k-1"})
    assert keyed_again.status == 200
    assert (await keyed_again.json())["saga_id"] == (await keyed.json())["saga_id"]


async def test_start_refusals(api: Api) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    before = await api.snapshot()
    body = await problem(await api.post(INSTANCES, {"saga_name": "nope", "context": {}}), 422)
    assert fields(body) == ["body.saga_name"]
    body = await problem(
        await api.post(INSTANCES, {"saga_name": "order-processing", "version": "2.0.0"}), 422
    )
    assert fields(body) == ["body.version"]
    body = await problem(await api.post(INSTANCES, {"saga_name": "order-processing", "extra": 1}), 422)
    assert fields(body) == ["body.extra"]
    body = await problem(await api.post(INSTANCES, {"saga_name": "order-processing", "context": []}), 422)
    assert fields(body) == ["body.context"]
    body = await problem(await api.post(INSTANCES, {"saga_name": "order-processing", "saga_id": "-bad"}), 422)
    assert fields(body) == ["body.saga_id"]
    body = await problem(await api.post(INSTANCES, SEED_START, {"Idempotency-Key": "has space"}), 400)
    assert fields(body) == ["header.Idempotency-Key"]
    assert await api.snapshot() == before
