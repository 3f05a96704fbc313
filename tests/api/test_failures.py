"""Failure paths through the API: compensation, suspend then resume, dead letter then manual retry,
abort, If-Match (412), a repeated Idempotency-Key, and commands the status table refuses (409)."""

from __future__ import annotations

import uuid

from tests.api.conftest import INSTANCES, Api, fast_definition, problem


async def start(api: Api, context: dict[str, str] | None = None) -> str:
    assert (await api.register(fast_definition())).status in (200, 201)
    started = await api.start({"saga_name": "fast-order", "context": context or {"order_id": "o-1"}})
    saga_id: str = started["saga_id"]
    return saga_id


async def command(api: Api, saga_id: str, name: str, headers: dict[str, str] | None = None, **body: str):  # type: ignore[no-untyped-def]
    return await api.post(f"{INSTANCES}/{saga_id}/{name}", {"reason": "test", **body}, headers)


async def test_business_rejection_compensates(api: Api) -> None:
    api.participants.script[("payment-service", "charge")] = [422]
    saga_id = await start(api)
    state = await api.wait_for(saga_id, {"SagaCompensated"})
    assert state.status == "compensated"
    undone = [
        c.action
        for c in api.participants.received
        if c.action in {"cancel-validation", "release-reservation"}
    ]
    assert undone == ["release-reservation", "cancel-validation"]
    events = await (await api.client.get(f"{INSTANCES}/{saga_id}/events")).json()
    assert "CompensationStarted" in [e["type"] for e in events["items"]]


async def test_suspend_on_401_then_resume(api: Api) -> None:
    api.participants.script[("payment-service", "charge")] = [401, "ok"]
    saga_id = await start(api)
    state = await api.wait_for(saga_id, {"SagaSuspended"})
    assert state.status == "suspended"
    # Nothing is compensated for a contract error.
    assert not [c for c in api.participants.received if c.action == "release-reservation"]
    response = await command(api, saga_id, "resume")
    assert response.status == 202, await response.text()
    result = await response.json()
    assert result["applied"] is True
    assert result["command"] == "resume"
    assert result["position"].startswith("p1.")
    assert response.headers["ETag"] == f'"{result["revision"]}"'
    state = await api.wait_for(saga_id, {"SagaCompleted"})
    assert state.status == "completed"
    history = await api.history(saga_id)
    mia = [e for e in history if e.type == "ManualInterventionApplied"]
    assert len(mia) == 1
    assert b'"reason":"test"' in mia[0].data
    assert b'"actor":"anonymous"' in mia[0].data


async def test_dead_letter_then_manual_retry(api: Api) -> None:
    api.participants.script[("payment-service", "charge")] = [422]
    api.participants.script[("inventory-service", "release-reservation")] = [422, "ok"]
    saga_id = await start(api)
    state = await api.wait_for(saga_id, {"SagaDeadLettered"})
    assert state.status == "dead_lettered"
    response = await command(api, saga_id, "retry")
    assert response.status == 202, await response.text()
    state = await api.wait_for(saga_id, {"SagaCompensated"})
    assert state.status == "compensated"
    keys = {c.key for c in api.participants.calls("inventory-service", "release-reservation")}
    assert len(keys) == 2  # a person's retry issues a new idempotency key


async def test_abort_a_running_saga(api: Api) -> None:
    api.participants.script[("inventory-service", "reserve")] = ["slow:0.5"]
    saga_id = await start(api)
    await api.wait_for(saga_id, {"StepSucceeded"})  # validate-order done; reserve in flight
    response = await command(api, saga_id, "abort")
    assert response.status == 202, await response.text()
    state = await api.wait_for(saga_id, {"SagaCompensated"})
    assert state.status == "compensated"
    # Aborting again: refused by the status table (compensated is terminal).
    await problem(await command(api, saga_id, "abort"), 409)


async def test_if_match_and_repeated_idempotency_key(api: Api) -> None:
    api.participants.script[("payment-service", "charge")] = [401, "ok"]
    saga_id = await start(api)
    state = await api.wait_for(saga_id, {"SagaSuspended"})
    before = await api.snapshot()
    stale = await problem(await command(api, saga_id, "resume", {"If-Match": f'"{state.revision - 1}"'}), 412)
    assert "revision" in stale["detail"]
    bad = await problem(await command(api, saga_id, "resume", {"If-Match": "yesterday"}), 400)
    assert bad["errors"][0]["field"] == "header.If-Match"
    assert await api.snapshot() == before

    key = {"Idempotency-Key": f"resume-{uuid.uuid4()}", "If-Match": f'"{state.revision}"'}
    first = await command(api, saga_id, "resume", key)
    assert first.status == 202, await first.text()
    applied = await first.json()
    await api.wait_for(saga_id, {"SagaCompleted"})
    after = await api.snapshot()
    # The same key again: the recorded result, nothing appended (If-Match is not what stops it).
    repeat = await command(api, saga_id, "resume", {"Idempotency-Key": key["Idempotency-Key"]})
    assert repeat.status == 200, await repeat.text()
    again = await repeat.json()
    assert again["applied"] is False
    assert again["idempotency_key"] == key["Idempotency-Key"]
    assert again["saga_id"] == applied["saga_id"]
    assert await api.snapshot() == after


async def test_commands_the_table_refuses_and_unknown_sagas(api: Api) -> None:
    api.participants.script[("payment-service", "charge")] = ["slow:0.3"]
    saga_id = await start(api)
    before = await api.snapshot()
    for name in ("retry", "skip", "resolve", "resume"):
        body = await problem(await command(api, saga_id, name), 409)
        assert body["type"].endswith("intervention-refused")
    assert await api.snapshot() == before
    await problem(await command(api, str(uuid.uuid4()), "abort"), 404)
    await problem(await api.post(f"{INSTANCES}/{saga_id}/explode", {"reason": "x"}), 404)
    missing = await problem(await api.post(f"{INSTANCES}/{saga_id}/abort", {}), 422)
    assert missing["errors"][0]["field"] == "body.reason"
    assert await api.snapshot() == before
