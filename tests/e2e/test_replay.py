"""Replay for audit: the timeline of a real saga, the state at a revision, and verification."""

from __future__ import annotations

import dataclasses
import json

from orchestrator.cli.replay import render, replay, verify
from orchestrator.domain.vocabulary import SagaStatus
from tests.e2e.conftest import Harness


async def test_replay_shows_every_event_with_actor_and_the_state_after_it(harness: Harness) -> None:
    harness.participants.script[("payment-service", "charge")] = [422]
    await harness.engine()
    saga_id = await harness.start()
    await harness.wait_for(saga_id)
    events = await harness.history(saga_id)
    result = replay(events)
    assert [e.revision for e in result.entries] == [e.revision for e in events]
    assert result.entries[0].actor == "test"
    assert result.entries[1].actor.startswith("engine:")
    assert result.final is not None
    assert result.final.status is SagaStatus.COMPENSATED
    assert verify(events, result) == []
    timeline = render(result)
    assert "CompensationStarted" in timeline
    assert "→ compensated" in timeline
    at_one = json.loads(render(result, at=1))
    assert at_one["status"] == "running"
    assert at_one["steps"]["validate-order"] == "running#1"


async def test_verify_detects_a_tampered_definition(harness: Harness) -> None:
    await harness.engine()
    saga_id = await harness.start()
    await harness.wait_for(saga_id)
    events = await harness.history(saga_id)
    data = json.loads(events[0].data)
    data["definition"]["steps"][0]["retries"] = 99  # what ran is no longer what the hash pins
    tampered = [dataclasses.replace(events[0], data=json.dumps(data).encode()), *events[1:]]
    problems = verify(tampered, replay(tampered))
    assert any("hash" in p for p in problems)
