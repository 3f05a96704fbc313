"""The pivot end to end: once the point of no return has succeeded, the saga only moves forward."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.app.errors import Conflict
from orchestrator.domain.vocabulary import ManualCommand, SagaStatus
from tests.e2e.conftest import Harness, seed_definition


def _pivot_steps() -> list[dict[str, Any]]:
    steps = [dict(s) for s in seed_definition()["steps"]]
    steps[2].update(kind="pivot")  # charging the card cannot be undone
    del steps[2]["compensation"]
    steps.append(
        {
            "name": "ship-order",
            "service": "order-service",
            "action": "ship",
            "kind": "retriable",
            "timeout": 2000,
        }
    )
    return steps


async def test_after_the_pivot_failures_retry_forward_and_abort_is_refused(harness: Harness) -> None:
    # Shipping fails more times than any step's retries allow: after the pivot it keeps retrying.
    harness.participants.script[("order-service", "ship")] = [503, 503, 503, 503, 503, "ok"]
    await harness.engine()
    saga_id = await harness.start(steps=_pivot_steps())
    state = await harness.wait_for(saga_id, {"SagaCompleted", "SagaCompensated", "SagaDeadLettered"})
    assert state.status is SagaStatus.COMPLETED
    ships = harness.participants.calls("order-service", "ship")
    assert [c.attempt for c in ships] == [1, 2, 3, 4, 5, 6]
    assert len({c.key for c in ships}) == 1
    history = await harness.history(saga_id)
    assert "CompensationStarted" not in [e.type for e in history]
    with pytest.raises(Conflict):
        await harness.commands.intervene(
            "acme", "ops", saga_id, ManualCommand.ABORT, reason="too late", idempotency_key="late"
        )


async def test_a_business_rejection_after_the_pivot_dead_letters(harness: Harness) -> None:
    harness.participants.script[("order-service", "ship")] = [422]
    await harness.engine()
    saga_id = await harness.start(steps=_pivot_steps())
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.DEAD_LETTERED
    history = await harness.history(saga_id)
    assert "CompensationStarted" not in [e.type for e in history]
    assert harness.participants.calls("inventory-service", "release-reservation") == []
    charged = [json.loads(e.data) for e in history if e.type == "StepSucceeded"]
    assert "process-payment" in [c["step"] for c in charged]
