"""Regressions for effects a fault could leave uncompensated, and attempts a slow store could use up:
an unusable 2xx (then skip or abort), a person's retry under a new generation, a withheld attempt."""

from __future__ import annotations

import json

import pytest

from orchestrator.domain import (
    CallStatus,
    Intervene,
    ManualCommand,
    OutcomeKind,
    Plan,
    SagaStatus,
    StartCompensationStep,
    StartStep,
    decide,
)
from orchestrator.domain.errors import DomainConflict
from orchestrator.domain.events import ManualInterventionApplied
from tests.unit.domain.support import Saga, definition, names, pivot_saga, step


def cmd(command: ManualCommand, key: str, step_name: str | None = None) -> Intervene:
    return Intervene(command, "ops@example", "ticket 7", key, step_name)


def compensation_calls(saga: Saga, plan: Plan) -> dict[str, StartCompensationStep]:
    """Run the saga's compensation from ``plan`` on, every undo succeeding; the calls it made, by step."""
    calls: dict[str, StartCompensationStep] = {}
    for _ in range(10):
        pending = [c for c in plan.calls if isinstance(c, StartCompensationStep)]
        if not pending:
            break
        for call in pending:
            calls[call.step] = call
        for call in pending:
            plan = saga.undo(call.step)
    assert saga.state.status is SagaStatus.COMPENSATED, saga.state.status
    return calls


def unusable_2xx(saga: Saga, name: str) -> None:
    """The participant answered 2xx with a body the engine cannot use (not JSON, or too large)."""
    saga.outcome(name, OutcomeKind.MISCONFIGURED, error_class="bad_output", outcome_unknown=True)
    assert saga.state.status is SagaStatus.SUSPENDED


def test_unusable_2xx_then_abort_compensates_the_step() -> None:
    saga = Saga(definition(step("charge")))
    saga.run()
    unusable_2xx(saga, "charge")
    saga.record(decide(saga.state, cmd(ManualCommand.ABORT, "abort-1"), saga.now))
    calls = compensation_calls(saga, saga.run())
    assert set(calls) == {"charge"}


def test_unusable_2xx_then_skip_then_rollback_compensates_the_step() -> None:
    saga = Saga(definition(step("charge"), step("ship", depends_on=["charge"])))
    saga.run()
    unusable_2xx(saga, "charge")
    saga.record(decide(saga.state, cmd(ManualCommand.SKIP, "skip-1"), saga.now))
    plan = saga.run()
    ship = next(c for c in plan.calls if isinstance(c, StartStep))
    assert ship.step == "ship"
    plan = saga.outcome("ship", OutcomeKind.REJECTED)
    assert saga.state.status is SagaStatus.COMPENSATING
    calls = compensation_calls(saga, plan)
    assert "charge" in calls


def test_compensation_names_every_generation_that_may_have_taken_effect() -> None:
    saga = Saga(definition(step("charge", retries=0, timeout=1_000), step("ship", depends_on=["charge"])))
    saga.run()
    first_key = saga.state.steps["charge"].action.idempotency_key
    # The only attempt's deadline passes: its outcome is unknown; the saga rolls back and the compensation
    # of that generation fails, so the saga waits for a person.
    plan = saga.fire_due()
    assert saga.state.steps["charge"].action.status is CallStatus.FAILED
    comp = next(c for c in plan.calls if isinstance(c, StartCompensationStep))
    assert comp.action_idempotency_keys == (first_key,)


def test_pivot_with_unknown_outcome_is_retried_under_a_new_key_only_when_named() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    # Every attempt of the pivot times out: its outcome is unknown, so the saga is dead-lettered.
    while saga.state.status is SagaStatus.RUNNING:
        saga.fire_due()
    assert saga.state.status is SagaStatus.DEAD_LETTERED
    charge = saga.state.steps["charge"]
    first_key = charge.action.idempotency_key
    assert charge.effective_keys == (first_key,)
    # A default retry must not charge again under a new key while the first charge may exist.
    with pytest.raises(DomainConflict, match="may have taken effect"):
        decide(saga.state, cmd(ManualCommand.RETRY, "retry-1"), saga.now)
    # Naming it is the recorded decision: a new generation runs under a new key.
    applied = decide(saga.state, cmd(ManualCommand.RETRY, "retry-2", "charge"), saga.now)
    assert [e.requested_step for e in applied if isinstance(e, ManualInterventionApplied)] == ["charge"]
    saga.record(applied)
    plan = saga.run()
    start = next(c for c in plan.calls if isinstance(c, StartStep))
    assert start.step == "charge"
    assert start.idempotency_key != first_key
    # The new generation is refused, but the first one may still have charged: no rollback past it.
    saga.outcome("charge", OutcomeKind.REJECTED)
    assert saga.state.status is SagaStatus.DEAD_LETTERED
    assert saga.state.steps["charge"].effective_keys == (first_key,)


def test_compensatable_step_retried_under_a_new_key_is_undone_under_both_keys() -> None:
    saga = Saga(definition(step("reserve", retries=0, timeout=1_000)))
    saga.run()
    first_key = saga.state.steps["reserve"].action.idempotency_key
    # Suspended after an unusable 2xx: the effect exists under the first key.
    unusable_2xx(saga, "reserve")
    saga.record(decide(saga.state, cmd(ManualCommand.RETRY, "retry-1", "reserve"), saga.now))
    plan = saga.run()
    second = next(c for c in plan.calls if isinstance(c, StartStep))
    assert second.idempotency_key != first_key
    plan = saga.outcome("reserve", OutcomeKind.TRANSIENT, error_class="timeout", outcome_unknown=True)
    assert saga.state.status is SagaStatus.COMPENSATING
    calls = compensation_calls(saga, plan)
    comp = calls["reserve"]
    assert comp.action_idempotency_keys == (first_key, second.idempotency_key)
    assert comp.action_idempotency_key == second.idempotency_key
    body = json.loads(comp.body)
    assert body["action_idempotency_keys"] == [first_key, second.idempotency_key]


def test_a_rejected_newer_generation_leaves_only_the_older_key() -> None:
    saga = Saga(definition(step("reserve", retries=0)))
    saga.run()
    first_key = saga.state.steps["reserve"].action.idempotency_key
    unusable_2xx(saga, "reserve")
    saga.record(decide(saga.state, cmd(ManualCommand.RETRY, "retry-1", "reserve"), saga.now))
    saga.run()
    calls = compensation_calls(saga, saga.outcome("reserve", OutcomeKind.REJECTED))
    assert calls["reserve"].action_idempotency_keys == (first_key,)


def test_withheld_attempt_does_not_use_up_a_step_without_retries() -> None:
    saga = Saga(definition(step("charge", retries=0)))
    saga.run()
    plan = saga.outcome("charge", OutcomeKind.TRANSIENT, error_class="not_sent", withheld=True)
    assert names(plan.events) == ["StepAttemptFailed"]
    assert saga.state.steps["charge"].action.status is CallStatus.RETRY_WAIT
    plan = saga.fire_due()
    assert [c.attempt for c in plan.calls if isinstance(c, StartStep)] == [2]
    saga.ok("charge")
    assert saga.state.status is SagaStatus.COMPLETED


def test_withheld_attempts_are_free_only_a_few_times() -> None:
    saga = Saga(definition(step("charge", retries=0)))
    saga.run()
    for _ in range(3):
        saga.outcome("charge", OutcomeKind.TRANSIENT, error_class="not_sent", withheld=True)
        assert saga.state.steps["charge"].action.status is CallStatus.RETRY_WAIT
        saga.fire_due()
    saga.outcome("charge", OutcomeKind.TRANSIENT, error_class="not_sent", withheld=True)
    assert saga.state.steps["charge"].action.status is CallStatus.FAILED


def test_an_unreachable_participant_still_uses_up_the_budget() -> None:
    saga = Saga(definition(step("charge", retries=0)))
    saga.run()
    saga.outcome("charge", OutcomeKind.TRANSIENT, error_class="connection")
    assert saga.state.steps["charge"].action.status is CallStatus.FAILED


def test_an_abort_while_the_pivot_waits_to_ask_again_learns_its_outcome_first() -> None:
    """Regression (found by the randomized fault run): the pivot's first attempt had an unknown outcome
    and waited to retry; an abort then dead-lettered the saga at once, and no command could ask the pivot
    again. Now the pivot is asked again under its key, and its answer decides."""
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    key = saga.state.steps["charge"].action.idempotency_key
    saga.outcome("charge", OutcomeKind.TRANSIENT, error_class="connection", outcome_unknown=True)
    assert saga.state.steps["charge"].action.status is CallStatus.RETRY_WAIT
    saga.record(decide(saga.state, cmd(ManualCommand.ABORT, "abort-1"), saga.now))
    plan = saga.run()
    assert "SagaDeadLettered" not in names(plan.events)
    plan = saga.fire_due()
    again = [c for c in plan.calls if isinstance(c, StartStep)]
    assert [(c.step, c.attempt, c.idempotency_key) for c in again] == [("charge", 2, key)]
    # It had taken effect: the saga can only go forward now.
    plan = saga.ok("charge")
    assert [c.step for c in plan.calls if isinstance(c, StartStep)] == ["ship"]
    saga.ok("ship")
    assert saga.state.status is SagaStatus.COMPLETED


def test_an_abort_while_the_pivot_waits_and_the_pivot_times_out_again_dead_letters() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    saga.outcome("charge", OutcomeKind.TRANSIENT, error_class="connection", outcome_unknown=True)
    saga.record(decide(saga.state, cmd(ManualCommand.ABORT, "abort-1"), saga.now))
    saga.run()
    while saga.state.status is SagaStatus.RUNNING:
        saga.fire_due()
    # Its budget is spent and its outcome still unknown: a person decides (resume asks again).
    assert saga.state.status is SagaStatus.DEAD_LETTERED
    resumed = decide(saga.state, cmd(ManualCommand.RESUME, "resume-1"), saga.now)
    saga.record(resumed)
    plan = saga.run()
    assert [c.step for c in plan.calls if isinstance(c, StartStep)] == ["charge"]


def _retry_after_a_timeout(saga: Saga, name: str) -> None:
    """``name``'s first attempt times out (its outcome may still come, late) and its second one starts."""
    plan = saga.fire_due()  # the first attempt's deadline: outcome unknown, a retry is due
    while not any(isinstance(c, StartStep) and c.step == name for c in plan.calls):
        plan = saga.fire_due()
    assert saga.state.steps[name].action.attempt == 2


def _until_the_attempt_deadline_passes(saga: Saga) -> Plan:
    """Fire timers (a kick may come first) until an attempt's deadline passes; nothing is undone before."""
    plan = saga.fire_due()
    while "StepAttemptFailed" not in names(plan.events):
        assert plan.calls == []
        plan = saga.fire_due()
    return plan


def test_a_rollback_waits_for_an_attempt_still_in_flight_after_an_earlier_ones_late_success() -> None:
    # Found by the decider's property test: the late success ended the call in the fold while the retry
    # was in flight, dropping its deadline, and the rollback undid the step and its ancestor under it.
    saga = Saga(definition(step("reserve"), step("charge", retries=1, timeout=1_000)))
    saga.run()
    saga.ok("reserve")
    _retry_after_a_timeout(saga, "charge")
    saga.record(decide(saga.state, cmd(ManualCommand.ABORT, "abort-1"), saga.now))
    assert names(saga.run().events) == ["CompensationStarted"]  # charge is in flight: nothing undone yet
    plan = saga.outcome("charge", OutcomeKind.SUCCEEDED, attempt=1, output={"late": True})
    assert saga.state.steps["charge"].action.status is CallStatus.SUCCEEDED
    assert plan.calls == [], "compensating while an attempt of charge is in flight"
    # Its deadline passing is recorded (outcome unknown); then charge is undone, and reserve after it.
    plan = _until_the_attempt_deadline_passes(saga)
    assert names(plan.events) == ["TimerFired", "StepAttemptFailed", "CompensationStepStarted"]
    assert saga.state.steps["charge"].action.timed_out == {1, 2}
    assert set(compensation_calls(saga, plan)) == {"reserve", "charge"}


def test_an_attempt_under_a_new_key_in_flight_at_an_earlier_keys_late_success_is_undone_too() -> None:
    saga = Saga(definition(step("reserve", retries=1, timeout=1_000), step("ship", depends_on=["reserve"])))
    saga.run()
    first_key = saga.state.steps["reserve"].action.idempotency_key
    _retry_after_a_timeout(saga, "reserve")
    unusable_2xx(saga, "reserve")  # the retry (same key): the saga waits for a person
    saga.record(decide(saga.state, cmd(ManualCommand.RETRY, "retry-1", "reserve"), saga.now))
    [third] = [c for c in saga.run().calls if isinstance(c, StartStep)]
    assert third.idempotency_key != first_key
    # The first attempt's success comes late while the third runs under the new key: the saga goes on.
    plan = saga.outcome("reserve", OutcomeKind.SUCCEEDED, attempt=1, output={"late": True})
    assert [c.step for c in plan.calls if isinstance(c, StartStep)] == ["ship"]
    plan = saga.outcome("ship", OutcomeKind.REJECTED)
    assert saga.state.status is SagaStatus.COMPENSATING
    assert plan.calls == [], "the third attempt may still take effect under the new key"
    comp = compensation_calls(saga, _until_the_attempt_deadline_passes(saga))["reserve"]
    assert comp.action_idempotency_keys == (first_key, third.idempotency_key)
