"""The engine end to end against real HTTP participants: the exact calls each service receives."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.domain.vocabulary import ManualCommand, SagaStatus
from orchestrator.eventstore import RecordedEvent
from tests.e2e.conftest import Harness, seed_definition

FORWARD = [("order-service", "validate"), ("inventory-service", "reserve"), ("payment-service", "charge")]


def _events(history: list[RecordedEvent], type_: str) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in history if e.type == type_]


async def test_the_seed_saga_completes_with_one_call_per_step(harness: Harness) -> None:
    await harness.engine()
    saga_id = await harness.start({"order_id": "order-123", "customer_id": "customer-456", "amount": 99.99})
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    calls = harness.participants.received
    assert [(c.service, c.action) for c in calls] == FORWARD
    started = _events(await harness.history(saga_id), "StepStarted")
    for call, intent in zip(calls, started, strict=True):
        assert call.key == intent["idempotency_key"]
        assert call.attempt == 1
        assert call.json == {
            "saga_id": saga_id,
            "step": intent["step"],
            "input": {"order_id": "order-123", "customer_id": "customer-456", "amount": 99.99},
        }


@pytest.mark.parametrize("status", [422, 402])
async def test_a_business_rejection_compensates_in_reverse_order(harness: Harness, status: int) -> None:
    harness.participants.script[("payment-service", "charge")] = [status]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPENSATED
    calls = harness.participants.received
    assert [(c.service, c.action) for c in calls] == [
        *FORWARD,
        ("inventory-service", "release-reservation"),
        ("order-service", "cancel-validation"),
    ]
    # A compensation names the action it undoes by that action's idempotency key.
    reserve, release = calls[1], calls[3]
    assert release.json["action_idempotency_key"] == reserve.key
    assert release.key != reserve.key
    # The rejected payment had no effect: it is not compensated.
    assert harness.participants.calls("payment-service", "refund") == []


async def test_transient_failures_retry_with_one_key_and_identical_bodies(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = [503, 500, "ok"]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    reserves = harness.participants.calls("inventory-service", "reserve")
    assert [c.attempt for c in reserves] == [1, 2, 3]
    assert len({c.key for c in reserves}) == 1
    assert len({c.body for c in reserves}) == 1


async def test_retries_run_out_then_the_saga_compensates(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = [503]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPENSATED
    # retries: 2 -> three attempts in all.
    assert [c.attempt for c in harness.participants.calls("inventory-service", "reserve")] == [1, 2, 3]
    # Every attempt was answered with a failure: the reservation never took effect, so only the
    # validation is compensated.
    assert [(c.service, c.action) for c in harness.participants.received][-1] == (
        "order-service",
        "cancel-validation",
    )
    assert harness.participants.calls("inventory-service", "release-reservation") == []


async def test_a_connection_reset_is_retried(harness: Harness) -> None:
    harness.participants.script[("order-service", "validate")] = ["reset", "ok"]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    validates = harness.participants.calls("order-service", "validate")
    assert [c.attempt for c in validates] == [1, 2]
    assert validates[0].key == validates[1].key


async def test_a_timed_out_attempt_is_retried_under_the_same_key(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = ["slow:1.5", "ok"]
    await harness.engine()
    steps = [dict(s) for s in seed_definition()["steps"]]
    steps[1]["timeout"] = 300
    saga_id = await harness.start(steps=steps)
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    reserves = harness.participants.calls("inventory-service", "reserve")
    assert [c.attempt for c in reserves] == [1, 2]
    assert reserves[0].key == reserves[1].key


@pytest.mark.parametrize("status", [401, 404])
async def test_a_contract_error_suspends_and_compensates_nothing(harness: Harness, status: int) -> None:
    harness.participants.script[("payment-service", "charge")] = [status, "ok"]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.SUSPENDED
    assert [(c.service, c.action) for c in harness.participants.received] == FORWARD
    # A person fixes the configuration and resumes: the step runs again under its key, the saga completes.
    await harness.commands.intervene(
        "acme", "ops@example.com", saga_id, ManualCommand.RESUME, reason="fixed", idempotency_key="r-1"
    )
    await harness.engines[0].wake(f"saga-{saga_id}")
    state = await harness.wait_for(saga_id, {"SagaCompleted"})
    assert state.status is SagaStatus.COMPLETED
    charges = harness.participants.calls("payment-service", "charge")
    assert len(charges) == 2
    assert charges[0].key == charges[1].key
    applied = _events(await harness.history(saga_id), "ManualInterventionApplied")
    assert applied[0]["actor"] == "ops@example.com"
    assert applied[0]["reason"] == "fixed"
    assert applied[0]["idempotency_key"] == "r-1"


async def test_a_step_slower_than_the_message_timeout_is_called_once(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = ["slow:1.0"]
    await harness.engine(message_timeout_s=0.2)
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    assert len(harness.participants.calls("inventory-service", "reserve")) == 1


async def test_two_engines_deciding_the_same_saga_make_each_call_once(harness: Harness) -> None:
    # Two groups: every delivery reaches both engines, so both actors fold the same state and decide the
    # same intents at the same time. The per-writer nonce makes only one of them win each slot.
    await harness.engine(group="orchestrator-a")
    await harness.engine(group="orchestrator-b")
    saga_ids = [await harness.start({"order_id": f"o-{i}"}) for i in range(10)]
    for saga_id in saga_ids:
        assert (await harness.wait_for(saga_id)).status is SagaStatus.COMPLETED
    calls = harness.participants.received
    assert len(calls) == 3 * len(saga_ids)
    assert len({(c.key, c.attempt) for c in calls}) == len(calls)


async def test_an_unusable_2xx_suspends_and_an_abort_then_undoes_it(harness: Harness) -> None:
    """Regression: ``200 "charged OK"`` suspended the saga as if nothing had happened, so the abort that
    followed refunded nothing. The charge may exist: the rollback must undo it."""
    harness.participants.script[("payment-service", "charge")] = ["text:charged OK"]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.SUSPENDED
    await harness.commands.intervene(
        "acme", "ops@example.com", saga_id, ManualCommand.ABORT, reason="bad body", idempotency_key="a-1"
    )
    await harness.engines[0].wake(f"saga-{saga_id}")
    state = await harness.wait_for(saga_id, {"SagaCompensated"})
    assert state.status is SagaStatus.COMPENSATED
    charge = harness.participants.calls("payment-service", "charge")[0]
    refunds = harness.participants.calls("payment-service", "refund")
    assert [r.json["action_idempotency_keys"] for r in refunds] == [[charge.key]]
