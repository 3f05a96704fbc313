"""The history checker against small hand-made histories: each rule passes a clean history and catches the
violation it exists for (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.domain.definitions import canonical_dict, definition_hash, parse_definition
from orchestrator.eventstore.types import Position, RecordedEvent
from tests.faults.checker import Call, Effect, check

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SEQUENTIAL = {
    "name": "two-steps",
    "version": "1.0.0",
    "steps": [
        {"name": "a", "service": "s1", "action": "do-a", "compensation": "undo-a", "timeout": 500},
        {"name": "b", "service": "s2", "action": "do-b", "compensation": "undo-b", "timeout": 500},
    ],
}
# "b" depends on "a": b's compensation must finish before a's starts.
DAG = {**SEQUENTIAL, "name": "dag", "steps": [dict(s, depends_on=[]) for s in SEQUENTIAL["steps"]]}
DAG["steps"][1]["depends_on"] = ["a"]


@dataclass
class World:
    """Histories, calls and the ledger, built together the way the engine and participants would."""

    histories: dict[str, list[RecordedEvent]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    effects: dict[str, Effect] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    _position: int = 0

    def check(self) -> list[str]:
        return check(self.histories, self.calls, self.effects, self.acknowledged)

    def saga(self, definition: dict[str, Any] = SEQUENTIAL) -> Saga:
        saga = Saga(self, str(uuid.uuid4()), definition)
        self.acknowledged.add(saga.saga_id)
        return saga


@dataclass
class Saga:
    world: World
    saga_id: str
    definition: dict[str, Any]

    def __post_init__(self) -> None:
        parsed = parse_definition(self.definition)
        self.world.histories[self.saga_id] = []
        self.add(
            "SagaStarted",
            tenant="acme",
            saga_id=self.saga_id,
            client_id=None,
            definition_name=parsed.name,
            definition_version=parsed.version,
            definition_hash=definition_hash(parsed),
            definition=canonical_dict(parsed),
            context={"order": 1},
            deadline_ms=None,
            kick_ms=500,
        )

    @property
    def events(self) -> list[RecordedEvent]:
        return self.world.histories[self.saga_id]

    def add(self, type_: str, **data: Any) -> None:
        self.world._position += 1
        revision = len(self.events)
        self.events.append(
            RecordedEvent(
                id=uuid.uuid4(),
                type=type_,
                data=json.dumps(data).encode(),
                metadata=b'{"schema":"1"}',
                stream=f"saga-{self.saga_id}",
                revision=revision,
                position=Position(self.world._position),
                recorded_at=T0 + timedelta(milliseconds=10 * revision),
            )
        )

    def body(self, step: str, action_keys: Sequence[str] = ()) -> bytes:
        value: dict[str, Any] = {"saga_id": self.saga_id, "step": step, "input": {"order": 1}}
        if action_keys:
            value.update(action_idempotency_key=action_keys[-1], action_idempotency_keys=list(action_keys))
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

    def start(self, step: str, attempt: int = 1, generation: int = 0) -> str:
        key = f"{self.saga_id}/{step}/action/{generation}"
        digest = hashlib.sha256(self.body(step)).hexdigest()
        self.add(
            "StepStarted",
            step=step,
            attempt=attempt,
            generation=generation,
            idempotency_key=key,
            request_hash=digest,
            deadline_ms=1000,
        )
        return key

    def call(
        self, step: str, key: str, attempt: int = 1, status: int | None = 200, applied: bool = True
    ) -> None:
        spec = next(s for s in self.definition["steps"] if s["name"] == step)
        self.world.calls.append(
            Call(
                spec["service"],
                spec["action"],
                self.saga_id,
                key,
                attempt,
                self.body(step),
                False,
                status,
                applied,
                done=True,
            )
        )
        if applied:
            self.world.effects[key] = Effect(key, spec["service"], spec["action"], self.saga_id, step)

    def person_retries(self, step: str) -> None:
        self.add(
            "ManualInterventionApplied",
            command="retry",
            actor="ops",
            reason="",
            idempotency_key=f"retry-{len(self.events)}",
            requested_step=None,
            steps=[step],
            kick_ms=500,
        )

    def succeed(self, step: str, attempt: int = 1) -> None:
        self.add("StepSucceeded", step=step, attempt=attempt, output={"ok": True}, late=False)

    def fail(self, step: str, attempt: int = 1, *, error: str = "http_422", unknown: bool = False) -> None:
        self.add(
            "StepAttemptFailed",
            step=step,
            attempt=attempt,
            error_class=error,
            detail="",
            retryable=False,
            outcome_unknown=unknown,
            retry_in_ms=None,
        )

    def compensate(
        self, step: str, action_keys: Sequence[str], *, undo: bool = True, attempt: int = 1
    ) -> str:
        key = f"{self.saga_id}/{step}/compensation/0"
        body = self.body(step, action_keys)
        self.add(
            "CompensationStepStarted",
            step=step,
            attempt=attempt,
            generation=0,
            idempotency_key=key,
            action_idempotency_key=action_keys[-1],
            action_idempotency_keys=list(action_keys),
            request_hash=hashlib.sha256(body).hexdigest(),
            deadline_ms=1000,
        )
        spec = next(s for s in self.definition["steps"] if s["name"] == step)
        undone = tuple(k for k in action_keys if undo and k in self.world.effects)
        for k in undone:
            self.world.effects[k].undone_by = key
        self.world.calls.append(
            Call(
                spec["service"],
                spec["compensation"],
                self.saga_id,
                key,
                attempt,
                body,
                True,
                200,
                undone=undone,
                done=True,
            )
        )
        self.add("CompensationStepSucceeded", step=step, attempt=attempt, late=False)
        return key


def completed(world: World) -> Saga:
    saga = world.saga()
    for step in ("a", "b"):
        key = saga.start(step)
        saga.call(step, key)
        saga.succeed(step)
    saga.add("SagaCompleted")
    return saga


def compensated(world: World, definition: dict[str, Any] = SEQUENTIAL) -> Saga:
    """a succeeds, b is rejected, a is compensated."""
    saga = world.saga(definition)
    key_a = saga.start("a")
    saga.call("a", key_a)
    saga.succeed("a")
    key_b = saga.start("b")
    saga.call("b", key_b, status=422, applied=False)
    saga.fail("b")
    saga.add("StepFailed", step="b", reason="rejected", outcome_unknown=False)
    saga.add("CompensationStarted", reason="step 'b' failed")
    saga.compensate("a", [key_a])
    saga.add("SagaCompensated")
    return saga


def rules(violations: list[str]) -> set[str]:
    return {v.split(" ", 1)[0] for v in violations}


def test_clean_histories_pass() -> None:
    world = World()
    completed(world)
    compensated(world)
    compensated(world, DAG)
    assert world.check() == []


def test_r1_a_call_without_a_durable_intent() -> None:
    world = World()
    saga = completed(world)
    saga.call("a", "never-recorded", applied=False)
    violations = world.check()
    assert rules(violations) == {"R1"}, violations
    assert "never-recorded" in violations[0]


def test_r1_the_same_attempt_sent_twice() -> None:
    world = World()
    saga = completed(world)
    world.calls.append(world.calls[0])
    violations = world.check()
    assert rules(violations) == {"R1"}, violations
    assert "2 times" in violations[0]
    assert saga.saga_id in violations[0]


def test_r2_a_second_key_for_one_step_phase_and_generation() -> None:
    world = World()
    saga = world.saga()
    saga.start("a")
    # A second intent for the same generation under another key (the engine re-derived it differently).
    saga.add(
        "StepStarted",
        step="a",
        attempt=2,
        generation=0,
        idempotency_key="other-key",
        request_hash=hashlib.sha256(saga.body("a")).hexdigest(),
        deadline_ms=1000,
    )
    saga.add("SagaDeadLettered", reason="test", step="a")
    violations = world.check()
    assert rules(violations) == {"R2"}, violations
    assert "2 idempotency keys" in violations[0]


def test_r2_a_body_that_changed_between_attempts() -> None:
    world = World()
    saga = completed(world)
    first = world.calls[0]
    world.calls.append(
        Call(
            first.service, first.action, saga.saga_id, first.key, 2, first.body + b" ", False, 200, done=True
        )
    )
    saga.add(
        "StepStarted",
        step="a",
        attempt=2,
        generation=0,
        idempotency_key=first.key,
        request_hash=hashlib.sha256(first.body).hexdigest(),
        deadline_ms=1000,
    )
    saga.succeed("a", 2)
    violations = world.check()
    assert rules(violations) == {"R2"}, violations
    assert any("different bodies" in v for v in violations)
    assert any("not the intent's request_hash" in v for v in violations)


def test_r3_a_2xx_recorded_as_no_effect() -> None:
    world = World()
    saga = world.saga()
    key = saga.start("a")
    saga.call("a", key, status=200)  # e.g. a 2xx whose body was not JSON
    saga.fail("a", error="bad_output", unknown=False)
    saga.add("SagaSuspended", reason="bad output", error_class="bad_output", step="a", phase="action")
    violations = world.check()
    assert rules(violations) == {"R3"}, violations
    assert "a 2xx recorded as 'no effect'" in violations[0]
    # The same history with the 2xx recorded as "outcome unknown" is fine.
    world2 = World()
    saga2 = world2.saga()
    key2 = saga2.start("a")
    saga2.call("a", key2, status=200)
    saga2.fail("a", error="bad_output", unknown=True)
    saga2.add("SagaSuspended", reason="bad output", error_class="bad_output", step="a", phase="action")
    assert world2.check() == []


def test_r3_an_observed_answer_that_was_never_recorded() -> None:
    world = World()
    saga = world.saga()
    key = saga.start("a")
    saga.call("a", key, status=503, applied=False)
    # Only the deadline was recorded: the 503 the engine read was dropped.
    saga.add(
        "TimerFired",
        timer_id=f"{saga.saga_id}/attempt_deadline/a/1",
        kind="attempt_deadline",
        step="a",
        attempt=1,
    )
    saga.fail("a", error="deadline_passed", unknown=True)
    saga.add("StepFailed", step="a", reason="gave up", outcome_unknown=True)
    saga.add("SagaDeadLettered", reason="test", step="a")
    violations = world.check()
    assert rules(violations) == {"R3"}, violations
    assert "dropped" in violations[0]


def test_r3_a_withheld_attempt_that_arrived() -> None:
    world = World()
    saga = world.saga()
    key = saga.start("a")
    saga.call("a", key, status=None, applied=False)
    saga.add(
        "StepAttemptFailed",
        step="a",
        attempt=1,
        error_class="not_sent",
        detail="",
        retryable=True,
        outcome_unknown=False,
        retry_in_ms=None,
        withheld=True,
    )
    saga.add("SagaDeadLettered", reason="test", step="a")
    violations = world.check()
    assert rules(violations) == {"R3"}, violations
    assert "withheld" in violations[0]


def test_r4_a_compensated_saga_with_an_effect_left() -> None:
    world = World()
    saga = compensated(world)
    key_a = next(iter(world.effects))
    world.effects[key_a].undone_by = None  # the compensation named a key the participant did not know
    violations = world.check()
    assert rules(violations) == {"R4"}, violations
    assert saga.saga_id in violations[0]
    assert key_a in violations[0]


def test_r4_compensation_after_a_manual_retry_must_name_every_generation() -> None:
    world = World()
    saga = world.saga()
    old = saga.start("a")
    saga.call("a", old, status=200)
    saga.fail("a", error="bad_output", unknown=True)  # recorded as unknown: the engine knows
    saga.add("SagaSuspended", reason="bad output", error_class="bad_output", step="a", phase="action")
    saga.person_retries("a")
    new = saga.start("a", attempt=2, generation=1)
    saga.call("a", new, attempt=2)
    saga.succeed("a", 2)
    key_b = saga.start("b")
    saga.call("b", key_b, status=422, applied=False)
    saga.fail("b")
    saga.add("StepFailed", step="b", reason="rejected", outcome_unknown=False)
    saga.add("CompensationStarted", reason="b failed")
    saga.compensate("a", [new])  # only the newest generation's key
    saga.add("SagaCompensated")
    violations = world.check()
    assert rules(violations) == {"R4"}, violations
    assert old in violations[0]
    assert "never undone" in violations[0]


def test_r4_a_completed_saga_with_a_double_effect() -> None:
    world = World()
    saga = world.saga()
    old = saga.start("a")
    saga.call("a", old, status=200)
    saga.fail("a", error="bad_output", unknown=False)
    saga.add("SagaSuspended", reason="bad output", error_class="bad_output", step="a", phase="action")
    # The engine said "no effect", so the person retried under a new key: a double charge.
    saga.person_retries("a")
    new = saga.start("a", attempt=2, generation=1)
    saga.call("a", new, attempt=2)
    saga.succeed("a", 2)
    key_b = saga.start("b")
    saga.call("b", key_b)
    saga.succeed("b")
    saga.add("SagaCompleted")
    violations = world.check()
    assert rules(violations) == {"R3", "R4"}, violations
    assert any("2 live effects" in v for v in violations)


def test_r4_a_double_effect_a_person_asked_for_is_not_blamed_on_the_engine() -> None:
    world = World()
    saga = world.saga()
    old = saga.start("a")
    saga.call("a", old, status=200)
    saga.fail("a", error="bad_output", unknown=True)  # the engine said "may have taken effect"
    saga.add("SagaSuspended", reason="bad output", error_class="bad_output", step="a", phase="action")
    saga.person_retries("a")
    new = saga.start("a", attempt=2, generation=1)
    saga.call("a", new, attempt=2)
    saga.succeed("a", 2)
    key_b = saga.start("b")
    saga.call("b", key_b)
    saga.succeed("b")
    saga.add("SagaCompleted")
    assert world.check() == []


def test_r4_a_completed_step_without_an_effect() -> None:
    world = World()
    saga = completed(world)
    del world.effects[world.calls[1].key]
    violations = world.check()
    assert rules(violations) == {"R4"}, violations
    assert saga.saga_id in violations[0]
    assert "'b'" in violations[0]


def test_r5_a_step_compensated_before_its_dependent() -> None:
    world = World()
    saga = world.saga(DAG)
    key_a = saga.start("a")
    saga.call("a", key_a)
    saga.succeed("a")
    key_b = saga.start("b")
    saga.call("b", key_b)
    saga.succeed("b")
    saga.add(
        "SagaAbortRequested", actor="ops", reason="stop", idempotency_key="x", waive_pivot=False, kick_ms=500
    )
    saga.add("CompensationStarted", reason="abort requested")
    saga.compensate("a", [key_a])  # a first: b still holds what it built on a
    saga.compensate("b", [key_b])
    saga.add("SagaCompensated")
    violations = world.check()
    assert rules(violations) == {"R5"}, violations
    assert "'a'" in violations[0]
    assert "'b'" in violations[0]


def test_r6_a_saga_left_running() -> None:
    world = World()
    saga = world.saga()
    key = saga.start("a")
    saga.call("a", key)
    saga.succeed("a")
    violations = world.check()
    assert rules(violations) == {"R6"}, violations
    assert "left running" in violations[0]
    # A saga waiting for a person is fine.
    saga.add("SagaDeadLettered", reason="needs a person", step="a")
    assert world.check() == []


def test_r7_an_acknowledged_start_that_was_lost() -> None:
    world = World()
    completed(world)
    world.acknowledged.add("0b7a0a53-8a43-4c55-8f55-2f7cfd1e1d1e")
    violations = world.check()
    assert rules(violations) == {"R7"}, violations
    assert "0b7a0a53" in violations[0]
