"""The pure saga core: definitions, events, state, and the decider. No IO, clock, random, uuid4 or logging.

How the engine uses it (design.md §0, §4)
-----------------------------------------
Registering a definition::

    definition = parse_definition(raw_json)        # DefinitionError(.problems) -> 422
    canonical_json(definition), definition_hash(definition)
    same_content(stored_canonical, definition)      # same (tenant, name, version): True no-op, False 409
    latest_version(versions)                        # "latest" = highest semantic version

Starting a saga (the API appends this one event with NO_STREAM; it carries a ``kick`` timer)::

    started = begin(tenant=..., saga_id=..., client_id=..., definition=..., context=...)

Folding: events hold durations, never wall clock; pass each event's *recorded* time::

    state = fold([(event, recorded_at), ...])       # or evolve(state, event, recorded_at)
    # UnreadableHistory (e.g. an UnknownEvent): ack, count, drop the saga from the cache.

The actor (one per saga) serialises everything for its saga::

    plan = advance(state, now, message)             # message: StepOutcome | FireTimer | None
    append(stream, [encode(e) for e in plan.events], expected=state.revision)
    # only if this writer's append won: perform plan.calls (StartStep / StartCompensationStep), each
    # with its exact body, key and deadline, and post each outcome back as a StepOutcome.

``plan.events`` holds the message's events (an outcome, a timer firing) followed by every intent now
due, so "outcome + next intent (+ its deadline timer)" is one append. ``react(state, now)`` alone says what is
due; ``decide(state, message, now)`` turns one message into events. Intents (``StartStep``…) are only
appended by the actor that will perform the call (invariant 1). ``decide`` for a ``StepOutcome`` returns
``[]`` when the fold already holds that (step, attempt) outcome, so re-appending after a conflict is safe.

The API (manual interventions) folds the stream and appends ``decide(state, Intervene(...), now)``;
``DomainConflict`` -> 409 (see ``INTERVENTION_TABLE``); ``[]`` -> the idempotency key was already
applied (answer with the recorded result). Those events carry a ``kick``; the actor appends the intents.

Timers: the state's ``timers`` are the pending durable timers (id = (saga, kind, step, attempt)).
``timer_changes(before, after)`` gives the timer index what to add and remove. The firer posts
``FireTimer(timer_id)`` to the saga's actor; firing a timer that is no longer pending yields ``[]``.

The executor: ``StartStep.body`` is the exact request body (its sha256 is in ``StepStarted``), and
``classify_http_status(status, phase)`` maps a response to an ``OutcomeKind`` for ``StepOutcome``.
Our own exception while calling -> ``StepOutcome(kind=CRASHED)``; outside a call -> ``Suspend``.
"""

from orchestrator.domain.commands import (
    BeginCompensation,
    Command,
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
from orchestrator.domain.decide import Plan, advance, apply, begin, decide
from orchestrator.domain.definitions import (
    SagaDefinition,
    StepSpec,
    canonical_dict,
    canonical_json,
    definition_hash,
    parse_definition,
    same_content,
)
from orchestrator.domain.errors import (
    DefinitionError,
    DomainConflict,
    DomainError,
    InvalidMessage,
    UnreadableHistory,
)
from orchestrator.domain.events import EVENT_TYPES, EncodedEvent, Event, UnknownEvent, decode, encode
from orchestrator.domain.interventions import INTERVENTION_CONDITIONS, INTERVENTION_TABLE
from orchestrator.domain.outcomes import classify_http_status
from orchestrator.domain.react import react, start_compensation_command, start_step_command
from orchestrator.domain.requests import action_body, canonical_bytes, idempotency_key, sha256_hex
from orchestrator.domain.state import (
    SagaState,
    StepState,
    evolve,
    fold,
    is_terminal,
    is_waiting_for_person,
    needs_compensation,
    phase,
    pivot_succeeded,
    start,
    timer_changes,
)
from orchestrator.domain.timers import Timer, TimerKind, timer_id
from orchestrator.domain.timing import RetryPolicy, Tuning, backoff_ms, jitter_fraction
from orchestrator.domain.versions import latest_version, semver_key
from orchestrator.domain.vocabulary import CallStatus, ManualCommand, OutcomeKind, Phase, SagaStatus

__all__ = [
    "EVENT_TYPES",
    "INTERVENTION_CONDITIONS",
    "INTERVENTION_TABLE",
    "BeginCompensation",
    "CallStatus",
    "Command",
    "CompleteSaga",
    "DeadLetter",
    "DefinitionError",
    "DomainConflict",
    "DomainError",
    "EncodedEvent",
    "Event",
    "FinishCompensation",
    "FireTimer",
    "Intervene",
    "InvalidMessage",
    "ManualCommand",
    "Message",
    "OutcomeKind",
    "Phase",
    "Plan",
    "RetryPolicy",
    "SagaDefinition",
    "SagaState",
    "SagaStatus",
    "StartCompensationStep",
    "StartStep",
    "StepOutcome",
    "StepSpec",
    "StepState",
    "Suspend",
    "Timer",
    "TimerKind",
    "Tuning",
    "UnknownEvent",
    "UnreadableHistory",
    "action_body",
    "advance",
    "apply",
    "backoff_ms",
    "begin",
    "canonical_bytes",
    "canonical_dict",
    "canonical_json",
    "classify_http_status",
    "decide",
    "decode",
    "definition_hash",
    "encode",
    "evolve",
    "fold",
    "idempotency_key",
    "is_terminal",
    "is_waiting_for_person",
    "jitter_fraction",
    "latest_version",
    "needs_compensation",
    "parse_definition",
    "phase",
    "pivot_succeeded",
    "react",
    "same_content",
    "semver_key",
    "sha256_hex",
    "start",
    "start_compensation_command",
    "start_step_command",
    "timer_changes",
    "timer_id",
]
