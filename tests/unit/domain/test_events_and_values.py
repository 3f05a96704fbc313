"""Event encoding, unknown events, timers, backoff, idempotency keys, request bodies, the status table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.domain import (
    EVENT_TYPES,
    Event,
    ManualCommand,
    OutcomeKind,
    Phase,
    RetryPolicy,
    TimerKind,
    Tuning,
    UnknownEvent,
    action_body,
    backoff_ms,
    classify_http_status,
    decode,
    encode,
    idempotency_key,
    jitter_fraction,
    timer_id,
)
from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepAttemptFailed,
    CompensationStepFailed,
    CompensationStepStarted,
    CompensationStepSucceeded,
    ManualInterventionApplied,
    SagaAbortRequested,
    SagaCompensated,
    SagaCompleted,
    SagaDeadLettered,
    SagaSuspended,
    StepAttemptFailed,
    StepFailed,
    StepStarted,
    StepSucceeded,
    TimerFired,
)
from orchestrator.domain.timing import retry_delay_ms
from tests.unit.domain.support import Saga, seed

SAMPLES: list[Event] = [
    Saga(seed()).history[0][0],
    StepStarted("a", 1, 0, "key", "hash", 35_000),
    StepSucceeded("a", 1, {"id": [1, 2, {"x": None}]}, late=True),
    StepAttemptFailed("a", 1, "http_503", "busy", True, False, 1000),
    StepFailed("a", "rejected: http_422", False),
    CompensationStarted("abort requested"),
    CompensationStepStarted("a", 1, 0, "ckey", "akey", "hash", 35_000),
    CompensationStepSucceeded("a", 1),
    CompensationStepAttemptFailed("a", 2, "deadline_passed", "", True, True, None, late=True),
    CompensationStepFailed("a", "cannot compensate: http_422", True),
    TimerFired("s/kick//0", TimerKind.KICK, "", 0, 5000),
    SagaCompleted(),
    SagaCompensated(),
    SagaDeadLettered("why", "a"),
    SagaSuspended("why", "http_401", "a", Phase.ACTION),
    ManualInterventionApplied(ManualCommand.RETRY, "ops", "fixed", "idem", None, ("a", "b"), 5000),
    SagaAbortRequested("ops", "customer", "idem-2", False, 5000),
]


def test_every_event_type_has_a_sample() -> None:
    assert {type(e).__name__ for e in SAMPLES} == EVENT_TYPES


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_events_round_trip_through_json(event: Event) -> None:
    encoded = encode(event)
    wire = json.loads(json.dumps(encoded.data))
    assert encoded.schema == 1
    assert decode(encoded.type, wire, encoded.schema) == event


@pytest.mark.parametrize(
    ("type_name", "data", "schema", "reason"),
    [
        ("StepDeferred", {"step": "a"}, 1, "unknown event type"),
        ("StepStarted", {"step": "a"}, 2, "unknown schema version 2"),
        ("StepStarted", {"step": "a"}, 1, "malformed data"),
        ("StepStarted", ["not", "an", "object"], 1, "malformed data"),
    ],
)
def test_unreadable_events_decode_to_unknown_event(
    type_name: str, data: Any, schema: int, reason: str
) -> None:
    event = decode(type_name, data, schema)
    assert isinstance(event, UnknownEvent)
    assert event.type == type_name
    assert event.reason.startswith(reason)
    # Re-encoding passes the original through untouched.
    if isinstance(data, dict):
        assert encode(event).data == data


def test_timer_ids_are_deterministic() -> None:
    assert timer_id("s", TimerKind.RETRY, "a", 2) == "s/retry/a/2"


def test_backoff_grows_caps_and_jitters_deterministically() -> None:
    policy = RetryPolicy(1_000, 2.0, 10_000, 0.0)
    assert [backoff_ms(policy, "s", "a", "action", n) for n in (1, 2, 3, 4, 5, 500)] == [
        1000,
        2000,
        4000,
        8000,
        10000,
        10000,
    ]
    jittered = RetryPolicy(1_000, 2.0, 10_000, 0.5)
    first = backoff_ms(jittered, "s", "a", "action", 3)
    assert first == backoff_ms(jittered, "s", "a", "action", 3)
    assert 2_000 <= first <= 4_000
    assert 0 <= jitter_fraction("s", "a", "action", 1) < 1
    assert jitter_fraction("s", "a", "action", 1) != jitter_fraction("s", "b", "action", 1)
    assert retry_delay_ms(policy, "s", "a", "action", 1, 5_000, Tuning()) == 5_000


def test_idempotency_keys_change_only_with_the_generation_and_phase() -> None:
    key = idempotency_key("t", "s", "a", Phase.ACTION, 0)
    assert key == idempotency_key("t", "s", "a", Phase.ACTION, 0)
    others = {
        idempotency_key("t", "s", "a", Phase.ACTION, 1),
        idempotency_key("t", "s", "a", Phase.COMPENSATION, 0),
        idempotency_key("u", "s", "a", Phase.ACTION, 0),
        idempotency_key("t", "s", "b", Phase.ACTION, 0),
    }
    assert key not in others
    assert len(others) == 4


def test_request_body_is_canonical_json() -> None:
    assert (
        action_body("s", "a", {"b": 1, "a": [1.5]}) == b'{"input":{"a":[1.5],"b":1},"saga_id":"s","step":"a"}'
    )


@pytest.mark.parametrize(
    ("status", "phase", "kind"),
    [
        (200, Phase.ACTION, OutcomeKind.SUCCEEDED),
        (201, Phase.COMPENSATION, OutcomeKind.SUCCEEDED),
        (404, Phase.COMPENSATION, OutcomeKind.SUCCEEDED),
        (410, Phase.COMPENSATION, OutcomeKind.SUCCEEDED),
        (404, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (422, Phase.ACTION, OutcomeKind.REJECTED),
        (402, Phase.ACTION, OutcomeKind.REJECTED),
        (418, Phase.ACTION, OutcomeKind.REJECTED),
        (422, Phase.COMPENSATION, OutcomeKind.REJECTED),
        (408, Phase.ACTION, OutcomeKind.TRANSIENT),
        (409, Phase.ACTION, OutcomeKind.TRANSIENT),
        (425, Phase.ACTION, OutcomeKind.TRANSIENT),
        (429, Phase.COMPENSATION, OutcomeKind.TRANSIENT),
        (503, Phase.ACTION, OutcomeKind.TRANSIENT),
        (301, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (400, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (401, Phase.COMPENSATION, OutcomeKind.MISCONFIGURED),
        (403, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (415, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (101, Phase.ACTION, OutcomeKind.MISCONFIGURED),
    ],
)
def test_http_status_table(status: int, phase: Phase, kind: OutcomeKind) -> None:
    assert classify_http_status(status, phase) is kind
