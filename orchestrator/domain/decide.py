"""``decide`` turns one message into events; ``advance`` adds every intent that is then due (one append)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, assert_never

from orchestrator.domain.commands import (
    BeginCompensation,
    CompleteSaga,
    DeadLetter,
    FinishCompensation,
    FireTimer,
    Intervene,
    Message,
    StartCompensationStep,
    StartStep,
    StepOutcome,
    Suspend,
)
from orchestrator.domain.definitions import SagaDefinition, canonical_dict, definition_hash
from orchestrator.domain.errors import DomainConflict, DomainError, InvalidMessage
from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepAttemptFailed,
    CompensationStepFailed,
    CompensationStepStarted,
    CompensationStepSucceeded,
    Event,
    SagaCompensated,
    SagaCompleted,
    SagaDeadLettered,
    SagaStarted,
    SagaSuspended,
    StepAttemptFailed,
    StepFailed,
    StepStarted,
    StepSucceeded,
    TimerFired,
)
from orchestrator.domain.interventions import decide_intervention
from orchestrator.domain.react import DEFAULT_TUNING, react, rollback_reason
from orchestrator.domain.state import (
    DEADLINE_PASSED,
    FREE_WITHHELD_ATTEMPTS,
    CallState,
    SagaState,
    evolve,
    is_terminal,
    is_waiting_for_person,
    phase,
)
from orchestrator.domain.timers import TimerKind
from orchestrator.domain.timing import Tuning, retry_delay_ms
from orchestrator.domain.vocabulary import CallStatus, OutcomeKind, Phase, SagaStatus


def begin(
    *,
    tenant: str,
    saga_id: str,
    client_id: str | None,
    definition: SagaDefinition,
    context: dict[str, Any],
    tuning: Tuning = DEFAULT_TUNING,
) -> SagaStarted:
    """The first event of a saga stream; it carries a kick so a lost delivery cannot strand the saga."""
    return SagaStarted(
        tenant=tenant,
        saga_id=saga_id,
        client_id=client_id,
        definition_name=definition.name,
        definition_version=definition.version,
        definition_hash=definition_hash(definition),
        definition=canonical_dict(definition),
        context=context,
        deadline_ms=definition.timeout_ms,
        kick_ms=tuning.kick_ms,
    )


def apply(state: SagaState, events: Iterable[Event], recorded_at: datetime) -> SagaState:
    """Fold events the decider just produced, as if all were recorded at ``recorded_at``."""
    for event in events:
        state = evolve(state, event, recorded_at)
    return state


@dataclass(frozen=True)
class Plan:
    """One append for the actor, and the calls it must make once (and only if) that append won."""

    events: list[Event]
    calls: list[StartStep | StartCompensationStep]
    #: the state after ``events``, as if all were recorded at the ``now`` the plan was made for
    state: SagaState | None = None


def advance(
    state: SagaState, now: datetime, message: Message | None = None, tuning: Tuning = DEFAULT_TUNING
) -> Plan:
    """The message's events, then every intent (with its timers) now due.

    Appending ``plan.events`` at ``state.revision`` keeps "outcome + next intent" atomic (design.md §0.4).
    """
    events = decide(state, message, now, tuning) if message is not None else []
    calls: list[StartStep | StartCompensationStep] = []
    current = apply(state, events, now)
    # Each round settles at least one step or call, so this bound is never reached by a correct decider.
    for _ in range(8 * len(state.steps) + 16):
        commands = react(current, now, tuning)
        if not commands:
            return Plan(events, calls, current)
        for index, command in enumerate(commands):
            if index == 0 and not isinstance(command, FireTimer):
                # react() just said this is due on exactly this state: no need to ask it again.
                produced = [_intent(command)]
            else:
                produced = decide(current, command, now, tuning)
            current = apply(current, produced, now)
            events.extend(produced)
            if isinstance(command, StartStep | StartCompensationStep) and produced:
                calls.append(command)
    raise DomainError("the decider did not settle; this is a bug")


def decide(state: SagaState, message: Message, now: datetime, tuning: Tuning = DEFAULT_TUNING) -> list[Event]:
    """Events for one message. Raises ``DomainConflict`` (409) for a refused person's command and
    ``InvalidMessage`` for a message that cannot belong to this saga."""
    match message:
        case StepOutcome():
            return _outcome(state, message, tuning)
        case FireTimer():
            return _fire(state, message, now, tuning)
        case Intervene():
            return decide_intervention(state, message, tuning)
        case Suspend():
            if is_terminal(state):
                raise DomainConflict(f"the saga is {state.status}")
            return [SagaSuspended(message.reason, message.error_class, message.step, message.phase)]
        case (
            StartStep()
            | StartCompensationStep()
            | CompleteSaga()
            | BeginCompensation()
            | FinishCompensation()
        ) | DeadLetter():
            if message not in react(state, now, tuning):
                raise InvalidMessage(f"{type(message).__name__} is not due")
            return [_intent(message)]
        case _:
            assert_never(message)


def _intent(
    command: StartStep
    | StartCompensationStep
    | CompleteSaga
    | BeginCompensation
    | FinishCompensation
    | DeadLetter,
) -> Event:
    match command:
        case StartStep():
            return StepStarted(
                command.step,
                command.attempt,
                command.generation,
                command.idempotency_key,
                command.request_hash,
                command.deadline_ms,
            )
        case StartCompensationStep():
            return CompensationStepStarted(
                command.step,
                command.attempt,
                command.generation,
                command.idempotency_key,
                command.action_idempotency_key,
                command.request_hash,
                command.deadline_ms,
                command.action_idempotency_keys,
            )
        case CompleteSaga():
            return SagaCompleted()
        case BeginCompensation():
            return CompensationStarted(command.reason)
        case FinishCompensation():
            return SagaCompensated()
        case DeadLetter():
            return SagaDeadLettered(command.reason, command.step)
        case _:
            assert_never(command)


# --- timers --------------------------------------------------------------------------------------------


def _fire(state: SagaState, message: FireTimer, now: datetime, tuning: Tuning) -> list[Event]:
    timer = state.timers.get(message.timer_id)
    if timer is None:
        # Already fired or disarmed: firing is idempotent (design.md §0.6).
        return []
    fired = TimerFired(timer.id, timer.kind, timer.step, timer.attempt)
    after = evolve(state, fired, now)
    consequences: list[Event] = []
    if timer.kind is TimerKind.ATTEMPT_DEADLINE:
        call = after.steps[timer.step].action
        if call.status is CallStatus.RUNNING and call.attempt == timer.attempt:
            consequences = _action_failure(
                after, timer.step, "the attempt's deadline passed", DEADLINE_PASSED, True, None, tuning
            )
        elif call.attempt == timer.attempt and timer.attempt not in call.recorded:
            # An earlier attempt's late success ended the call while this one was in flight: its outcome
            # is now unknown, a fact that changes nothing but what a rollback undoes (its key, if new).
            consequences = [
                StepAttemptFailed(
                    timer.step,
                    timer.attempt,
                    DEADLINE_PASSED,
                    "the attempt's deadline passed",
                    retryable=True,
                    outcome_unknown=True,
                    retry_in_ms=None,
                    late=True,
                )
            ]
    elif timer.kind is TimerKind.COMPENSATION_DEADLINE:
        comp = after.steps[timer.step].compensation
        if comp.status is CallStatus.RUNNING and comp.attempt == timer.attempt:
            consequences = _compensation_failure(
                after, timer.step, "the attempt's deadline passed", DEADLINE_PASSED, True, None, tuning
            )
    final = apply(after, consequences, now)
    if not is_terminal(final) and not is_waiting_for_person(final) and not final.timers:
        # Whoever appends this firing may not decide the next intent in the same append.
        fired = TimerFired(timer.id, timer.kind, timer.step, timer.attempt, tuning.kick_ms)
    return [fired, *consequences]


# --- outcomes ------------------------------------------------------------------------------------------


def _outcome(state: SagaState, outcome: StepOutcome, tuning: Tuning) -> list[Event]:
    if not state.definition.has_step(outcome.step):
        raise InvalidMessage(f"no step {outcome.step!r} in this saga")
    st = state.steps[outcome.step]
    call = st.action if outcome.phase is Phase.ACTION else st.compensation
    if not 1 <= outcome.attempt <= call.attempt:
        raise InvalidMessage(f"step {outcome.step!r} has no {outcome.phase} attempt {outcome.attempt}")
    if outcome.attempt in call.recorded:
        return []
    late = (
        outcome.attempt in call.timed_out
        or outcome.attempt != call.attempt
        or call.status is not CallStatus.RUNNING
        or is_terminal(state)
    )
    if outcome.phase is Phase.ACTION:
        return _action_outcome(state, outcome, late, tuning)
    return _compensation_outcome(state, outcome, late, tuning)


def _action_outcome(state: SagaState, o: StepOutcome, late: bool, tuning: Tuning) -> list[Event]:
    unknown = o.outcome_unknown or o.kind is OutcomeKind.CRASHED
    match o.kind:
        case OutcomeKind.SUCCEEDED:
            return [StepSucceeded(o.step, o.attempt, o.output, late)]
        case _ if late:
            # A fact about an attempt the saga already moved past: recorded, never acted on.
            retryable = o.kind is OutcomeKind.TRANSIENT
            return [
                StepAttemptFailed(o.step, o.attempt, o.error_class, o.detail, retryable, unknown, None, True)
            ]
        case OutcomeKind.REJECTED:
            possibly_effective = state.steps[o.step].possibly_effective or unknown
            return [
                StepAttemptFailed(o.step, o.attempt, o.error_class, o.detail, False, unknown, None),
                StepFailed(o.step, f"rejected: {o.error_class}", possibly_effective),
            ]
        case OutcomeKind.TRANSIENT:
            return _action_failure(
                state, o.step, o.detail, o.error_class, unknown, o.retry_after_ms, tuning, o.withheld
            )
        case OutcomeKind.MISCONFIGURED | OutcomeKind.CRASHED:
            return [
                StepAttemptFailed(o.step, o.attempt, o.error_class, o.detail, False, unknown, None),
                SagaSuspended(_suspend_reason(o), o.error_class, o.step, Phase.ACTION),
            ]
        case _:
            assert_never(o.kind)


def _compensation_outcome(state: SagaState, o: StepOutcome, late: bool, tuning: Tuning) -> list[Event]:
    unknown = o.outcome_unknown or o.kind is OutcomeKind.CRASHED
    match o.kind:
        case OutcomeKind.SUCCEEDED:
            return [CompensationStepSucceeded(o.step, o.attempt, late)]
        case _ if late:
            retryable = o.kind is OutcomeKind.TRANSIENT
            return [
                CompensationStepAttemptFailed(
                    o.step, o.attempt, o.error_class, o.detail, retryable, unknown, None, True
                )
            ]
        case OutcomeKind.REJECTED:
            return [
                CompensationStepAttemptFailed(
                    o.step, o.attempt, o.error_class, o.detail, False, unknown, None
                ),
                CompensationStepFailed(o.step, f"cannot compensate: {o.error_class}", True),
            ]
        case OutcomeKind.TRANSIENT:
            return _compensation_failure(
                state, o.step, o.detail, o.error_class, unknown, o.retry_after_ms, tuning, o.withheld
            )
        case OutcomeKind.MISCONFIGURED | OutcomeKind.CRASHED:
            return [
                CompensationStepAttemptFailed(
                    o.step, o.attempt, o.error_class, o.detail, False, unknown, None
                ),
                SagaSuspended(_suspend_reason(o), o.error_class, o.step, Phase.COMPENSATION),
            ]
        case _:
            assert_never(o.kind)


def _suspend_reason(o: StepOutcome) -> str:
    what = "our own code failed" if o.kind is OutcomeKind.CRASHED else "contract or configuration error"
    return f"{o.phase} of step {o.step!r}: {what}: {o.error_class}"


def _action_failure(
    state: SagaState,
    step: str,
    detail: str,
    error_class: str,
    unknown: bool,
    retry_after_ms: int | None,
    tuning: Tuning,
    withheld: bool = False,
) -> list[Event]:
    """A transient failure (or a passed deadline) of the current attempt: retry, or give the step up."""
    spec = state.definition.step(step)
    st = state.steps[step]
    call = st.action
    used = _attempts_used(call, withheld)
    # After the pivot there is no way back, so retriable steps retry without limit (capped backoff).
    budget_left = spec.kind == "retriable" or used < spec.retries + 1
    rolling_back = phase(state) is not SagaStatus.RUNNING or rollback_reason(state) is not None
    # A pivot that may have taken effect blocks any rollback until its outcome is known, so it goes on
    # being asked (under the same key) while its budget lasts.
    pivot_unknown = spec.kind == "pivot" and (st.possibly_effective or unknown)
    if budget_left and (not rolling_back or (pivot_unknown and phase(state) is SagaStatus.RUNNING)):
        delay = retry_delay_ms(
            spec.retry, state.saga_id, step, "action", call.attempt, retry_after_ms, tuning
        )
        return [
            StepAttemptFailed(step, call.attempt, error_class, detail, True, unknown, delay, False, withheld)
        ]
    why = "not retried while the saga rolls back" if budget_left else f"gave up after {used} attempt(s)"
    return [
        StepAttemptFailed(step, call.attempt, error_class, detail, True, unknown, None, False, withheld),
        StepFailed(step, f"{why}: {error_class}", st.possibly_effective or unknown),
    ]


def _attempts_used(call: CallState, withheld: bool) -> int:
    """The budget used once the current attempt is counted (a withheld one may be free)."""
    free = min(call.withheld + (1 if withheld else 0), FREE_WITHHELD_ATTEMPTS)
    return call.attempt - call.budget_base - free


def _compensation_failure(
    state: SagaState,
    step: str,
    detail: str,
    error_class: str,
    unknown: bool,
    retry_after_ms: int | None,
    tuning: Tuning,
    withheld: bool = False,
) -> list[Event]:
    spec = state.definition.step(step)
    comp = state.steps[step].compensation
    used = _attempts_used(comp, withheld)
    if used < spec.compensation_retries + 1:
        delay = retry_delay_ms(
            spec.retry, state.saga_id, step, "compensation", comp.attempt, retry_after_ms, tuning
        )
        return [
            CompensationStepAttemptFailed(
                step, comp.attempt, error_class, detail, True, unknown, delay, False, withheld
            )
        ]
    return [
        CompensationStepAttemptFailed(
            step, comp.attempt, error_class, detail, True, unknown, None, False, withheld
        ),
        CompensationStepFailed(step, f"gave up after {used} attempt(s): {error_class}", False),
    ]
