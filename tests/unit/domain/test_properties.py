"""Hypothesis: random DAG definitions driven by random outcomes, timers and people through the decider."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.domain import (
    INTERVENTION_TABLE,
    CallStatus,
    DomainConflict,
    Event,
    FireTimer,
    Intervene,
    ManualCommand,
    OutcomeKind,
    Phase,
    SagaDefinition,
    SagaStatus,
    StepOutcome,
    TimerKind,
    advance,
    canonical_json,
    decide,
    decode,
    encode,
    fold,
    is_terminal,
    parse_definition,
    react,
)
from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepStarted,
    CompensationStepSucceeded,
    ManualInterventionApplied,
    SagaCompensated,
    StepAttemptFailed,
    StepStarted,
    StepSucceeded,
)
from tests.unit.domain.support import Saga

# Bounded so the domain suite stays fast; DOMAIN_PROPERTY_EXAMPLES raises it for a deeper (nightly) run.
BOUNDED = settings(
    max_examples=int(os.environ.get("DOMAIN_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def definitions(draw: st.DrawFn) -> SagaDefinition:
    n = draw(st.integers(1, 6))
    names = [f"s{i}" for i in range(n)]
    pivot_at = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    policy = {"initial_interval": 100, "max_interval": 1_000}
    steps: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        if pivot_at is None or i < pivot_at:
            pool, kind = names[:i], "compensatable"
        elif i == pivot_at:
            pool, kind = [], "pivot"
        else:
            pool, kind = names[pivot_at + 1 : i], "retriable"
        deps = draw(st.lists(st.sampled_from(pool), unique=True, max_size=3)) if pool else []
        if kind == "pivot":
            deps = names[:i]  # every earlier step is an ancestor of the pivot
        elif kind == "retriable":
            deps = sorted({names[pivot_at], *deps}) if pivot_at is not None else deps
        spec: dict[str, Any] = {
            "name": name,
            "service": "svc",
            "action": f"do-{name}",
            "timeout": draw(st.sampled_from([1_000, 3_000])),
            "retries": draw(st.integers(0, 2)),
            "kind": kind,
            "depends_on": deps,
            "retry": policy,
            "compensation_retries": draw(st.integers(0, 2)),
        }
        if kind == "compensatable":
            spec["compensation"] = f"undo-{name}"
        steps.append(spec)
    raw: dict[str, Any] = {"name": "gen", "version": "1.0.0", "steps": steps}
    if draw(st.booleans()):
        raw["timeout"] = draw(st.sampled_from([2_000, 20_000]))
    return parse_definition(raw)


@given(definitions())
@BOUNDED
def test_generated_definitions_have_a_canonical_fixed_point(d: SagaDefinition) -> None:
    text = canonical_json(d)
    assert parse_definition(text) == d
    assert canonical_json(parse_definition(text)) == text


_KINDS = (
    [OutcomeKind.SUCCEEDED] * 5
    + [OutcomeKind.TRANSIENT] * 3
    + [
        OutcomeKind.REJECTED,
        OutcomeKind.MISCONFIGURED,
        OutcomeKind.CRASHED,
    ]
)


def _in_flight(saga: Saga) -> list[tuple[str, Phase, int]]:
    found = []
    for name, s in saga.state.steps.items():
        if s.action.status is CallStatus.RUNNING:
            found.append((name, Phase.ACTION, s.action.attempt))
        if s.compensation.status is CallStatus.RUNNING:
            found.append((name, Phase.COMPENSATION, s.compensation.attempt))
    return found


def _late(saga: Saga) -> list[tuple[str, Phase, int]]:
    found = []
    for name, s in saga.state.steps.items():
        for phase, call in ((Phase.ACTION, s.action), (Phase.COMPENSATION, s.compensation)):
            found.extend((name, phase, a) for a in sorted(call.timed_out - call.recorded))
    return found


Check = Callable[[Saga, Sequence[tuple[Event, Any]] | Sequence[Event], bool], None]


def drive(saga: Saga, data: st.DataObject, check: Check) -> None:
    """Run ``saga`` through up to 60 random rounds of the actor, outcomes (late ones too), timers, time
    and people's commands; ``check(saga, new events, after_actor)`` after each change."""
    for _ in range(60):
        if is_terminal(saga.state):
            break
        plan = saga.run()
        check(saga, plan.events, True)
        choices: list[Any] = [("outcome", c) for c in _in_flight(saga)] + [("late", c) for c in _late(saga)]
        if saga.state.timers:
            choices.append(("timer", None))
        choices.append(("tick", None))
        choices.extend(("person", c) for c in ManualCommand)
        if not choices:
            break
        kind, choice = data.draw(st.sampled_from(choices))
        before = len(saga.history)
        if kind in ("outcome", "late"):
            name, phase, attempt = choice
            outcome_kind = data.draw(st.sampled_from(_KINDS))
            saga.run(
                StepOutcome(
                    name,
                    attempt,
                    phase,
                    outcome_kind,
                    output={"n": name} if outcome_kind is OutcomeKind.SUCCEEDED else None,
                    error_class="e",
                    retry_after_ms=data.draw(st.sampled_from([None, 50, 5_000])),
                    outcome_unknown=data.draw(st.booleans()),
                )
            )
        elif kind == "timer":
            earliest = min(saga.state.timers.values(), key=lambda t: (t.due_at, t.id))
            saga.now = max(saga.now, earliest.due_at)
            saga.run(FireTimer(earliest.id))
        elif kind == "tick":
            # Time passes; the actor's next run fires whatever fell due, in due order.
            saga.tick(data.draw(st.sampled_from([500, 2_500, 10_000])))
        else:
            _person(saga, choice, data)
        check(saga, saga.history[before:], False)


@given(definitions(), st.data())
@BOUNDED
def test_decider_properties_hold_for_any_run(d: SagaDefinition, data: st.DataObject) -> None:
    saga = Saga(d)
    _check_append(saga, saga.history)
    drive(saga, data, _check_append)
    _check_history(saga)
    event(f"final status: {saga.state.status}")
    for name in {type(e).__name__ for e, _ in saga.history}:
        event(f"saw {name}")


def _person(saga: Saga, command: ManualCommand, data: st.DataObject) -> None:
    step = data.draw(st.sampled_from([None, *saga.state.steps]))
    message = Intervene(command, "ops", "because", f"key-{len(saga.history)}", step)
    allowed = INTERVENTION_TABLE[(saga.state.status, command)]
    try:
        events = decide(saga.state, message, saga.now)
    except DomainConflict:
        return
    assert allowed, (saga.state.status, command)
    assert type(events[0]).__name__ == allowed[0]
    saga.record(events)
    # A repeated request with the same key appends nothing.
    assert decide(saga.state, message, saga.now) == []


def _check_append(
    saga: Saga, new: Sequence[tuple[Event, Any]] | Sequence[Event], after_actor: bool = False
) -> None:
    for item in new:
        event = item[0] if isinstance(item, tuple) else item
        encoded = encode(event)
        assert decode(encoded.type, json.loads(json.dumps(encoded.data)), encoded.schema) == event
    assert fold(saga.history) == saga.state
    state = saga.state
    if state.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        assert state.timers, "a live saga must have a pending timer"
        if after_actor:
            assert any(t.kind is not TimerKind.KICK for t in state.timers.values()), "stuck on kicks"
    if is_terminal(state):
        later = saga.now + timedelta(days=1)
        assert react(state, later) == []
        assert advance(state, later).events == []
        assert state.timers == {}


def _check_history(saga: Saga) -> None:
    events = [e for e, _ in saga.history]
    d = saga.state.definition
    pivot = d.pivot
    effective_at: dict[str, int] = {}
    compensated_at: dict[str, int] = {}
    skipped_at: dict[str, int] = {}
    started: dict[str, set[int]] = {}
    settled: dict[str, set[int]] = {}
    keys: dict[tuple[str, int], set[str]] = {}
    hashes: dict[str, set[str]] = {}
    pivot_succeeded_at: int | None = None
    for i, e in enumerate(events):
        match e:
            case StepStarted():
                started.setdefault(e.step, set()).add(e.attempt)
                keys.setdefault((e.step, e.generation), set()).add(e.idempotency_key)
                hashes.setdefault(e.step, set()).add(e.request_hash)
            case StepSucceeded():
                effective_at.setdefault(e.step, i)
                settled.setdefault(e.step, set()).add(e.attempt)
                if pivot is not None and e.step == pivot.name and pivot_succeeded_at is None:
                    pivot_succeeded_at = i
            case StepAttemptFailed():
                settled.setdefault(e.step, set()).add(e.attempt)
                if e.outcome_unknown:
                    effective_at.setdefault(e.step, i)
            case CompensationStarted():
                assert pivot_succeeded_at is None, "CompensationStarted after the pivot succeeded"
            case CompensationStepStarted():
                assert e.step in started, "compensation without a recorded StepStarted"
                assert effective_at.get(e.step, i) < i, (
                    "compensating a step that neither succeeded nor is unknown"
                )
                for dependent in d.descendants(e.step):
                    in_flight = started.get(dependent, set()) - settled.get(dependent, set())
                    assert not in_flight, f"compensating {e.step} while {dependent} is in flight"
                    if dependent in effective_at and d.step(dependent).compensation is not None:
                        done = compensated_at.get(dependent, skipped_at.get(dependent))
                        assert done is not None, f"{e.step} compensated before its dependent {dependent}"
            case CompensationStepSucceeded():
                compensated_at.setdefault(e.step, i)
            case ManualInterventionApplied() if e.command is ManualCommand.SKIP:
                for name in e.steps:
                    skipped_at.setdefault(name, i)
            case SagaCompensated():
                resolved = isinstance(events[i - 1], ManualInterventionApplied)
                if not resolved:
                    truth = {s for s in effective_at if d.step(s).compensation is not None}
                    assert set(compensated_at) <= truth
                    assert truth <= set(compensated_at) | set(skipped_at), (truth, compensated_at)
            case _:
                pass
    assert all(len(k) == 1 for k in keys.values()), "one idempotency key per step and generation"
    assert all(len(h) == 1 for h in hashes.values()), "one request body per step"
