"""``react(state, now)``: what is due for a saga, as commands; timer firings first, then intents."""

from __future__ import annotations

from datetime import datetime

from orchestrator.domain.commands import (
    BeginCompensation,
    Command,
    CompleteSaga,
    DeadLetter,
    FinishCompensation,
    FireTimer,
    StartCompensationStep,
    StartStep,
)
from orchestrator.domain.definitions import StepSpec
from orchestrator.domain.errors import InvalidMessage
from orchestrator.domain.requests import (
    action_body,
    compensation_body,
    idempotency_key,
    legacy_compensation_body,
    sha256_hex,
)
from orchestrator.domain.state import (
    CallState,
    SagaState,
    action_in_flight,
    is_terminal,
    needs_compensation,
    pivot_succeeded,
)
from orchestrator.domain.timing import Tuning
from orchestrator.domain.vocabulary import CallStatus, Phase, SagaStatus

DEFAULT_TUNING = Tuning()
_DONE = (CallStatus.SUCCEEDED, CallStatus.SKIPPED)


def react(state: SagaState, now: datetime, tuning: Tuning = DEFAULT_TUNING) -> list[Command]:
    """Due timers (so their facts are recorded before anything is decided on them), else the next intents.

    A terminal saga issues nothing; a saga waiting for a person only has its timers fired.
    """
    if is_terminal(state):
        return []
    due = sorted((t for t in state.timers.values() if t.due_at <= now), key=lambda t: (t.due_at, t.id))
    if due:
        return [FireTimer(t.id) for t in due]
    if state.status is SagaStatus.RUNNING:
        return _forward(state, now, tuning)
    if state.status is SagaStatus.COMPENSATING:
        return _backward(state, now, tuning)
    return []


def rollback_reason(state: SagaState) -> str | None:
    """Why the saga should roll back, or None. Never once the pivot has succeeded (design.md §4 "Pivot")."""
    if pivot_succeeded(state):
        return None
    for spec in state.definition.steps:
        call = state.steps[spec.name].action
        if spec.kind != "retriable" and call.status is CallStatus.FAILED:
            return f"step {spec.name!r} failed: {call.last_error}"
    if state.abort_requested:
        return "abort requested"
    if state.deadline_passed:
        return "saga deadline passed"
    return None


def _retry_due(call: CallState, now: datetime) -> bool:
    return call.status is CallStatus.RETRY_WAIT and (
        call.retry_fired or (call.retry_at is not None and call.retry_at <= now)
    )


def _forward(state: SagaState, now: datetime, tuning: Tuning) -> list[Command]:
    definition = state.definition
    for spec in definition.steps:
        call = state.steps[spec.name].action
        if spec.kind == "retriable" and call.status is CallStatus.FAILED:
            return [DeadLetter(f"step {spec.name!r} failed after the pivot: {call.last_error}", spec.name)]
    reason = rollback_reason(state)
    if reason is not None:
        pivot = definition.pivot
        if pivot is not None:
            pivot_state = state.steps[pivot.name]
            if pivot_state.action.status is CallStatus.RUNNING:
                # Its outcome decides between rolling back and going on.
                return []
            if pivot_state.possibly_effective and not state.pivot_waived:
                action = pivot_state.action
                if action.status in (CallStatus.RETRY_WAIT, CallStatus.IDLE):
                    # Its outcome is unknown and it can still be asked (waiting to retry, or a person
                    # resumed it): learn whether it took effect before deciding between rolling back
                    # and going on.
                    due = action.status is CallStatus.IDLE or _retry_due(action, now)
                    return [start_step_command(state, pivot, tuning)] if due else []
                return [
                    DeadLetter(f"{reason}, but the pivot {pivot.name!r} may have taken effect", pivot.name)
                ]
        return [BeginCompensation(reason)]
    starts: list[Command] = []
    for spec in definition.steps:
        call = state.steps[spec.name].action
        deps_done = all(state.steps[d].action.status in _DONE for d in spec.depends_on)
        if (call.status is CallStatus.IDLE and deps_done) or _retry_due(call, now):
            starts.append(start_step_command(state, spec, tuning))
    if starts:
        return starts
    if all(s.action.status in _DONE for s in state.steps.values()):
        return [CompleteSaga()]
    return []


def _dependents_settled(state: SagaState, name: str) -> bool:
    for dependent in state.definition.descendants(name):
        st = state.steps[dependent]
        if action_in_flight(state, dependent):
            return False
        if needs_compensation(state, dependent) and st.compensation.status not in _DONE:
            return False
    return True


def _backward(state: SagaState, now: datetime, tuning: Tuning) -> list[Command]:
    definition = state.definition
    for spec in definition.steps:
        comp = state.steps[spec.name].compensation
        if comp.status is CallStatus.FAILED:
            return [DeadLetter(f"compensation of {spec.name!r} failed: {comp.last_error}", spec.name)]
    starts: list[Command] = []
    for spec in definition.steps:
        st = state.steps[spec.name]
        if not needs_compensation(state, spec.name) or action_in_flight(state, spec.name):
            continue
        comp = st.compensation
        if (comp.status is CallStatus.IDLE and _dependents_settled(state, spec.name)) or _retry_due(
            comp, now
        ):
            starts.append(start_compensation_command(state, spec, tuning))
    if starts:
        return starts
    settled = all(
        not action_in_flight(state, name)
        and (not needs_compensation(state, name) or st.compensation.status in _DONE)
        for name, st in state.steps.items()
    )
    return [FinishCompensation()] if settled else []


def start_step_command(state: SagaState, spec: StepSpec, tuning: Tuning) -> StartStep:
    call = state.steps[spec.name].action
    # No input mapping yet: a step's input is the start context, identical for every attempt.
    body = action_body(state.saga_id, spec.name, state.context)
    return StartStep(
        step=spec.name,
        attempt=call.attempt + 1,
        generation=call.generation,
        idempotency_key=idempotency_key(
            state.tenant, state.saga_id, spec.name, Phase.ACTION, call.generation
        ),
        service=spec.service,
        action=spec.action,
        body=body,
        request_hash=sha256_hex(body),
        timeout_ms=spec.timeout_ms,
        deadline_ms=spec.timeout_ms + tuning.attempt_slack_ms,
    )


def start_compensation_command(state: SagaState, spec: StepSpec, tuning: Tuning) -> StartCompensationStep:
    st = state.steps[spec.name]
    comp = st.compensation
    key = idempotency_key(state.tenant, state.saga_id, spec.name, Phase.COMPENSATION, comp.generation)
    if comp.idempotency_key == key and st.compensation_named is not None:
        # A later attempt of a generation already started sends exactly what its first attempt sent
        # (also when that was written by a release that named only one key).
        action_key, action_keys = st.compensation_named
        if action_keys:
            body = compensation_body(state.saga_id, spec.name, state.context, action_keys)
        else:
            body = legacy_compensation_body(state.saga_id, spec.name, state.context, action_key)
    else:
        # Every generation that may have taken effect is undone, not only the newest (a person's retry
        # starts a new generation while the earlier one's effect may exist).
        action_keys = st.effective_keys or (
            st.action.idempotency_key
            or idempotency_key(state.tenant, state.saga_id, spec.name, Phase.ACTION, st.action.generation),
        )
        action_key = action_keys[-1]
        body = compensation_body(state.saga_id, spec.name, state.context, action_keys)
    if spec.compensation is None:
        raise InvalidMessage(f"step {spec.name!r} has no compensation")
    return StartCompensationStep(
        step=spec.name,
        attempt=comp.attempt + 1,
        generation=comp.generation,
        idempotency_key=key,
        action_idempotency_key=action_key,
        action_idempotency_keys=action_keys,
        service=spec.service,
        action=spec.compensation,
        body=body,
        request_hash=sha256_hex(body),
        timeout_ms=spec.timeout_ms,
        deadline_ms=spec.timeout_ms + tuning.attempt_slack_ms,
    )
