"""The folded saga state and ``evolve``: a pure fold of the saga stream and each event's recorded time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar, assert_never

from orchestrator.domain.definitions import SagaDefinition, parse_pinned
from orchestrator.domain.errors import DefinitionError, UnreadableHistory
from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepAttemptFailed,
    CompensationStepFailed,
    CompensationStepStarted,
    CompensationStepSucceeded,
    Event,
    ManualInterventionApplied,
    SagaAbortRequested,
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
    UnknownEvent,
)
from orchestrator.domain.timers import Timer, TimerKind, timer_id
from orchestrator.domain.vocabulary import (
    PAUSED_STATUSES,
    TERMINAL_STATUSES,
    CallStatus,
    ManualCommand,
    Phase,
    SagaStatus,
)

_V = TypeVar("_V")
_FIELDS: dict[type, frozenset[str]] = {}


def replace(obj: _V, **changes: Any) -> _V:
    """``dataclasses.replace`` for the frozen state values below, without re-running ``__init__``.

    A fold calls it several times per event; these classes have no ``__post_init__`` and every field is
    copied from ``obj`` or taken from ``changes``, so skipping ``__init__`` changes nothing but the cost.
    """
    cls = type(obj)
    names = _FIELDS.get(cls)
    if names is None:
        instance: Any = obj
        names = _FIELDS[cls] = frozenset(f.name for f in fields(instance))
    if not changes.keys() <= names:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(changes.keys() - names)}")
    new = object.__new__(cls)
    if hasattr(obj, "__dict__"):
        new.__dict__.update(obj.__dict__)
        new.__dict__.update(changes)
    else:
        for name in names:
            object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


# The error class of the StepAttemptFailed that records a passed attempt deadline (not an observed outcome,
# so a response that arrives later is still recorded, as "late").
DEADLINE_PASSED = "deadline_passed"
#: withheld attempts per retry budget that do not count against it (beyond them, they do: a service whose
#: pool never frees up must not be retried for ever)
FREE_WITHHELD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class CallState:
    """One call of a step: its action, or its compensation."""

    status: CallStatus = CallStatus.IDLE
    attempt: int = 0
    generation: int = 0
    # Attempt number when the current retry budget began (a manual retry/resume starts a new budget).
    budget_base: int = 0
    idempotency_key: str | None = None
    deadline_at: datetime | None = None
    retry_at: datetime | None = None
    retry_fired: bool = False
    # Attempts with an observed outcome, and attempts whose deadline passed first.
    recorded: frozenset[int] = frozenset()
    timed_out: frozenset[int] = frozenset()
    last_error: str | None = None
    # Attempts of the current budget that the engine itself withheld (never sent).
    withheld: int = 0
    # (first attempt, idempotency key) of each generation, oldest first: which key an attempt was sent under.
    keys: tuple[tuple[int, str], ...] = ()

    @property
    def attempts_in_budget(self) -> int:
        """Attempts that count against the retry budget: a withheld attempt never reached the participant,
        so the first few of them are free (a slow append must not use up a step with ``retries: 0``)."""
        return self.attempt - self.budget_base - min(self.withheld, FREE_WITHHELD_ATTEMPTS)

    def key_of(self, attempt: int) -> str | None:
        """The idempotency key attempt ``attempt`` was sent under."""
        found = None
        for first, key in self.keys:
            if first > attempt:
                break
            found = key
        return found


@dataclass(frozen=True, slots=True)
class StepState:
    name: str
    action: CallState = CallState()
    compensation: CallState = CallState()
    output: Any = None
    # The action keys (one per generation, oldest first) under which an effect may exist: a compensation
    # must undo every one of them, not only the newest generation's.
    effective_keys: tuple[str, ...] = ()
    # What the current compensation generation's first intent named: (the newest action key, every action
    # key; empty when written before generations were named), so each of its attempts sends the same body.
    compensation_named: tuple[str, tuple[str, ...]] | None = None

    @property
    def possibly_effective(self) -> bool:
        """Succeeded, or some attempt's outcome is unknown: such a step is compensated on rollback."""
        return bool(self.effective_keys)


@dataclass(frozen=True)
class SagaState:
    tenant: str
    saga_id: str
    client_id: str | None
    definition: SagaDefinition
    definition_hash: str
    context: dict[str, Any]
    started_at: datetime
    deadline_at: datetime | None
    status: SagaStatus
    paused_from: SagaStatus | None
    steps: Mapping[str, StepState]
    timers: Mapping[str, Timer]
    revision: int
    abort_requested: bool = False
    pivot_waived: bool = False
    deadline_passed: bool = False
    reason: str | None = None
    applied_keys: frozenset[str] = frozenset()

    def step(self, name: str) -> StepState:
        return self.steps[name]


# --- queries the engine, API and decider share -----------------------------------------------------------


def phase(state: SagaState) -> SagaStatus:
    """The status a paused saga returns to when a person lets it continue."""
    if state.status in PAUSED_STATUSES and state.paused_from is not None:
        return state.paused_from
    return state.status


def is_terminal(state: SagaState) -> bool:
    return state.status in TERMINAL_STATUSES


def is_waiting_for_person(state: SagaState) -> bool:
    return state.status in PAUSED_STATUSES


def pivot_succeeded(state: SagaState) -> bool:
    pivot = state.definition.pivot
    return pivot is not None and state.steps[pivot.name].action.status is CallStatus.SUCCEEDED


def action_in_flight(state: SagaState, name: str) -> bool:
    """An attempt of the step's action may still be under way: its call runs, or an earlier attempt's
    late success ended the call while the current attempt was in flight and its deadline has not passed.
    Nothing is compensated under such an attempt (design.md §4: unknown only after its deadline)."""
    call = state.steps[name].action
    if call.status is CallStatus.RUNNING:
        return True
    return timer_id(state.saga_id, TimerKind.ATTEMPT_DEADLINE, name, call.attempt) in state.timers


def needs_compensation(state: SagaState, name: str) -> bool:
    """Every succeeded step and every step whose outcome is unknown, if it has a compensation at all."""
    return state.definition.step(name).compensation is not None and state.steps[name].possibly_effective


def timer_changes(before: SagaState | None, after: SagaState) -> tuple[list[Timer], list[str]]:
    """(armed, disarmed timer ids) between two folds: what the engine's timer index must apply."""
    old = before.timers if before is not None else {}
    armed = [t for tid, t in after.timers.items() if old.get(tid) != t]
    disarmed = [tid for tid in old if tid not in after.timers]
    return armed, disarmed


# --- the fold ------------------------------------------------------------------------------------------


def start(event: SagaStarted, recorded_at: datetime) -> SagaState:
    try:
        definition = parse_pinned(event.definition, event.definition_hash)
    except DefinitionError as e:
        raise UnreadableHistory(f"SagaStarted holds a definition this code rejects: {e}") from e
    state = SagaState(
        tenant=event.tenant,
        saga_id=event.saga_id,
        client_id=event.client_id,
        definition=definition,
        definition_hash=event.definition_hash,
        context=event.context,
        started_at=recorded_at,
        deadline_at=_after(recorded_at, event.deadline_ms),
        status=SagaStatus.RUNNING,
        paused_from=None,
        steps={s.name: StepState(s.name) for s in definition.steps},
        timers={},
        revision=0,
    )
    timers = _arm_kick(state, event.kick_ms, recorded_at)
    if state.deadline_at is not None:
        timers = _arm(state.saga_id, timers, TimerKind.SAGA_DEADLINE, "", 0, state.deadline_at)
    return replace(state, timers=timers)


def fold(history: Iterable[tuple[Event, datetime]]) -> SagaState:
    """Fold a whole stream of (event, recorded time); the first event must be ``SagaStarted``."""
    state: SagaState | None = None
    for event, recorded_at in history:
        if state is None:
            if not isinstance(event, SagaStarted):
                raise UnreadableHistory(
                    f"a saga stream must begin with SagaStarted, not {type(event).__name__}"
                )
            state = start(event, recorded_at)
        else:
            state = evolve(state, event, recorded_at)
    if state is None:
        raise UnreadableHistory("empty saga stream")
    return state


def evolve(state: SagaState, event: Event, recorded_at: datetime) -> SagaState:
    """The state after ``event``, recorded by the store at ``recorded_at`` (deadlines are relative to it)."""
    s = replace(state, revision=state.revision + 1)
    match event:
        case SagaStarted():
            raise UnreadableHistory("SagaStarted after the start of the stream")
        case StepStarted():
            return _call_started(s, event, recorded_at, compensation=False)
        case StepSucceeded():
            step = s.steps[event.step]
            call = replace(step.action, recorded=step.action.recorded | {event.attempt})
            output = step.output
            if call.status not in (CallStatus.SUCCEEDED, CallStatus.SKIPPED):
                call, output = replace(call, status=CallStatus.SUCCEEDED, retry_at=None), event.output
            # Only this attempt's deadline: when this success came late, a later attempt may still be in
            # flight, and its deadline stays so that a rollback waits for it (see `action_in_flight`).
            timers = _drop(s.timers, kinds={TimerKind.RETRY}, step=event.step)
            timers.pop(timer_id(s.saga_id, TimerKind.ATTEMPT_DEADLINE, event.step, event.attempt), None)
            new_step = _maybe_effective(
                replace(step, action=call, output=output), step.action.key_of(event.attempt)
            )
            return replace(s, timers=timers, steps={**s.steps, event.step: new_step})
        case StepAttemptFailed():
            step = s.steps[event.step]
            call, timers = _attempt_failed(
                s, step.action, event, TimerKind.ATTEMPT_DEADLINE, TimerKind.RETRY, recorded_at
            )
            new_step = replace(step, action=call)
            if event.outcome_unknown:
                new_step = _maybe_effective(new_step, step.action.key_of(event.attempt))
            return replace(s, timers=timers, steps={**s.steps, event.step: new_step})
        case StepFailed():
            step = s.steps[event.step]
            call = replace(step.action, status=CallStatus.FAILED, last_error=event.reason)
            new_step = replace(step, action=call)
            if event.outcome_unknown and not step.effective_keys:
                new_step = _maybe_effective(new_step, step.action.idempotency_key)
            return replace(s, steps={**s.steps, event.step: new_step})
        case CompensationStarted():
            steps = dict(s.steps)
            for name, step in s.steps.items():
                if step.action.status is CallStatus.RETRY_WAIT:
                    cancelled = replace(
                        step.action, status=CallStatus.FAILED, last_error="cancelled by compensation"
                    )
                    steps[name] = replace(step, action=cancelled)
            timers = _drop(s.timers, kinds={TimerKind.RETRY, TimerKind.SAGA_DEADLINE})
            return replace(s, status=SagaStatus.COMPENSATING, reason=event.reason, steps=steps, timers=timers)
        case CompensationStepStarted():
            step = s.steps[event.step]
            if step.compensation.idempotency_key != event.idempotency_key:
                named = (event.action_idempotency_key, tuple(event.action_idempotency_keys))
                s = replace(s, steps={**s.steps, event.step: replace(step, compensation_named=named)})
            return _call_started(s, event, recorded_at, compensation=True)
        case CompensationStepSucceeded():
            comp = s.steps[event.step].compensation
            comp = replace(comp, recorded=comp.recorded | {event.attempt})
            if comp.status is not CallStatus.SKIPPED:
                comp = replace(comp, status=CallStatus.SUCCEEDED, retry_at=None)
            kinds = {TimerKind.COMPENSATION_DEADLINE, TimerKind.COMPENSATION_RETRY}
            return _with_compensation(
                replace(s, timers=_drop(s.timers, kinds=kinds, step=event.step)), event.step, comp
            )
        case CompensationStepAttemptFailed():
            comp, timers = _attempt_failed(
                s,
                s.steps[event.step].compensation,
                event,
                TimerKind.COMPENSATION_DEADLINE,
                TimerKind.COMPENSATION_RETRY,
                recorded_at,
            )
            return _with_compensation(replace(s, timers=timers), event.step, comp)
        case CompensationStepFailed():
            comp = replace(
                s.steps[event.step].compensation, status=CallStatus.FAILED, last_error=event.reason
            )
            return _with_compensation(s, event.step, comp)
        case TimerFired():
            s = replace(s, timers={k: v for k, v in s.timers.items() if k != event.timer_id})
            s = _timer_effect(s, event)
            return replace(s, timers=_arm_kick(s, event.kick_ms, recorded_at))
        case SagaCompleted():
            return replace(s, status=SagaStatus.COMPLETED, paused_from=None, timers={})
        case SagaCompensated():
            return replace(s, status=SagaStatus.COMPENSATED, paused_from=None, timers={})
        case SagaDeadLettered():
            return _pause(s, SagaStatus.DEAD_LETTERED, event.reason)
        case SagaSuspended():
            s = _pause(s, SagaStatus.SUSPENDED, event.reason)
            if event.step is not None and event.phase is Phase.ACTION:
                s = _with_action(
                    s, event.step, replace(s.steps[event.step].action, status=CallStatus.BLOCKED)
                )
            elif event.step is not None and event.phase is Phase.COMPENSATION:
                comp = replace(s.steps[event.step].compensation, status=CallStatus.BLOCKED)
                s = _with_compensation(s, event.step, comp)
            return s
        case ManualInterventionApplied():
            s = _apply_manual(replace(s, applied_keys=s.applied_keys | {event.idempotency_key}), event)
            return replace(s, timers=_arm_kick(s, event.kick_ms, recorded_at))
        case SagaAbortRequested():
            s = replace(
                s,
                abort_requested=True,
                pivot_waived=s.pivot_waived or event.waive_pivot,
                applied_keys=s.applied_keys | {event.idempotency_key},
                reason=event.reason,
            )
            if s.status in PAUSED_STATUSES and s.paused_from is SagaStatus.RUNNING:
                steps = {
                    n: replace(st, action=replace(st.action, status=CallStatus.FAILED))
                    if st.action.status is CallStatus.BLOCKED
                    else st
                    for n, st in s.steps.items()
                }
                s = replace(s, status=SagaStatus.RUNNING, paused_from=None, steps=steps)
            return replace(s, timers=_arm_kick(s, event.kick_ms, recorded_at))
        case UnknownEvent():
            raise UnreadableHistory(f"cannot fold {event.type} (schema {event.schema}): {event.reason}")
        case _:
            assert_never(event)


# --- helpers -------------------------------------------------------------------------------------------


def _after(at: datetime, ms: int | None) -> datetime | None:
    return None if ms is None else at + timedelta(milliseconds=ms)


def _arm(
    saga_id: str, timers: Mapping[str, Timer], kind: TimerKind, step: str, attempt: int, due_at: datetime
) -> dict[str, Timer]:
    tid = timer_id(saga_id, kind, step, attempt)
    return {**timers, tid: Timer(tid, kind, step, attempt, due_at)}


def _drop(timers: Mapping[str, Timer], *, kinds: set[TimerKind], step: str | None = None) -> dict[str, Timer]:
    return {k: t for k, t in timers.items() if not (t.kind in kinds and (step is None or t.step == step))}


def _arm_kick(state: SagaState, kick_ms: int | None, recorded_at: datetime) -> dict[str, Timer]:
    """At most one kick is pending; its id carries the arming revision so each arming is a distinct timer."""
    if kick_ms is None:
        return dict(state.timers)
    timers = _drop(state.timers, kinds={TimerKind.KICK})
    return _arm(
        state.saga_id,
        timers,
        TimerKind.KICK,
        "",
        state.revision,
        recorded_at + timedelta(milliseconds=kick_ms),
    )


def _call_started(
    s: SagaState, event: StepStarted | CompensationStepStarted, recorded_at: datetime, *, compensation: bool
) -> SagaState:
    """An intent of either phase: its call runs, with a deadline timer, and its retry timer is spent."""
    due = recorded_at + timedelta(milliseconds=event.deadline_ms)
    retry = TimerKind.COMPENSATION_RETRY if compensation else TimerKind.RETRY
    deadline = TimerKind.COMPENSATION_DEADLINE if compensation else TimerKind.ATTEMPT_DEADLINE
    # Starting an intent is the re-evaluation a pending kick asked for.
    timers = _drop(s.timers, kinds={retry}, step=event.step)
    timers = _drop(timers, kinds={TimerKind.KICK})
    timers = _arm(s.saga_id, timers, deadline, event.step, event.attempt, due)
    step = s.steps[event.step]
    before = step.compensation if compensation else step.action
    keys = before.keys
    if not keys or keys[-1][1] != event.idempotency_key:
        keys = (*keys, (event.attempt, event.idempotency_key))
    call = replace(
        before,
        keys=keys,
        status=CallStatus.RUNNING,
        attempt=event.attempt,
        generation=event.generation,
        idempotency_key=event.idempotency_key,
        deadline_at=due,
        retry_at=None,
        retry_fired=False,
    )
    with_call = _with_compensation if compensation else _with_action
    return with_call(replace(s, timers=timers), event.step, call)


def _maybe_effective(step: StepState, key: str | None) -> StepState:
    """The step may have taken effect under ``key``: it is compensated on rollback, under every such key."""
    key = key or step.action.idempotency_key
    if key is None or key in step.effective_keys:
        return step
    return replace(step, effective_keys=(*step.effective_keys, key))


def _with_action(state: SagaState, name: str, call: CallState) -> SagaState:
    return replace(state, steps={**state.steps, name: replace(state.steps[name], action=call)})


def _with_compensation(state: SagaState, name: str, call: CallState) -> SagaState:
    return replace(state, steps={**state.steps, name: replace(state.steps[name], compensation=call)})


def _attempt_failed(
    state: SagaState,
    call: CallState,
    event: StepAttemptFailed | CompensationStepAttemptFailed,
    deadline_kind: TimerKind,
    retry_kind: TimerKind,
    recorded_at: datetime,
) -> tuple[CallState, dict[str, Timer]]:
    deadline_id = timer_id(state.saga_id, deadline_kind, event.step, event.attempt)
    timers = {k: t for k, t in state.timers.items() if k != deadline_id}
    if event.error_class == DEADLINE_PASSED:
        call = replace(call, timed_out=call.timed_out | {event.attempt})
    else:
        call = replace(call, recorded=call.recorded | {event.attempt})
    if event.late:
        return call, timers
    if event.withheld:
        call = replace(call, withheld=call.withheld + 1)
    if event.retry_in_ms is not None:
        due = recorded_at + timedelta(milliseconds=event.retry_in_ms)
        timers = _arm(state.saga_id, timers, retry_kind, event.step, event.attempt + 1, due)
        status = CallStatus.RETRY_WAIT
        return replace(
            call, status=status, retry_at=due, retry_fired=False, last_error=event.error_class
        ), timers
    return replace(call, status=CallStatus.FAILED, last_error=event.error_class), timers


def _timer_effect(state: SagaState, event: TimerFired) -> SagaState:
    match event.kind:
        case TimerKind.SAGA_DEADLINE:
            return replace(state, deadline_passed=True)
        case TimerKind.RETRY:
            call = state.steps[event.step].action
            if call.status is CallStatus.RETRY_WAIT and call.attempt + 1 == event.attempt:
                return _with_action(state, event.step, replace(call, retry_fired=True))
            return state
        case TimerKind.COMPENSATION_RETRY:
            comp = state.steps[event.step].compensation
            if comp.status is CallStatus.RETRY_WAIT and comp.attempt + 1 == event.attempt:
                return _with_compensation(state, event.step, replace(comp, retry_fired=True))
            return state
        case TimerKind.KICK | TimerKind.ATTEMPT_DEADLINE | TimerKind.COMPENSATION_DEADLINE:
            # A passed deadline is recorded by the StepAttemptFailed the decider appends with it.
            return state
        case _:
            assert_never(event.kind)


def _pause(state: SagaState, status: SagaStatus, reason: str) -> SagaState:
    timers = _drop(state.timers, kinds={TimerKind.KICK})
    return replace(state, status=status, paused_from=phase(state), reason=reason, timers=timers)


def _reset(call: CallState, *, new_generation: bool) -> CallState:
    return replace(
        call,
        status=CallStatus.IDLE,
        generation=call.generation + 1 if new_generation else call.generation,
        budget_base=call.attempt,
        withheld=0,
        retry_at=None,
        retry_fired=False,
    )


def _apply_manual(state: SagaState, event: ManualInterventionApplied) -> SagaState:
    forward = phase(state) is SagaStatus.RUNNING
    steps = dict(state.steps)
    timers = dict(state.timers)
    match event.command:
        case ManualCommand.RETRY | ManualCommand.RESUME:
            new_generation = event.command is ManualCommand.RETRY
            for name in event.steps:
                st = steps[name]
                if forward:
                    steps[name] = replace(st, action=_reset(st.action, new_generation=new_generation))
                    timers = _drop(timers, kinds={TimerKind.RETRY}, step=name)
                else:
                    steps[name] = replace(
                        st, compensation=_reset(st.compensation, new_generation=new_generation)
                    )
                    timers = _drop(timers, kinds={TimerKind.COMPENSATION_RETRY}, step=name)
        case ManualCommand.SKIP:
            for name in event.steps:
                st = steps[name]
                if forward:
                    steps[name] = replace(st, action=replace(st.action, status=CallStatus.SKIPPED))
                else:
                    steps[name] = replace(
                        st, compensation=replace(st.compensation, status=CallStatus.SKIPPED)
                    )
        case ManualCommand.RESOLVE | ManualCommand.ABORT:
            # RESOLVE is followed by SagaCompleted/SagaCompensated; ABORT is recorded as SagaAbortRequested.
            return state
        case _:
            assert_never(event.command)
    still_blocked = any(
        (st.action if forward else st.compensation).status is CallStatus.BLOCKED for st in steps.values()
    )
    if still_blocked:
        # A step the person did not act on would stop the saga again with nothing pending: stay paused.
        return replace(state, steps=steps, timers=timers, reason=event.reason)
    return replace(
        state,
        steps=steps,
        timers=timers,
        status=phase(state),
        paused_from=None,
        # A person who lets the saga go on has seen the passed saga deadline; it no longer forces a rollback.
        deadline_passed=state.deadline_passed and not forward,
        reason=event.reason,
    )
