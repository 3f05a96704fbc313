"""Given these events, when this happens, then these events and commands: every saga transition."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.domain import (
    CallStatus,
    CompleteSaga,
    FireTimer,
    InvalidMessage,
    OutcomeKind,
    Phase,
    SagaStatus,
    StartStep,
    StepOutcome,
    Suspend,
    TimerKind,
    UnknownEvent,
    UnreadableHistory,
    action_body,
    decide,
    evolve,
    fold,
    idempotency_key,
    react,
    sha256_hex,
    timer_changes,
)
from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepStarted,
    SagaStarted,
    StepAttemptFailed,
    StepFailed,
    StepStarted,
    StepSucceeded,
    TimerFired,
)
from tests.unit.domain.support import CONTEXT, T0, P, R, Saga, V, definition, names, pivot_saga, seed, step

# --- forward ----------------------------------------------------------------------------------------------


def test_start_arms_a_kick_and_the_saga_deadline() -> None:
    saga = Saga(definition(step("a"), timeout=60_000))
    kinds = {t.kind: t.due_at for t in saga.state.timers.values()}
    assert kinds == {
        TimerKind.KICK: T0 + timedelta(seconds=5),
        TimerKind.SAGA_DEADLINE: T0 + timedelta(seconds=60),
    }
    assert saga.state.status is SagaStatus.RUNNING


def test_first_intent_carries_key_hash_and_deadline_and_replaces_the_kick() -> None:
    saga = Saga(seed())
    plan = saga.run()
    key = idempotency_key("t1", "saga-1", V, Phase.ACTION, 0)
    body = action_body("saga-1", V, CONTEXT)
    assert plan.events == [StepStarted(V, 1, 0, key, sha256_hex(body), 35_000)]
    (call,) = plan.calls
    assert isinstance(call, StartStep)
    assert (call.service, call.action, call.body, call.timeout_ms) == (
        "order-service",
        "validate",
        body,
        30_000,
    )
    assert [t.kind for t in saga.state.timers.values()] == [TimerKind.ATTEMPT_DEADLINE]
    assert saga.state.step(V).action.deadline_at == T0 + timedelta(seconds=35)


def test_outcome_and_next_intent_are_one_append_and_the_last_success_completes() -> None:
    saga = Saga(seed())
    saga.run()
    assert names(saga.ok(V).events) == ["StepSucceeded", "StepStarted"]
    assert names(saga.ok(R).events) == ["StepSucceeded", "StepStarted"]
    assert names(saga.ok(P, {"charge": 1}).events) == ["StepSucceeded", "SagaCompleted"]
    assert saga.state.status is SagaStatus.COMPLETED
    assert saga.state.step(P).output == {"charge": 1}
    assert saga.state.timers == {}
    assert react(saga.state, saga.now + timedelta(days=1)) == []


def test_parallel_roots_start_together_and_a_join_waits_for_both() -> None:
    saga = Saga(definition(step("a"), step("b"), step("c", depends_on=["a", "b"])))
    assert [e.step for e in saga.run().events if isinstance(e, StepStarted)] == ["a", "b"]
    assert names(saga.ok("a").events) == ["StepSucceeded"]
    assert names(saga.ok("b").events) == ["StepSucceeded", "StepStarted"]


def test_transient_failure_retries_with_the_same_key_and_body() -> None:
    saga = Saga(seed())
    first = saga.run().calls[0]
    plan = saga.outcome(V, OutcomeKind.TRANSIENT, error_class="http_503")
    (failed,) = plan.events
    assert isinstance(failed, StepAttemptFailed)
    assert failed.retryable
    assert failed.retry_in_ms is not None
    assert 800 <= failed.retry_in_ms <= 1000
    assert saga.state.step(V).action.status is CallStatus.RETRY_WAIT
    plan = saga.fire_due()
    assert names(plan.events) == ["TimerFired", "StepStarted"]
    second = plan.calls[0]
    assert isinstance(second, StartStep)
    assert isinstance(first, StartStep)
    assert (second.attempt, second.idempotency_key, second.body) == (2, first.idempotency_key, first.body)


def test_retry_after_is_honoured_but_capped() -> None:
    saga = Saga(seed())
    saga.run()
    plan = saga.outcome(V, OutcomeKind.TRANSIENT, retry_after_ms=10_000_000)
    assert isinstance(plan.events[0], StepAttemptFailed)
    assert plan.events[0].retry_in_ms == 300_000


def test_exhausted_retries_fail_the_step_and_compensate_what_succeeded() -> None:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    saga.ok(R)
    saga.outcome(P, OutcomeKind.TRANSIENT)
    saga.fire_due()
    plan = saga.outcome(P, OutcomeKind.TRANSIENT, error_class="http_502")
    assert names(plan.events) == [
        "StepAttemptFailed",
        "StepFailed",
        "CompensationStarted",
        "CompensationStepStarted",
    ]
    assert isinstance(plan.events[1], StepFailed)
    assert plan.events[1].reason == "gave up after 2 attempt(s): http_502"
    assert isinstance(plan.events[3], CompensationStepStarted)
    assert plan.events[3].step == R  # the dependent first; the payment never took effect
    assert names(saga.undo(R).events) == ["CompensationStepSucceeded", "CompensationStepStarted"]
    assert names(saga.undo(V).events) == ["CompensationStepSucceeded", "SagaCompensated"]
    assert saga.state.status is SagaStatus.COMPENSATED
    assert saga.state.timers == {}


def test_business_rejection_compensates_without_retrying() -> None:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    plan = saga.outcome(R, OutcomeKind.REJECTED, error_class="http_422")
    assert names(plan.events) == [
        "StepAttemptFailed",
        "StepFailed",
        "CompensationStarted",
        "CompensationStepStarted",
    ]
    assert isinstance(plan.events[2], CompensationStarted)
    assert plan.events[2].reason == "step 'reserve-inventory' failed: rejected: http_422"
    compensation = plan.calls[0]
    assert compensation.step == V
    assert compensation.action == "cancel-validation"
    assert compensation.action_idempotency_key == idempotency_key("t1", "saga-1", V, Phase.ACTION, 0)


def test_attempt_deadline_means_unknown_outcome_then_retry() -> None:
    saga = Saga(seed())
    saga.run()
    plan = saga.fire_due()
    assert names(plan.events) == ["TimerFired", "StepAttemptFailed"]
    failed = plan.events[1]
    assert isinstance(failed, StepAttemptFailed)
    assert failed.outcome_unknown
    assert failed.error_class == "deadline_passed"
    assert saga.state.step(V).possibly_effective


def test_a_step_whose_outcome_stays_unknown_is_compensated_itself() -> None:
    saga = Saga(definition(step("a", retries=0)))
    saga.run()
    plan = saga.fire_due()
    assert names(plan.events) == [
        "TimerFired",
        "StepAttemptFailed",
        "StepFailed",
        "CompensationStarted",
        "CompensationStepStarted",
    ]
    assert plan.calls[0].step == "a"


def test_late_success_while_waiting_to_retry_completes_the_step() -> None:
    saga = Saga(seed())
    saga.run()
    saga.fire_due()  # attempt 1 timed out; attempt 2 is scheduled
    plan = saga.ok(V, attempt=1)
    assert names(plan.events) == ["StepSucceeded", "StepStarted"]
    assert isinstance(plan.events[0], StepSucceeded)
    assert plan.events[0].late
    assert not any(t.kind is TimerKind.RETRY for t in saga.state.timers.values())


def test_late_failure_is_recorded_and_changes_nothing() -> None:
    saga = Saga(seed())
    saga.run()
    saga.fire_due()
    before = saga.state.step(V).action.status
    plan = saga.outcome(V, OutcomeKind.REJECTED, attempt=1)
    assert names(plan.events) == ["StepAttemptFailed"]
    assert isinstance(plan.events[0], StepAttemptFailed)
    assert plan.events[0].late
    assert saga.state.step(V).action.status is before


def test_unknown_outcome_is_compensated_and_a_late_success_is_still_recorded() -> None:
    saga = Saga(definition(step("a", depends_on=[], timeout=60_000), step("b", depends_on=[], retries=2)))
    saga.run()
    plan = saga.fire_due()  # b's first attempt times out: unknown, retry scheduled
    assert names(plan.events) == ["TimerFired", "StepAttemptFailed"]
    plan = saga.outcome("a", OutcomeKind.REJECTED)
    # b's retry is cancelled, but its first attempt may have taken effect: compensate it.
    assert names(plan.events)[-2:] == ["CompensationStarted", "CompensationStepStarted"]
    assert [c.step for c in plan.calls] == ["b"]
    plan = saga.ok("b", attempt=1)
    assert names(plan.events) == ["StepSucceeded"]
    assert isinstance(plan.events[0], StepSucceeded)
    assert plan.events[0].late
    assert names(saga.undo("b").events) == ["CompensationStepSucceeded", "SagaCompensated"]


def test_in_flight_dependent_is_awaited_before_compensating_its_dependency() -> None:
    saga = Saga(definition(step("a"), step("b", depends_on=["a"]), step("c", depends_on=["a"])))
    saga.run()
    saga.ok("a")  # b and c in flight
    plan = saga.outcome("b", OutcomeKind.REJECTED)
    assert names(plan.events) == ["StepAttemptFailed", "StepFailed", "CompensationStarted"]
    assert plan.calls == []
    plan = saga.ok("c")  # c's success arrives during compensation: c first, then a
    assert [c.step for c in plan.calls] == ["c"]
    plan = saga.undo("c")
    assert [c.step for c in plan.calls] == ["a"]


def test_transient_failure_during_compensation_is_not_retried() -> None:
    saga = Saga(definition(step("a", depends_on=[]), step("b", retries=5, depends_on=[])))
    saga.run()
    saga.outcome("a", OutcomeKind.REJECTED)
    plan = saga.outcome("b", OutcomeKind.TRANSIENT)
    assert names(plan.events) == ["StepAttemptFailed", "StepFailed", "SagaCompensated"]


def test_independent_branches_compensate_concurrently_then_the_root() -> None:
    saga = Saga(
        definition(
            step("a"),
            step("b", depends_on=["a"]),
            step("c", depends_on=["a"]),
            step("d", depends_on=["b", "c"]),
        )
    )
    saga.run()
    saga.ok("a")
    saga.ok("b")
    saga.ok("c")
    plan = saga.outcome("d", OutcomeKind.REJECTED)
    assert sorted(c.step for c in plan.calls) == ["b", "c"]
    assert saga.undo("b").calls == []
    assert [c.step for c in saga.undo("c").calls] == ["a"]


def test_contract_error_suspends_and_compensates_nothing() -> None:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    plan = saga.outcome(R, OutcomeKind.MISCONFIGURED, error_class="http_401")
    assert names(plan.events) == ["StepAttemptFailed", "SagaSuspended"]
    assert saga.state.status is SagaStatus.SUSPENDED
    assert saga.state.step(R).action.status is CallStatus.BLOCKED
    assert not saga.state.step(R).possibly_effective
    assert saga.state.timers == {}
    assert react(saga.state, saga.now + timedelta(days=1)) == []


def test_our_own_exception_suspends_and_marks_the_attempt_unknown() -> None:
    saga = Saga(seed())
    saga.run()
    plan = saga.outcome(V, OutcomeKind.CRASHED, error_class="KeyError")
    assert names(plan.events) == ["StepAttemptFailed", "SagaSuspended"]
    assert saga.state.step(V).possibly_effective


def test_suspend_message_for_a_bug_outside_a_call() -> None:
    saga = Saga(seed())
    saga.run()
    plan = saga.run(Suspend("actor crashed", "RuntimeError"))
    assert names(plan.events) == ["SagaSuspended"]
    assert saga.state.status is SagaStatus.SUSPENDED


def test_a_repeated_outcome_appends_nothing() -> None:
    saga = Saga(seed())
    saga.run()
    saga.outcome(V, OutcomeKind.TRANSIENT)
    assert decide(saga.state, StepOutcome(V, 1, Phase.ACTION, OutcomeKind.TRANSIENT), saga.now) == []


def test_outcome_for_an_attempt_never_started_is_a_bug() -> None:
    saga = Saga(seed())
    saga.run()
    with pytest.raises(InvalidMessage):
        decide(saga.state, StepOutcome(V, 2, Phase.ACTION, OutcomeKind.SUCCEEDED), saga.now)
    with pytest.raises(InvalidMessage):
        decide(saga.state, StepOutcome("nope", 1, Phase.ACTION, OutcomeKind.SUCCEEDED), saga.now)


def test_an_intent_that_is_not_due_is_refused() -> None:
    saga = Saga(seed())
    with pytest.raises(InvalidMessage):
        decide(saga.state, CompleteSaga(), saga.now)


# --- compensation outcomes --------------------------------------------------------------------------------


def _compensating() -> Saga:
    saga = Saga(definition(step("a", compensation_retries=1), step("b")))
    saga.run()
    saga.ok("a")
    saga.outcome("b", OutcomeKind.REJECTED)
    assert saga.state.step("a").compensation.status is CallStatus.RUNNING
    return saga


def test_compensation_cannot_compensate_dead_letters() -> None:
    saga = _compensating()
    plan = saga.outcome("a", OutcomeKind.REJECTED, phase=Phase.COMPENSATION, error_class="http_422")
    assert names(plan.events) == [
        "CompensationStepAttemptFailed",
        "CompensationStepFailed",
        "SagaDeadLettered",
    ]
    assert saga.state.status is SagaStatus.DEAD_LETTERED
    assert saga.state.paused_from is SagaStatus.COMPENSATING


def test_compensation_retries_then_gives_up_into_dead_letter() -> None:
    saga = _compensating()
    assert names(saga.outcome("a", OutcomeKind.TRANSIENT, phase=Phase.COMPENSATION).events) == [
        "CompensationStepAttemptFailed"
    ]
    assert names(saga.fire_due().events) == ["TimerFired", "CompensationStepStarted"]
    plan = saga.fire_due()  # the second attempt's deadline passes: unknown, budget spent
    assert names(plan.events) == [
        "TimerFired",
        "CompensationStepAttemptFailed",
        "CompensationStepFailed",
        "SagaDeadLettered",
    ]


def test_compensation_contract_error_suspends() -> None:
    saga = _compensating()
    plan = saga.outcome("a", OutcomeKind.MISCONFIGURED, phase=Phase.COMPENSATION)
    assert names(plan.events) == ["CompensationStepAttemptFailed", "SagaSuspended"]
    assert saga.state.step("a").compensation.status is CallStatus.BLOCKED


# --- saga deadline and pivot -----------------------------------------------------------------------------


def test_saga_deadline_compensates_before_the_pivot() -> None:
    saga = Saga(definition(step("a"), step("b"), timeout=1_000))
    saga.run()
    saga.ok("a")
    saga.tick(1_000)
    plan = saga.run()
    assert names(plan.events) == ["TimerFired", "CompensationStarted"]
    assert saga.state.status is SagaStatus.COMPENSATING
    # b is still in flight: a is compensated only once b's outcome (or deadline) is known.
    assert [c.step for c in saga.ok("b").calls] == ["b"]
    assert [c.step for c in saga.undo("b").calls] == ["a"]


def test_saga_deadline_after_the_pivot_is_only_an_alert() -> None:
    d = pivot_saga()
    saga = Saga(d.__class__(d.name, d.version, d.steps, 1_000, d.retry))
    saga.run()
    saga.ok("reserve")
    saga.ok("charge")
    saga.tick(2_000)
    plan = saga.run()
    assert "CompensationStarted" not in names(plan.events)
    assert saga.state.deadline_passed
    assert saga.state.status is SagaStatus.RUNNING


def test_retriable_steps_after_the_pivot_retry_without_limit() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    saga.ok("charge")
    for attempt in range(1, 8):
        plan = saga.outcome("ship", OutcomeKind.TRANSIENT)
        assert isinstance(plan.events[0], StepAttemptFailed)
        assert plan.events[0].retry_in_ms is not None
        assert plan.events[0].retry_in_ms <= 60_000
        saga.fire_due()
        assert saga.state.step("ship").action.attempt == attempt + 1
    assert names(saga.ok("ship").events) == ["StepSucceeded", "SagaCompleted"]


def test_business_rejection_after_the_pivot_dead_letters() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    saga.ok("charge")
    plan = saga.outcome("ship", OutcomeKind.REJECTED)
    assert names(plan.events) == ["StepAttemptFailed", "StepFailed", "SagaDeadLettered"]


def test_pivot_rejection_compensates_its_ancestors() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    plan = saga.outcome("charge", OutcomeKind.REJECTED)
    assert "CompensationStarted" in names(plan.events)
    assert [c.step for c in plan.calls] == ["reserve"]


def test_pivot_with_unknown_outcome_dead_letters() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    saga.fire_due()  # charge attempt 1 deadline: unknown, retry scheduled
    saga.fire_due()  # attempt 2
    plan = saga.fire_due()  # attempt 2 deadline: budget spent
    assert names(plan.events) == ["TimerFired", "StepAttemptFailed", "StepFailed", "SagaDeadLettered"]
    assert "CompensationStarted" not in names([e for e, _ in saga.history])


def test_abort_while_the_pivot_is_in_flight_waits_for_its_outcome() -> None:
    from orchestrator.domain import Intervene, ManualCommand

    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    plan = saga.run(Intervene(ManualCommand.ABORT, "ops", "customer asked", "k1"))
    assert names(plan.events) == ["SagaAbortRequested"]
    plan = saga.ok("charge")
    assert names(plan.events) == ["StepSucceeded", "StepStarted"]  # the pivot won; the abort is moot


# --- timers and the fold --------------------------------------------------------------------------------


def test_firing_a_timer_that_is_not_pending_is_a_no_op() -> None:
    saga = Saga(seed())
    assert decide(saga.state, FireTimer("saga-1/kick//0"), saga.now + timedelta(seconds=5)) != []
    assert decide(saga.state, FireTimer("saga-1/retry/x/1"), saga.now) == []


def test_a_kick_with_nothing_to_do_records_the_firing_without_a_new_kick() -> None:
    saga = Saga(definition(step("a"), timeout=100_000))
    saga.tick(5_000)
    # The actor never ran: the kick fires, and the actor now starts the step.
    plan = saga.run()
    assert names(plan.events) == ["TimerFired", "StepStarted"]
    fired = plan.events[0]
    assert isinstance(fired, TimerFired)
    assert fired.kick_ms is None  # the saga deadline is still pending


def test_a_firing_that_leaves_no_timer_carries_a_kick() -> None:
    saga = Saga(seed())
    saga.run()
    saga.outcome(V, OutcomeKind.TRANSIENT)
    retry = next(iter(saga.state.timers))
    events = decide(saga.state, FireTimer(retry), saga.now + timedelta(seconds=2))
    assert isinstance(events[0], TimerFired)
    assert events[0].kick_ms == 5_000


def test_timer_changes_tell_the_index_what_to_add_and_remove() -> None:
    saga = Saga(seed())
    before = saga.state
    saga.run()
    armed, disarmed = timer_changes(before, saga.state)
    assert [t.kind for t in armed] == [TimerKind.ATTEMPT_DEADLINE]
    assert disarmed == ["saga-1/kick//0"]


def test_fold_replays_the_history_to_the_same_state() -> None:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    assert fold(saga.history) == saga.state


def test_folding_an_unknown_event_or_a_bad_start_raises_unreadable_history() -> None:
    saga = Saga(seed())
    with pytest.raises(UnreadableHistory):
        evolve(saga.state, UnknownEvent("StepDeferred", 1, {}), saga.now)
    first = saga.history[0][0]
    assert isinstance(first, SagaStarted)
    with pytest.raises(UnreadableHistory):
        fold([])
    with pytest.raises(UnreadableHistory):
        fold([(StepFailed("a", "x", False), T0)])
    tampered = SagaStarted(**{**first.__dict__, "definition_hash": "0" * 64})
    with pytest.raises(UnreadableHistory, match="pinned hash"):
        fold([(tampered, T0)])
