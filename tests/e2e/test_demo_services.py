"""The demo participants honour the participant contract (design.md §0.9) and their failure switches.

Requests are built with the domain's own body functions, so they are byte-for-byte what the engine sends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.demo import DemoState, create_demo_app, start_demo_services
from orchestrator.domain.requests import action_body, compensation_body
from orchestrator.engine.calls import OutcomeKind, Phase, StepCall
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.settings import ServiceConfig

CONTEXT = {"order_id": "order-123", "customer_id": "customer-456", "amount": 99.99}


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Gate:
    """Stands in for ``asyncio.sleep`` so a "slow" call waits exactly until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()
        self.asked: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.entered.set()
        await self.open.wait()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def client(gate: Gate) -> AsyncIterator[TestClient[aiohttp.web.Request, aiohttp.web.Application]]:
    async with TestClient(TestServer(create_demo_app(DemoState(), sleep=gate.sleep))) as c:
        yield c


Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]


async def post(client: Client, path: str, body: bytes, key: str | None, attempt: int = 1) -> Reply:
    headers = {"Content-Type": "application/json", "X-Saga-Attempt": str(attempt), "X-Tenant-Id": "acme"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with client.post(path, data=body, headers=headers) as r:
        return Reply(r.status, await r.read(), dict(r.headers))


async def act(
    client: Client, service: str, action: str, key: str, context: Any = CONTEXT, saga: str = "s-1"
) -> Reply:
    return await post(client, f"/{service}/{action}", action_body(saga, action, context), key)


async def undo(
    client: Client,
    service: str,
    op: str,
    key: str,
    action_key: str | list[str],
    context: Any = CONTEXT,
    saga: str = "s-1",
) -> Reply:
    keys = [action_key] if isinstance(action_key, str) else action_key
    return await post(client, f"/{service}/{op}", compensation_body(saga, op, context, keys), key)


async def state(client: Client, saga_id: str | None = None) -> Any:
    async with client.get("/demo/state", params={"saga_id": saga_id} if saga_id else {}) as r:
        assert r.status == 200
        return await r.json()


def problem_slug(reply: Reply) -> str:
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    return str(reply.json["type"]).rsplit("/", 1)[-1]


async def test_the_happy_path_has_its_effects(client: Client) -> None:
    before = (await state(client))["stock"]["widget"]
    validated = await act(client, "order-service", "validate", "k-v")
    reserved = await act(client, "inventory-service", "reserve", "k-r")
    charged = await act(client, "payment-service", "charge", "k-c")
    assert (validated.status, reserved.status, charged.status) == (200, 200, 200)
    assert validated.json["status"] == "validated"
    assert reserved.json["items"] == {"widget": 1}
    assert charged.json == {
        "payment_id": charged.json["payment_id"],
        "order_id": "order-123",
        "amount": 99.99,
        "currency": "USD",
        "status": "charged",
    }
    seen = await state(client, "s-1")
    assert seen["stock"]["widget"] == before - 1
    assert seen["totals"]["net_charged"] == 99.99
    assert [c["operation"] for c in seen["calls"]["recent"]] == ["validate", "reserve", "charge"]


async def test_a_repeated_key_gets_the_recorded_answer_and_one_effect(client: Client) -> None:
    before = (await state(client))["stock"]["widget"]
    first = await act(client, "inventory-service", "reserve", "k-1")
    again = await post(
        client, "/inventory-service/reserve", action_body("s-1", "reserve", CONTEXT), "k-1", attempt=2
    )
    assert first.status == again.status == 200
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (await state(client))["stock"]["widget"] == before - 1


async def test_a_recorded_rejection_is_replayed_too(client: Client) -> None:
    declined = {**CONTEXT, "demo": {"payment": "decline"}}
    first = await act(client, "payment-service", "charge", "k-1", declined)
    again = await act(client, "payment-service", "charge", "k-1", declined)
    assert first.status == again.status == 422
    assert again.body == first.body
    assert (await state(client))["totals"]["charged"] == 0


async def test_a_different_body_under_a_known_key_is_refused_naming_the_difference(client: Client) -> None:
    first = await act(client, "payment-service", "charge", "k-1")
    changed = await act(client, "payment-service", "charge", "k-1", {**CONTEXT, "amount": 100})
    assert changed.status == 422
    assert problem_slug(changed) == "idempotency-key-reused"
    assert changed.json["mismatched_fields"] == ["input.amount"]
    assert "input.amount" in changed.json["detail"]
    # The refusal decided nothing: the original request still gets its recorded answer, and one charge.
    assert (await act(client, "payment-service", "charge", "k-1")).body == first.body
    assert (await state(client))["totals"]["charged"] == 1


async def test_a_compensation_first_leaves_a_tombstone_that_refuses_the_late_action(client: Client) -> None:
    early = await undo(client, "payment-service", "refund", "k-refund", action_key="k-charge")
    assert early.status == 404
    assert problem_slug(early) == "nothing-to-undo"
    late = await act(client, "payment-service", "charge", "k-charge")
    assert late.status == 422
    assert problem_slug(late) == "compensated-before-arrival"
    assert late.json["compensation_idempotency_key"] == "k-refund"
    seen = await state(client)
    assert seen["tombstones"]["payment-service"] == {"k-charge": "k-refund"}
    assert seen["totals"]["charged"] == 0
    assert (await act(client, "payment-service", "charge", "k-charge")).body == late.body


async def test_compensating_an_unknown_action_answers_404(client: Client) -> None:
    for service, op in [
        ("order-service", "cancel-validation"),
        ("inventory-service", "release-reservation"),
        ("payment-service", "refund"),
    ]:
        reply = await undo(client, service, op, f"u-{op}", action_key="never-sent")
        assert reply.status == 404, op
        assert reply.json["action_idempotency_keys"] == ["never-sent"]


async def test_a_compensation_undoes_every_generation_it_names(client: Client) -> None:
    """After a person's retry, the effects of both generations may exist: one compensation undoes both,
    and leaves a tombstone for a named key that never arrived."""
    await act(client, "payment-service", "charge", "gen-0")
    await act(client, "payment-service", "charge", "gen-1")
    refund = await undo(
        client, "payment-service", "refund", "k-refund", action_key=["gen-0", "gen-1", "gen-2"]
    )
    assert refund.status == 200
    assert [r["status"] for r in refund.json["undone"]] == ["refunded", "refunded"]
    seen = await state(client)
    assert seen["tombstones"]["payment-service"] == {"gen-2": "k-refund"}
    late = await act(client, "payment-service", "charge", "gen-2")
    assert late.status == 422


async def test_a_compensation_undoes_the_effect_once(client: Client) -> None:
    before = (await state(client))["stock"]["widget"]
    await act(client, "inventory-service", "reserve", "k-r")
    released = await undo(client, "inventory-service", "release-reservation", "k-u", action_key="k-r")
    assert released.status == 200
    assert released.json["status"] == "released"
    assert (await state(client))["stock"]["widget"] == before
    replay = await undo(client, "inventory-service", "release-reservation", "k-u", action_key="k-r")
    assert replay.body == released.body
    # Another compensation key for the same action (a manual retry's new generation): already undone.
    other = await undo(client, "inventory-service", "release-reservation", "k-u2", action_key="k-r")
    assert other.status == 410
    assert (await state(client))["stock"]["widget"] == before


async def test_refund_reverses_the_charge(client: Client) -> None:
    charged = await act(client, "payment-service", "charge", "k-c")
    refunded = await undo(client, "payment-service", "refund", "k-rf", action_key="k-c")
    assert refunded.status == 200
    assert refunded.json["payment_id"] == charged.json["payment_id"]
    assert refunded.json["amount"] == 99.99
    totals = (await state(client))["totals"]
    assert (totals["charged"], totals["refunded"], totals["net_charged"]) == (1, 1, 0)


async def test_decline_and_the_natural_limit(client: Client) -> None:
    declined = await act(
        client, "payment-service", "charge", "k-1", {**CONTEXT, "demo": {"payment": "decline"}}
    )
    assert declined.status == 422
    assert problem_slug(declined) == "payment-declined"
    too_much = await act(client, "payment-service", "charge", "k-2", {**CONTEXT, "amount": 10_000.01})
    assert too_much.status == 422
    assert "exceeds the limit" in too_much.json["detail"]


async def test_flaky_answers_503_twice_with_retry_after_then_succeeds_once(client: Client) -> None:
    flaky = {**CONTEXT, "demo": {"inventory": "flaky"}}
    before = (await state(client))["stock"]["widget"]
    replies = [await act(client, "inventory-service", "reserve", "k-1", flaky) for _ in range(4)]
    assert [r.status for r in replies] == [503, 503, 200, 200]
    assert replies[0].headers["Retry-After"] == "1"
    assert replies[3].body == replies[2].body
    assert (await state(client))["stock"]["widget"] == before - 1
    # The count is per key: another step's key starts flaky again; flaky_failures tunes it.
    tuned = {**CONTEXT, "demo": {"inventory": "flaky", "flaky_failures": 1}}
    assert [(await act(client, "inventory-service", "reserve", "k-2", tuned)).status for _ in range(2)] == [
        503,
        200,
    ]


async def wait_in_flight(client: Client, gate: Gate, service: str, key: str) -> None:
    await asyncio.wait_for(gate.entered.wait(), 5)
    assert key in (await state(client))["in_flight"][service]


async def test_slow_holds_the_answer_and_a_duplicate_in_flight_gets_409(client: Client, gate: Gate) -> None:
    slow = {**CONTEXT, "demo": {"payment": "slow", "slow_ms": 1234}}
    first = asyncio.create_task(act(client, "payment-service", "charge", "k-1", slow))
    await wait_in_flight(client, gate, "payment-service", "k-1")
    assert gate.asked == [1.234]
    duplicate = await act(client, "payment-service", "charge", "k-1", slow)
    assert duplicate.status == 409
    assert duplicate.headers["Retry-After"] == "1"
    gate.open.set()
    assert (await first).status == 200
    assert (await state(client))["totals"]["charged"] == 1


async def test_a_compensation_during_a_slow_action_stops_its_effect(client: Client, gate: Gate) -> None:
    slow = {**CONTEXT, "demo": {"payment": "slow"}}
    late = asyncio.create_task(act(client, "payment-service", "charge", "k-c", slow))
    await wait_in_flight(client, gate, "payment-service", "k-c")
    assert gate.asked == [50.0]  # the default outlasts the brief's 45 s payment timeout
    refund = await undo(client, "payment-service", "refund", "k-rf", action_key="k-c", context=slow)
    assert refund.status == 404
    gate.open.set()
    reply = await late
    assert reply.status == 422
    assert problem_slug(reply) == "compensated-before-arrival"
    assert (await state(client))["totals"]["charged"] == 0


async def test_misconfigured_answers_401_until_fixed_for_that_saga(client: Client) -> None:
    broken = {**CONTEXT, "demo": {"order": "misconfigured"}}
    for _ in range(2):
        assert (await act(client, "order-service", "validate", "k-1", broken, saga="s-1")).status == 401
    assert (await act(client, "order-service", "validate", "k-2", broken, saga="s-2")).status == 401
    assert (await state(client))["misconfigured"]["waiting"] == ["s-1", "s-2"]
    async with client.post("/demo/fix", json={"saga_id": "s-1"}) as r:
        assert await r.json() == {"fixed": ["s-1"]}
    # The 401 was not recorded, so the same key (a resumed saga) now succeeds; s-2 is still broken.
    assert (await act(client, "order-service", "validate", "k-1", broken, saga="s-1")).status == 200
    assert (await act(client, "order-service", "validate", "k-2", broken, saga="s-2")).status == 401
    async with client.post("/demo/fix") as r:  # no saga named: every saga that hit the switch
        assert await r.json() == {"fixed": ["s-2"]}
    assert (await act(client, "order-service", "validate", "k-2", broken, saga="s-2")).status == 200


async def test_compensation_fails_answers_422(client: Client) -> None:
    ctx = {**CONTEXT, "demo": {"inventory": "compensation-fails"}}
    assert (await act(client, "inventory-service", "reserve", "k-r", ctx)).status == 200
    reply = await undo(
        client, "inventory-service", "release-reservation", "k-u", action_key="k-r", context=ctx
    )
    assert reply.status == 422
    assert problem_slug(reply) == "demo-cannot-compensate"
    # Only a real effect fails to undo: an action that never arrived still gets its tombstone.
    never = await undo(
        client, "inventory-service", "release-reservation", "k-u2", action_key="k-x", context=ctx
    )
    assert never.status == 404
    assert (await act(client, "inventory-service", "reserve", "k-x", ctx)).status == 422


async def test_an_invalid_switch_is_a_rejection_that_names_it(client: Client) -> None:
    reply = await act(client, "order-service", "validate", "k-1", {**CONTEXT, "demo": {"paymnet": "decline"}})
    assert reply.status == 422
    assert "demo.paymnet" in reply.json["detail"]
    reply = await act(client, "order-service", "validate", "k-2", {**CONTEXT, "demo": {"payment": "explode"}})
    assert reply.status == 422
    assert "unknown mode 'explode'" in reply.json["detail"]


async def test_contract_violations_answer_400(client: Client) -> None:
    assert (await post(client, "/order-service/validate", action_body("s", "v", CONTEXT), None)).status == 400
    assert (await post(client, "/order-service/validate", b"not json", "k-1")).status == 400
    no_action_key = action_body("s", "refund", CONTEXT)
    assert (await post(client, "/payment-service/refund", no_action_key, "k-2")).status == 400


async def test_invalid_orders_and_stock_are_business_rejections(client: Client) -> None:
    reply = await act(client, "order-service", "validate", "k-1", {"order_id": "o"})
    assert reply.status == 422
    assert reply.json["errors"] == [
        "customer_id must be a non-empty string",
        "amount must be a positive number",
    ]
    many = {**CONTEXT, "items": [{"sku": "gizmo", "quantity": 11}]}
    reply = await act(client, "inventory-service", "reserve", "k-2", many)
    assert reply.status == 422
    assert reply.json["available"] == {"gizmo": 10}


async def test_reset_restores_stock_and_forgets_keys(client: Client) -> None:
    fresh = await state(client)
    await act(client, "inventory-service", "reserve", "k-1")
    await undo(client, "payment-service", "refund", "k-2", action_key="k-3")
    async with client.post("/demo/reset") as r:
        assert r.status == 200
    after = await state(client)
    assert after["stock"] == fresh["stock"]
    assert after["tombstones"]["payment-service"] == {}
    assert after["calls"]["total"] == 0


async def test_the_engine_classifies_each_switch_as_intended() -> None:
    """Through the engine's own HTTP executor over a real socket: what each switch means to a saga."""
    demo = await start_demo_services()
    executor = HttpExecutor({s: ServiceConfig(base_url=url) for s, url in demo.base_urls.items()})

    async def call(service: str, action: str, key: str, context: dict[str, Any]) -> Any:
        return await executor.call(
            StepCall(
                tenant="acme",
                saga_id="s-1",
                step=action,
                service=service,
                action=action,
                phase=Phase.ACTION,
                attempt=1,
                idempotency_key=key,
                body=action_body("s-1", action, context),
                timeout=5,
                send_deadline=time.monotonic() + 5,
            )
        )

    try:
        assert demo.base_urls["payment-service"] == f"{demo.url}/payment-service"
        ok = await call("payment-service", "charge", "k-1", CONTEXT)
        assert (ok.kind, ok.output["status"]) == (OutcomeKind.SUCCEEDED, "charged")
        declined = await call("payment-service", "charge", "k-2", {**CONTEXT, "demo": {"payment": "decline"}})
        assert declined.kind is OutcomeKind.REJECTED
        flaky = await call("inventory-service", "reserve", "k-3", {**CONTEXT, "demo": {"inventory": "flaky"}})
        assert (flaky.kind, flaky.retry_after) == (OutcomeKind.TRANSIENT, 1.0)
        broken = await call(
            "order-service", "validate", "k-4", {**CONTEXT, "demo": {"order": "misconfigured"}}
        )
        assert broken.kind is OutcomeKind.MISCONFIGURED
        assert demo.state.snapshot()["calls"]["total"] == 4
    finally:
        await executor.close()
        await demo.stop()
