"""Manual interventions: the status x command table, and the events an allowed command records."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.domain.commands import Intervene
from orchestrator.domain.errors import DomainConflict
from orchestrator.domain.events import (
    Event,
    ManualInterventionApplied,
    SagaAbortRequested,
    SagaCompensated,
    SagaCompleted,
)
from orchestrator.domain.state import SagaState, is_terminal, phase, pivot_succeeded
from orchestrator.domain.timing import Tuning
from orchestrator.domain.vocabulary import CallStatus, ManualCommand, SagaStatus

_MIA = "ManualInterventionApplied"
_ABORT = "SagaAbortRequested"
_PAUSED_ROW: Mapping[ManualCommand, tuple[str, ...]] = {
    ManualCommand.RETRY: (_MIA,),
    ManualCommand.SKIP: (_MIA,),
    ManualCommand.RESOLVE: (_MIA,),
    ManualCommand.RESUME: (_MIA,),
    ManualCommand.ABORT: (_ABORT,),
}

# status x command -> the first event an allowed command appends; () means always 409. Where an entry is
# non-empty, a 409 can still follow from the conditions in INTERVENTION_CONDITIONS.
INTERVENTION_TABLE: Mapping[tuple[SagaStatus, ManualCommand], tuple[str, ...]] = {
    **{(SagaStatus.RUNNING, c): ((_ABORT,) if c is ManualCommand.ABORT else ()) for c in ManualCommand},
    **{(SagaStatus.COMPENSATING, c): () for c in ManualCommand},
    **{(SagaStatus.COMPLETED, c): () for c in ManualCommand},
    **{(SagaStatus.COMPENSATED, c): () for c in ManualCommand},
    **{(SagaStatus.SUSPENDED, c): e for c, e in _PAUSED_ROW.items()},
    **{(SagaStatus.DEAD_LETTERED, c): e for c, e in _PAUSED_ROW.items()},
}

INTERVENTION_CONDITIONS: Mapping[ManualCommand, str] = {
    ManualCommand.RETRY: (
        "409 when no step (or not the named step) is failed or blocked; the targets get a new idempotency"
        " key (generation) and a fresh retry budget; the saga returns to the phase it stopped in; a step"
        " that may have taken effect under its current key is retried only when named (else 409)"
    ),
    ManualCommand.SKIP: (
        "409 when nothing is failed or blocked, or the target is the pivot; forward: the step counts as"
        " done without output; compensating: its compensation counts as done"
    ),
    ManualCommand.RESOLVE: (
        "never 409 when paused; the saga ends in its phase's terminal status (running -> completed,"
        " compensating -> compensated): SagaCompleted/SagaCompensated follows"
    ),
    ManualCommand.RESUME: (
        "the blocked steps (if any) keep their key and get a fresh budget; the saga continues its phase"
        " (retry, skip and resume leave it paused while a step they did not name is still blocked)"
    ),
    ManualCommand.ABORT: (
        "409 once the pivot has succeeded, while compensating, or when an abort is already pending on a"
        " running saga; from a pause with the pivot's outcome unknown it waives the pivot"
    ),
}


def decide_intervention(state: SagaState, command: Intervene, tuning: Tuning) -> list[Event]:
    """Events for an allowed command, ``[]`` for a repeated idempotency key, else ``DomainConflict``."""
    if command.idempotency_key in state.applied_keys:
        return []
    cmd = command.command
    if is_terminal(state):
        raise DomainConflict(f"the saga is {state.status}: {cmd} is not possible")
    if cmd is ManualCommand.ABORT:
        return [_abort(state, command, tuning)]
    if state.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        raise DomainConflict(
            f"{cmd} applies only to a dead-lettered or suspended saga; this one is {state.status}"
        )
    forward = phase(state) is SagaStatus.RUNNING
    if cmd is ManualCommand.RESOLVE:
        return [
            _applied(command, (), None),
            SagaCompleted() if forward else SagaCompensated(),
        ]
    targets = _targets(state, command, forward)
    if cmd in (ManualCommand.RETRY, ManualCommand.SKIP) and not targets:
        held = _held_back(state) if cmd is ManualCommand.RETRY and forward else []
        if held:
            raise DomainConflict(
                f"step(s) {', '.join(map(repr, held))} may have taken effect under the current key: resume"
                " asks again under that key; a retry names the step to run it under a new key"
            )
        raise DomainConflict(f"nothing to {cmd}: no step is failed or blocked")
    pivot = state.definition.pivot
    if cmd is ManualCommand.SKIP and forward and pivot is not None and pivot.name in targets:
        raise DomainConflict(
            f"the pivot {pivot.name!r} cannot be skipped: retry it, abort, or resolve the saga"
        )
    return [_applied(command, targets, tuning.kick_ms)]


def _applied(command: Intervene, targets: tuple[str, ...], kick_ms: int | None) -> ManualInterventionApplied:
    return ManualInterventionApplied(
        command=command.command,
        actor=command.actor,
        reason=command.reason,
        idempotency_key=command.idempotency_key,
        requested_step=command.step,
        steps=targets,
        kick_ms=kick_ms,
    )


def _abort(state: SagaState, command: Intervene, tuning: Tuning) -> SagaAbortRequested:
    pivot = state.definition.pivot
    if pivot_succeeded(state) and pivot is not None:
        raise DomainConflict(f"the pivot {pivot.name!r} has succeeded: the saga can no longer be aborted")
    if phase(state) is SagaStatus.COMPENSATING:
        raise DomainConflict("the saga is already compensating")
    paused = state.status is not SagaStatus.RUNNING
    if not paused and state.abort_requested:
        raise DomainConflict("an abort is already pending")
    # A person aborting from a pause has seen why it stopped, including a pivot with an unknown outcome.
    waive = paused and pivot is not None and state.steps[pivot.name].possibly_effective
    return SagaAbortRequested(
        actor=command.actor,
        reason=command.reason,
        idempotency_key=command.idempotency_key,
        waive_pivot=waive,
        kick_ms=tuning.kick_ms,
    )


def _current_key_may_be_effective(state: SagaState, name: str) -> bool:
    st = state.steps[name]
    return st.action.idempotency_key is not None and st.action.idempotency_key in st.effective_keys


def _held_back(state: SagaState) -> list[str]:
    stuck = (CallStatus.BLOCKED, CallStatus.FAILED)
    return [
        s.name
        for s in state.definition.steps
        if state.steps[s.name].action.status in stuck and _current_key_may_be_effective(state, s.name)
    ]


def _targets(state: SagaState, command: Intervene, forward: bool) -> tuple[str, ...]:
    stuck = (CallStatus.BLOCKED, CallStatus.FAILED)
    if forward:
        candidates = [s.name for s in state.definition.steps if state.steps[s.name].action.status in stuck]
        # A failed compensatable step leads to compensation once the saga continues, so only an explicit
        # request retries it; blocked steps, the pivot and retriable steps are what stopped the saga. A step
        # whose current key may have taken effect is never a default target: a retry runs it under a new
        # key, which can do it twice (for the pivot: charge twice), so that takes the person naming it.
        default = [
            s.name
            for s in state.definition.steps
            if s.name in candidates
            and (state.steps[s.name].action.status is CallStatus.BLOCKED or s.kind != "compensatable")
            and not (command.command is ManualCommand.RETRY and _current_key_may_be_effective(state, s.name))
        ]
    else:
        candidates = [
            s.name for s in state.definition.steps if state.steps[s.name].compensation.status in stuck
        ]
        default = candidates
    if command.step is None:
        return tuple(default)
    if command.step not in candidates:
        raise DomainConflict(f"step {command.step!r} is not failed or blocked")
    return (command.step,)
