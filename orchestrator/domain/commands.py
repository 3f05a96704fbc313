"""Messages into the decider: what ``react`` says is due (imperative), outcomes, timers and people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from orchestrator.domain.vocabulary import ManualCommand, OutcomeKind, Phase

# --- what react() says is due ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FireTimer:
    timer_id: str


@dataclass(frozen=True)
class StartStep:
    """Call ``POST {service}/{action}`` with exactly ``body`` once its ``StepStarted`` is durable."""

    step: str
    attempt: int
    generation: int
    idempotency_key: str
    service: str
    action: str
    body: bytes
    request_hash: str
    timeout_ms: int
    # The attempt's durable deadline (timeout + slack), relative to the StepStarted's recorded time.
    deadline_ms: int


@dataclass(frozen=True)
class StartCompensationStep:
    step: str
    attempt: int
    generation: int
    idempotency_key: str
    action_idempotency_key: str
    #: every action key (one per generation) under which an effect may exist, oldest first
    action_idempotency_keys: tuple[str, ...]
    service: str
    action: str
    body: bytes
    request_hash: str
    timeout_ms: int
    deadline_ms: int


@dataclass(frozen=True)
class CompleteSaga:
    pass


@dataclass(frozen=True)
class BeginCompensation:
    reason: str


@dataclass(frozen=True)
class FinishCompensation:
    pass


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    step: str | None


Command: TypeAlias = (
    FireTimer
    | StartStep
    | StartCompensationStep
    | CompleteSaga
    | BeginCompensation
    | FinishCompensation
    | DeadLetter
)

# --- what the world tells the decider --------------------------------------------------------------------


@dataclass(frozen=True)
class StepOutcome:
    """The executor's classified result of one attempt (see ``classify_http_status``)."""

    step: str
    attempt: int
    phase: Phase
    kind: OutcomeKind
    output: Any = None
    error_class: str = ""
    detail: str = ""
    retry_after_ms: int | None = None
    # The request may have been applied (read timeout or reset after sending): compensate it on rollback.
    outcome_unknown: bool = False
    # The engine never sent the request (its send window closed first): not counted against the retries.
    withheld: bool = False


@dataclass(frozen=True)
class Intervene:
    """A person's command through the API; ``idempotency_key`` is the request's Idempotency-Key."""

    command: ManualCommand
    actor: str
    reason: str
    idempotency_key: str
    step: str | None = None


@dataclass(frozen=True)
class Suspend:
    """Our own code failed for this saga outside a call (a bug): stop and wait for a person."""

    reason: str
    error_class: str
    step: str | None = None
    phase: Phase | None = None


Message: TypeAlias = Command | StepOutcome | Intervene | Suspend
