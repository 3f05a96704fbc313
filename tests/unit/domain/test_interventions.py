"""Manual interventions: the status x command table, each allowed effect, and each conditional 409."""

from __future__ import annotations

import pytest

from orchestrator.domain import (
    INTERVENTION_TABLE,
    CallStatus,
    DomainConflict,
    Intervene,
    ManualCommand,
    OutcomeKind,
    Phase,
    SagaStatus,
    StartStep,
    Suspend,
    TimerKind,
    decide,
    idempotency_key,
)
from orchestrator.domain.events import ManualInterventionApplied, SagaAbortRequested
from tests.unit.domain.support import P, R, Saga, V, definition, names, pivot_saga, seed, step


def cmd(command: ManualCommand, key: str = "k1", step: str | None = None) -> Intervene:
    return Intervene(command, "ops@example", "ticket 42", key, step)


def running() -> Saga:
    saga = Saga(seed())
    saga.run()
    return saga


def compensating() -> Saga:
    saga = Saga(definition(step("a", depends_on=[]), step("b", depends_on=[], timeout=60_000)))
    saga.run()
    saga.ok("a")
    saga.outcome("b", OutcomeKind.REJECTED)
    assert saga.state.status is SagaStatus.COMPENSATING
    return saga


def suspended() -> Saga:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    saga.outcome(R, OutcomeKind.MISCONFIGURED, error_class="http_401")
    assert saga.state.status is SagaStatus.SUSPENDED
    return saga


def dead_lettered_compensating() -> Saga:
    saga = compensating()
    saga.outcome("a", OutcomeKind.REJECTED, phase=Phase.COMPENSATION)
    assert saga.state.status is SagaStatus.DEAD_LETTERED
    return saga


def completed() -> Saga:
    saga = Saga(definition(step("a")))
    saga.run()
    saga.ok("a")
    return saga


def compensated() -> Saga:
    saga = Saga(definition(step("a")))
    saga.run()
    saga.outcome("a", OutcomeKind.REJECTED)
    assert saga.state.status is SagaStatus.COMPENSATED
    return saga


def test_table_covers_every_status_and_command() -> None:
    assert set(INTERVENTION_TABLE) == {(s, c) for s in SagaStatus for c in ManualCommand}


@pytest.mark.parametrize(
    "make", [running, compensating, completed, compensated, suspended, dead_lettered_compensating]
)
@pytest.mark.parametrize("command", list(ManualCommand))
def test_status_by_command(make: object, command: ManualCommand) -> None:
    assert callable(make)
    saga: Saga = make()
    allowed = INTERVENTION_TABLE[(saga.state.status, command)]
    try:
        events = decide(saga.state, cmd(command), saga.now)
    except DomainConflict:
        # A table entry may still be refused by a documented condition; these are those cases.
        conditional = {
            ("dead_lettered", "abort"),  # already compensating
        }
        assert not allowed or (saga.state.status.value, command.value) in conditional
        return
    assert allowed
    assert type(events[0]).__name__ == allowed[0]


def test_abort_running_then_compensates_through_the_actor() -> None:
    saga = running()
    saga.ok(V)
    # The API appends only the request; the actor decides what follows.
    events = decide(saga.state, cmd(ManualCommand.ABORT), saga.now)
    assert names(events) == ["SagaAbortRequested"]
    abort = events[0]
    assert isinstance(abort, SagaAbortRequested)
    assert (abort.actor, abort.reason, abort.idempotency_key) == ("ops@example", "ticket 42", "k1")
    assert abort.kick_ms == 5000
    saga.record(events)
    plan = saga.run()
    # R is in flight: nothing is compensated before its outcome is known.
    assert names(plan.events) == ["CompensationStarted"]
    assert plan.calls == []
    plan = saga.ok(R)
    assert names(plan.events) == ["StepSucceeded", "CompensationStepStarted"]
    with pytest.raises(DomainConflict, match="already compensating"):
        decide(saga.state, cmd(ManualCommand.ABORT, "k2"), saga.now)


def test_abort_twice_is_a_conflict_but_a_repeated_key_is_a_no_op() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")  # the pivot is in flight, so the abort stays pending
    saga.run(cmd(ManualCommand.ABORT))
    assert decide(saga.state, cmd(ManualCommand.ABORT), saga.now) == []
    with pytest.raises(DomainConflict, match="already pending"):
        decide(saga.state, cmd(ManualCommand.ABORT, "k2"), saga.now)


def test_abort_after_a_succeeded_pivot_is_a_conflict() -> None:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    saga.ok("charge")
    with pytest.raises(DomainConflict, match="pivot 'charge' has succeeded"):
        decide(saga.state, cmd(ManualCommand.ABORT), saga.now)


def test_resume_keeps_the_key_and_retry_changes_it() -> None:
    for command, generation in ((ManualCommand.RESUME, 0), (ManualCommand.RETRY, 1)):
        saga = suspended()
        plan = saga.run(cmd(command))
        assert names(plan.events) == ["ManualInterventionApplied", "StepStarted"]
        applied = plan.events[0]
        assert isinstance(applied, ManualInterventionApplied)
        assert applied.steps == (R,)
        assert saga.state.status is SagaStatus.RUNNING
        (call,) = plan.calls
        assert isinstance(call, StartStep)
        assert call.attempt == 2
        assert call.idempotency_key == idempotency_key("t1", "saga-1", R, Phase.ACTION, generation)


def test_skip_moves_past_the_blocked_step() -> None:
    saga = suspended()
    plan = saga.run(cmd(ManualCommand.SKIP))
    assert [c.step for c in plan.calls] == [P]
    assert saga.state.step(R).action.status is CallStatus.SKIPPED


def test_resolve_ends_the_saga_in_its_phase_terminal_status() -> None:
    saga = suspended()
    assert names(saga.run(cmd(ManualCommand.RESOLVE)).events) == [
        "ManualInterventionApplied",
        "SagaCompleted",
    ]
    saga = dead_lettered_compensating()
    assert names(saga.run(cmd(ManualCommand.RESOLVE)).events) == [
        "ManualInterventionApplied",
        "SagaCompensated",
    ]


def test_retry_and_skip_of_a_failed_compensation() -> None:
    saga = dead_lettered_compensating()
    plan = saga.run(cmd(ManualCommand.RETRY))
    assert names(plan.events) == ["ManualInterventionApplied", "CompensationStepStarted"]
    assert plan.calls[0].idempotency_key == idempotency_key("t1", "saga-1", "a", Phase.COMPENSATION, 1)
    saga = dead_lettered_compensating()
    assert names(saga.run(cmd(ManualCommand.SKIP)).events) == ["ManualInterventionApplied", "SagaCompensated"]


def test_conditional_conflicts() -> None:
    saga = suspended()
    with pytest.raises(DomainConflict, match="step 'validate-order' is not failed or blocked"):
        decide(saga.state, cmd(ManualCommand.RETRY, step=V), saga.now)
    saga = Saga(definition(step("a")))
    saga.run()
    saga.run(Suspend("bug", "RuntimeError"))
    with pytest.raises(DomainConflict, match="nothing to retry"):
        decide(saga.state, cmd(ManualCommand.RETRY), saga.now)
    assert names(saga.run(cmd(ManualCommand.RESUME)).events) == ["ManualInterventionApplied"]
    assert saga.state.status is SagaStatus.RUNNING


def test_a_manual_command_on_a_paused_saga_leaves_a_kick() -> None:
    saga = suspended()
    events = decide(saga.state, cmd(ManualCommand.RESUME), saga.now)
    saga.record(events)
    assert [t.kind for t in saga.state.timers.values()] == [TimerKind.KICK]


def _pivot_unknown() -> Saga:
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    saga.fire_due()
    saga.fire_due()
    saga.fire_due()
    assert saga.state.status is SagaStatus.DEAD_LETTERED
    return saga


def test_pivot_cannot_be_skipped() -> None:
    saga = _pivot_unknown()
    with pytest.raises(DomainConflict, match="cannot be skipped"):
        decide(saga.state, cmd(ManualCommand.SKIP), saga.now)


def test_aborting_a_dead_lettered_unknown_pivot_waives_it_and_compensates() -> None:
    saga = _pivot_unknown()
    plan = saga.run(cmd(ManualCommand.ABORT))
    abort = plan.events[0]
    assert isinstance(abort, SagaAbortRequested)
    assert abort.waive_pivot
    assert names(plan.events)[1:] == ["CompensationStarted", "CompensationStepStarted"]
    assert [c.step for c in plan.calls] == ["reserve"]


def test_the_saga_stays_paused_while_a_step_not_named_is_still_blocked() -> None:
    saga = Saga(definition(step("a", depends_on=[]), step("b", depends_on=[])))
    saga.run()
    saga.outcome("a", OutcomeKind.MISCONFIGURED)
    saga.outcome("b", OutcomeKind.MISCONFIGURED)
    plan = saga.run(cmd(ManualCommand.RETRY, step="a"))
    assert names(plan.events) == ["ManualInterventionApplied"]
    assert saga.state.status is SagaStatus.SUSPENDED
    plan = saga.run(cmd(ManualCommand.RESUME, "k2"))
    assert saga.state.status is SagaStatus.RUNNING
    assert sorted(c.step for c in plan.calls) == ["a", "b"]
