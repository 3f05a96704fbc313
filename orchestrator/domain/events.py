"""Saga events (design.md §3): frozen values, and their encoding to (type, schema, JSON-able data).

Events carry no wall clock: every deadline is a duration that ``evolve`` adds to the event's recorded time.
Events that arm timers carry the duration that arms them (``deadline_ms``, ``retry_in_ms``, ``kick_ms``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from pydantic import TypeAdapter, ValidationError

from orchestrator.domain.timers import TimerKind
from orchestrator.domain.vocabulary import ManualCommand, Phase

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SagaStarted:
    tenant: str
    saga_id: str
    client_id: str | None
    definition_name: str
    definition_version: str
    definition_hash: str
    definition: dict[str, Any]
    context: dict[str, Any]
    deadline_ms: int | None
    kick_ms: int


@dataclass(frozen=True)
class StepStarted:
    step: str
    attempt: int
    generation: int
    idempotency_key: str
    request_hash: str
    deadline_ms: int


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    attempt: int
    output: Any
    late: bool = False


@dataclass(frozen=True)
class StepAttemptFailed:
    step: str
    attempt: int
    error_class: str
    detail: str
    retryable: bool
    # The attempt may have taken effect (deadline passed, or our own code failed mid-call).
    outcome_unknown: bool
    retry_in_ms: int | None
    late: bool = False
    # The engine never sent it (its send window closed first): it does not use up the retry budget.
    withheld: bool = False


@dataclass(frozen=True)
class StepFailed:
    step: str
    reason: str
    outcome_unknown: bool


@dataclass(frozen=True)
class CompensationStarted:
    reason: str


@dataclass(frozen=True)
class CompensationStepStarted:
    step: str
    attempt: int
    generation: int
    idempotency_key: str
    action_idempotency_key: str
    request_hash: str
    deadline_ms: int
    # Every action key (one per generation) whose effect this compensation undoes; the newest is
    # ``action_idempotency_key``. Empty in histories written before generations were tracked.
    action_idempotency_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompensationStepSucceeded:
    step: str
    attempt: int
    late: bool = False


@dataclass(frozen=True)
class CompensationStepAttemptFailed:
    step: str
    attempt: int
    error_class: str
    detail: str
    retryable: bool
    outcome_unknown: bool
    retry_in_ms: int | None
    late: bool = False
    withheld: bool = False


@dataclass(frozen=True)
class CompensationStepFailed:
    step: str
    reason: str
    cannot_compensate: bool


@dataclass(frozen=True)
class TimerFired:
    timer_id: str
    kind: TimerKind
    step: str
    attempt: int
    kick_ms: int | None = None


@dataclass(frozen=True)
class SagaCompleted:
    pass


@dataclass(frozen=True)
class SagaCompensated:
    pass


@dataclass(frozen=True)
class SagaDeadLettered:
    reason: str
    step: str | None


@dataclass(frozen=True)
class SagaSuspended:
    reason: str
    error_class: str
    step: str | None
    phase: Phase | None


@dataclass(frozen=True)
class ManualInterventionApplied:
    command: ManualCommand
    actor: str
    reason: str
    idempotency_key: str
    requested_step: str | None
    # The steps the command acted on, resolved when it was decided, so the fold never re-derives them.
    steps: tuple[str, ...]
    kick_ms: int | None


@dataclass(frozen=True)
class SagaAbortRequested:
    actor: str
    reason: str
    idempotency_key: str
    # A person aborting a dead-lettered saga whose pivot outcome is unknown asserts the pivot had no effect.
    waive_pivot: bool
    kick_ms: int | None


@dataclass(frozen=True)
class UnknownEvent:
    """A type or schema version this code cannot read; folding it raises ``UnreadableHistory``."""

    type: str
    schema: int
    data: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


Event: TypeAlias = (
    SagaStarted
    | StepStarted
    | StepSucceeded
    | StepAttemptFailed
    | StepFailed
    | CompensationStarted
    | CompensationStepStarted
    | CompensationStepSucceeded
    | CompensationStepAttemptFailed
    | CompensationStepFailed
    | TimerFired
    | SagaCompleted
    | SagaCompensated
    | SagaDeadLettered
    | SagaSuspended
    | ManualInterventionApplied
    | SagaAbortRequested
    | UnknownEvent
)

_KNOWN: tuple[type[Any], ...] = (
    SagaStarted,
    StepStarted,
    StepSucceeded,
    StepAttemptFailed,
    StepFailed,
    CompensationStarted,
    CompensationStepStarted,
    CompensationStepSucceeded,
    CompensationStepAttemptFailed,
    CompensationStepFailed,
    TimerFired,
    SagaCompleted,
    SagaCompensated,
    SagaDeadLettered,
    SagaSuspended,
    ManualInterventionApplied,
    SagaAbortRequested,
)
# type name -> (schema versions this code reads, adapter)
_ADAPTERS: dict[str, tuple[frozenset[int], TypeAdapter[Any]]] = {
    cls.__name__: (frozenset({SCHEMA_VERSION}), TypeAdapter(cls)) for cls in _KNOWN
}
EVENT_TYPES: frozenset[str] = frozenset(_ADAPTERS)


@dataclass(frozen=True)
class EncodedEvent:
    type: str
    schema: int
    data: dict[str, Any]


def encode(event: Event) -> EncodedEvent:
    """To the store's shape; the engine serialises ``data`` as JSON and puts ``schema`` in the metadata."""
    if isinstance(event, UnknownEvent):
        # Pass-through: a node never rewrites what it could not read.
        return EncodedEvent(event.type, event.schema, event.data)
    name = type(event).__name__
    data: dict[str, Any] = _ADAPTERS[name][1].dump_python(event, mode="json")
    return EncodedEvent(name, SCHEMA_VERSION, data)


def encode_json(event: Event) -> tuple[str, int, bytes]:
    """``encode`` straight to JSON bytes (the store's form), serialised by pydantic-core."""
    if isinstance(event, UnknownEvent):
        return event.type, event.schema, json.dumps(event.data, separators=(",", ":")).encode()
    name = type(event).__name__
    return name, SCHEMA_VERSION, _ADAPTERS[name][1].dump_json(event)


def decode(type_name: str, data: Any, schema: int) -> Event:
    """Never raises: anything unreadable becomes an ``UnknownEvent`` naming why."""
    entry = _ADAPTERS.get(type_name)
    raw = data if isinstance(data, dict) else {"value": data}
    if entry is None:
        return UnknownEvent(type_name, schema, raw, "unknown event type")
    versions, adapter = entry
    if schema not in versions:
        return UnknownEvent(type_name, schema, raw, f"unknown schema version {schema}")
    try:
        event: Event = adapter.validate_python(data)
    except ValidationError as e:
        return UnknownEvent(type_name, schema, raw, f"malformed data: {e.error_count()} error(s)")
    return event
