"""The history checker: a pure function over what the store recorded and what the participants saw.

Inputs: every saga stream's recorded events, the participants' call log and ledger (one :class:`Effect`
per idempotency key whose action took effect), the saga ids whose start was acknowledged to a client, and
optionally the definitions by name (else the one pinned in each ``SagaStarted``). Output: a list of
violations, each a sentence that names the rule, the saga, the step and the key; empty when all hold.

- R1 intent before effect: every call a participant received has a durable intent (``StepStarted`` /
  ``CompensationStepStarted``) with its key, attempt, phase and step in that saga's stream, and each
  intent was sent at most once (only the writer whose append won calls).
- R2 one key per (step, phase, generation), one (saga, step, phase, generation) per key, one request hash
  per key; every call under a key carries byte-identical bodies whose sha256 is the intent's hash.
- R3 observed outcomes are facts: an action the participant answered 2xx is never recorded as a failure
  with ``outcome_unknown`` false; every answer the participant sent is recorded (some outcome other than a
  passed deadline exists for that attempt); an attempt recorded as withheld (never sent) never arrived.
- R4 no effect left behind: a compensated saga leaves no applied-and-not-undone effect under any of its
  keys; a completed saga has exactly one live effect per step (two is a double charge, none a success
  that never happened), except the extra ones a person asked for by retrying a step the history already
  showed as possibly effective, and steps a person skipped.
- R5 compensation order: a step's compensation starts only after every possibly-effective step that
  depends on it (transitively) finished compensating.
- R6 liveness: every saga ends terminal or waiting for a person (dead-lettered / suspended); a saga left
  running or compensating is reported with whether it still has a pending timer.
- R7 no acknowledged start is lost: each acknowledged saga id has a stream that begins with
  ``SagaStarted`` (and no saga stream begins with anything else).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.definitions import SagaDefinition, parse_definition
from orchestrator.domain.state import SagaState, fold
from orchestrator.eventstore.types import RecordedEvent
from orchestrator.records.codec import from_recorded

ACTION, COMPENSATION = "action", "compensation"
DEADLINE_PASSED = "deadline_passed"
TERMINAL = frozenset({"completed", "compensated"})
PAUSED = frozenset({"dead_lettered", "suspended"})
_OUTCOME_TYPES = {
    "StepSucceeded": ACTION,
    "StepAttemptFailed": ACTION,
    "CompensationStepSucceeded": COMPENSATION,
    "CompensationStepAttemptFailed": COMPENSATION,
}


@dataclass(slots=True)
class Call:
    """One request a participant received, and what it did with it."""

    service: str
    action: str
    saga_id: str
    key: str
    attempt: int
    body: bytes
    compensation: bool
    #: the status sent back; None when no answer was sent (connection closed, client gone, not yet)
    status: int | None = None
    #: this call applied the action's effect (a replay of a recorded answer applies nothing)
    applied: bool = False
    #: action keys whose effect this compensation undid
    undone: tuple[str, ...] = ()
    #: the injected fault, if one hit this call
    fault: str | None = None
    #: the handler finished (an unfinished call's answer is unknown)
    done: bool = False

    @property
    def phase(self) -> str:
        return COMPENSATION if self.compensation else ACTION

    @property
    def step(self) -> str | None:
        try:
            value = json.loads(self.body).get("step")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class Effect:
    """An action's effect at a participant, under its idempotency key."""

    key: str
    service: str
    action: str
    saga_id: str
    step: str
    #: the compensation key that undid it, None while it stands
    undone_by: str | None = None

    @property
    def undone(self) -> bool:
        return self.undone_by is not None


@dataclass(frozen=True, slots=True)
class _Intent:
    phase: str
    step: str
    attempt: int
    generation: int
    key: str
    request_hash: str
    revision: int


@dataclass
class _Saga:
    saga_id: str
    events: list[tuple[RecordedEvent, dict[str, Any]]]
    definition: SagaDefinition | None = None
    intents: dict[tuple[str, int], _Intent] = field(default_factory=dict)
    state: SagaState | None = None
    fold_error: str | None = None

    @property
    def status(self) -> str | None:
        return None if self.state is None else str(self.state.status)


def saga_id_of(stream: str) -> str:
    return stream.removeprefix("saga-")


def group_histories(events: Iterable[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    """Saga streams (``saga-`` prefix) of a ``read_all``, by saga id, in revision order."""
    out: dict[str, list[RecordedEvent]] = defaultdict(list)
    for e in events:
        if e.stream.startswith("saga-"):
            out[saga_id_of(e.stream)].append(e)
    for history in out.values():
        history.sort(key=lambda e: e.revision)
    return dict(out)


def fold_history(events: Sequence[RecordedEvent]) -> SagaState:
    """The engine's own fold of a saga stream (pure); raises on an unreadable history."""
    return fold((d.event, d.recorded_at) for d in map(from_recorded, events))


def check(
    histories: Mapping[str, Sequence[RecordedEvent]],
    calls: Sequence[Call],
    effects: Mapping[str, Effect],
    acknowledged: Iterable[str],
    definitions: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every violation of R1 to R7 (see the module docstring); ``histories`` is keyed by saga id or stream."""
    sagas = {saga_id_of(k): _index(saga_id_of(k), v, definitions or {}) for k, v in histories.items()}
    violations: list[str] = []
    violations += _r1_intent_before_effect(sagas, calls)
    violations += _r2_keys_and_bodies(sagas, calls)
    violations += _r3_outcomes_are_facts(sagas, calls)
    violations += _r4_no_effect_left_behind(sagas, effects)
    violations += _r5_compensation_order(sagas)
    violations += _r6_liveness(sagas)
    violations += _r7_starts_kept(sagas, acknowledged)
    return violations


# --- indexing ------------------------------------------------------------------------------------------


def _index(saga_id: str, events: Sequence[RecordedEvent], definitions: Mapping[str, Any]) -> _Saga:
    decoded: list[tuple[RecordedEvent, dict[str, Any]]] = []
    for e in sorted(events, key=lambda e: e.revision):
        try:
            data = json.loads(e.data)
        except ValueError:
            data = {}
        decoded.append((e, data if isinstance(data, dict) else {}))
    saga = _Saga(saga_id, decoded)
    if decoded and decoded[0][0].type == "SagaStarted":
        first = decoded[0][1]
        raw = definitions.get(first.get("definition_name", ""), first.get("definition"))
        if isinstance(raw, SagaDefinition):
            saga.definition = raw
        else:
            try:
                saga.definition = parse_definition(raw)
            except Exception as e:  # reported through R6 (the fold fails the same way)
                saga.fold_error = f"definition unreadable: {e}"
    for e, data in decoded:
        if e.type in ("StepStarted", "CompensationStepStarted"):
            intent = _Intent(
                ACTION if e.type == "StepStarted" else COMPENSATION,
                str(data.get("step")),
                int(data.get("attempt", -1)),
                int(data.get("generation", -1)),
                str(data.get("idempotency_key")),
                str(data.get("request_hash")),
                e.revision,
            )
            saga.intents.setdefault((intent.key, intent.attempt), intent)
    try:
        saga.state = fold_history([e for e, _ in decoded])
    except Exception as e:
        saga.fold_error = saga.fold_error or f"{type(e).__name__}: {e}"
    return saga


def _outcomes(saga: _Saga, phase: str, step: str, attempt: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.type, data)
        for e, data in saga.events
        if _OUTCOME_TYPES.get(e.type) == phase and data.get("step") == step and data.get("attempt") == attempt
    ]


def _where(call: Call) -> str:
    return (
        f"saga {call.saga_id} step {call.step!r} {call.phase} attempt {call.attempt} key {call.key} "
        f"({call.service}/{call.action})"
    )


# --- the rules -----------------------------------------------------------------------------------------


def _r1_intent_before_effect(sagas: Mapping[str, _Saga], calls: Sequence[Call]) -> list[str]:
    out: list[str] = []
    sent = Counter((c.saga_id, c.key, c.attempt) for c in calls)
    for (saga_id, key, attempt), n in sorted(sent.items()):
        if n > 1:
            out.append(
                f"R1 saga {saga_id} key {key} attempt {attempt}: the participant received this attempt "
                f"{n} times (only the writer whose intent won may call, once)"
            )
    for call in calls:
        saga = sagas.get(call.saga_id)
        intent = saga.intents.get((call.key, call.attempt)) if saga is not None else None
        if intent is None:
            out.append(f"R1 {_where(call)}: the participant received a call with no durable intent")
        elif intent.phase != call.phase or intent.step != call.step:
            out.append(
                f"R1 {_where(call)}: the durable intent with this key and attempt is for step "
                f"{intent.step!r} {intent.phase}"
            )
    return out


def _r2_keys_and_bodies(sagas: Mapping[str, _Saga], calls: Sequence[Call]) -> list[str]:
    out: list[str] = []
    keys_of_slot: dict[tuple[str, str, str, int], set[str]] = defaultdict(set)
    slots_of_key: dict[str, set[tuple[str, str, str, int]]] = defaultdict(set)
    hashes_of_key: dict[str, set[str]] = defaultdict(set)
    for saga in sagas.values():
        for intent in saga.intents.values():
            slot = (saga.saga_id, intent.step, intent.phase, intent.generation)
            keys_of_slot[slot].add(intent.key)
            slots_of_key[intent.key].add(slot)
            hashes_of_key[intent.key].add(intent.request_hash)
    for (saga_id, step, phase, generation), keys in sorted(keys_of_slot.items()):
        if len(keys) > 1:
            out.append(
                f"R2 saga {saga_id} step {step!r} {phase} generation {generation}: "
                f"{len(keys)} idempotency keys {sorted(keys)} (one per step, phase and generation)"
            )
    for key, slots in sorted(slots_of_key.items()):
        if len(slots) > 1:
            out.append(f"R2 key {key}: used for {len(slots)} different (saga, step, phase, generation)")
        if len(hashes_of_key[key]) > 1:
            out.append(f"R2 key {key}: intents carry {len(hashes_of_key[key])} different request hashes")
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for call in calls:
        bodies[call.key].add(call.body)
        expected = hashes_of_key.get(call.key)
        digest = hashlib.sha256(call.body).hexdigest()
        if expected and digest not in expected:
            out.append(f"R2 {_where(call)}: body sha256 {digest[:12]}… is not the intent's request_hash")
    for key, seen in sorted(bodies.items()):
        if len(seen) > 1:
            out.append(f"R2 key {key}: the participant received {len(seen)} different bodies under one key")
    return out


def _r3_outcomes_are_facts(sagas: Mapping[str, _Saga], calls: Sequence[Call]) -> list[str]:
    out: list[str] = []
    for call in calls:
        saga = sagas.get(call.saga_id)
        step = call.step
        if saga is None or step is None:
            continue  # R1 reports it
        recorded = _outcomes(saga, call.phase, step, call.attempt)
        withheld = [d for _, d in recorded if d.get("withheld")]
        if withheld:
            out.append(f"R3 {_where(call)}: recorded as withheld (never sent), but the participant got it")
        if not call.done or call.status is None:
            continue
        if not call.compensation and 200 <= call.status < 300:
            for type_, data in recorded:
                if type_ == "StepAttemptFailed" and not data.get("outcome_unknown"):
                    out.append(
                        f"R3 {_where(call)}: the participant answered {call.status} (effect applied) but "
                        f"the history records StepAttemptFailed({data.get('error_class')!r}, "
                        "outcome_unknown=false): a 2xx recorded as 'no effect'"
                    )
        observed = [d for _, d in recorded if d.get("error_class") != DEADLINE_PASSED]
        if not observed:
            what = ", ".join(t for t, _ in recorded) or "nothing"
            out.append(
                f"R3 {_where(call)}: the participant answered {call.status} but no outcome of this attempt "
                f"was recorded (history holds: {what}): an observed outcome was dropped"
            )
    return out


def _may_have_taken_effect(event_type: str, data: Mapping[str, Any]) -> bool:
    """What the history tells a reader: this step may have taken effect (so it is compensated)."""
    return event_type == "StepSucceeded" or (
        event_type in ("StepAttemptFailed", "StepFailed") and bool(data.get("outcome_unknown"))
    )


def _possibly_effective_retries(saga: _Saga) -> Counter[str]:
    """Forward ``retry`` commands a person gave for a step the history showed as possibly effective: each
    may add a second effect with the person's consent (a new key), so R4 allows one more per such retry."""
    effective: set[str] = set()
    compensating = False
    accepted: Counter[str] = Counter()
    for e, data in saga.events:
        if _may_have_taken_effect(e.type, data):
            effective.add(str(data.get("step")))
        elif e.type == "CompensationStarted":
            compensating = True
        elif e.type == "ManualInterventionApplied" and data.get("command") == "retry" and not compensating:
            for step in data.get("steps") or ():
                if step in effective:
                    accepted[step] += 1
    return accepted


def _skipped(saga: _Saga) -> set[str]:
    return {
        step
        for e, data in saga.events
        if e.type == "ManualInterventionApplied" and data.get("command") == "skip"
        for step in data.get("steps") or ()
    }


def _r4_no_effect_left_behind(sagas: Mapping[str, _Saga], effects: Mapping[str, Effect]) -> list[str]:
    out: list[str] = []
    by_saga: dict[str, list[Effect]] = defaultdict(list)
    for effect in effects.values():
        by_saga[effect.saga_id].append(effect)
    for saga_id, saga in sorted(sagas.items()):
        # Its effects: those the participant filed under this saga, and any under one of its action keys.
        mine = {e.key: e for e in by_saga.get(saga_id, [])}
        for intent in saga.intents.values():
            if intent.phase == ACTION and intent.key in effects:
                mine[intent.key] = effects[intent.key]
        live = [e for e in mine.values() if not e.undone]
        if saga.status == "compensated":
            waived = any(
                e.type == "SagaAbortRequested" and data.get("waive_pivot") for e, data in saga.events
            )
            pivot = saga.definition.pivot if saga.definition is not None else None
            for effect in live:
                if waived and pivot is not None and effect.step == pivot.name:
                    continue  # a person asserted the pivot had no effect
                out.append(
                    f"R4 saga {saga_id} step {effect.step!r} key {effect.key} ({effect.service}/"
                    f"{effect.action}): the saga ended compensated but this effect was never undone"
                )
        elif saga.status == "completed" and saga.definition is not None:
            accepted = _possibly_effective_retries(saga)
            skipped = _skipped(saga)
            per_step = Counter(e.step for e in live)
            for spec in saga.definition.steps:
                n, allowed = per_step[spec.name], 1 + accepted[spec.name]
                step_keys = sorted(e.key for e in live if e.step == spec.name)
                if n > allowed:
                    out.append(
                        f"R4 saga {saga_id} step {spec.name!r}: completed with {n} live effects under keys "
                        f"{step_keys} (a double effect; at most {allowed})"
                    )
                elif n == 0 and spec.name not in skipped:
                    out.append(
                        f"R4 saga {saga_id} step {spec.name!r}: completed, but the participant holds no "
                        "effect of this step (a success that never happened)"
                    )
    return out


def _r5_compensation_order(sagas: Mapping[str, _Saga]) -> list[str]:
    out: list[str] = []
    for saga_id, saga in sorted(sagas.items()):
        definition = saga.definition
        if definition is None:
            continue
        effective: set[str] = set()
        compensated: set[str] = set()
        compensating = False
        checked: set[tuple[str, int]] = set()
        for e, data in saga.events:
            step = str(data.get("step"))
            if _may_have_taken_effect(e.type, data):
                effective.add(step)
            elif e.type == "CompensationStarted":
                compensating = True
            elif e.type == "CompensationStepSucceeded":
                compensated.add(step)
            elif e.type == "ManualInterventionApplied" and data.get("command") == "skip" and compensating:
                compensated.update(data.get("steps") or ())
            elif e.type == "CompensationStepStarted" and definition.has_step(step):
                generation = int(data.get("generation", 0))
                if (step, generation) in checked:
                    continue
                checked.add((step, generation))
                for dependent in sorted(definition.descendants(step)):
                    if (
                        dependent in effective
                        and definition.step(dependent).compensation is not None
                        and dependent not in compensated
                    ):
                        out.append(
                            f"R5 saga {saga_id} step {step!r} key {data.get('idempotency_key')}: its "
                            f"compensation started (revision {e.revision}) before that of {dependent!r}, "
                            "which depends on it and may have taken effect, had finished"
                        )
    return out


def _r6_liveness(sagas: Mapping[str, _Saga]) -> list[str]:
    out: list[str] = []
    for saga_id, saga in sorted(sagas.items()):
        if saga.state is None:
            out.append(f"R6 saga {saga_id}: its history cannot be folded ({saga.fold_error})")
            continue
        status = str(saga.state.status)
        if status in TERMINAL or status in PAUSED:
            continue
        timers = sorted(t.id.split("/", 1)[1] for t in saga.state.timers.values())
        pending = f"pending timers {timers}" if timers else "NO pending timer (stuck for ever)"
        last = saga.events[-1][0].type if saga.events else "nothing"
        out.append(
            f"R6 saga {saga_id}: left {status} (last event {last}, revision {saga.state.revision}); {pending}"
        )
    return out


def _r7_starts_kept(sagas: Mapping[str, _Saga], acknowledged: Iterable[str]) -> list[str]:
    out: list[str] = []
    for saga_id in sorted(set(acknowledged)):
        saga = sagas.get(saga_id)
        if saga is None or not saga.events:
            out.append(f"R7 saga {saga_id}: its start was acknowledged but it has no stream")
    for saga_id, saga in sorted(sagas.items()):
        if saga.events and saga.events[0][0].type != "SagaStarted":
            out.append(f"R7 saga {saga_id}: its stream begins with {saga.events[0][0].type}, not SagaStarted")
    return out
