"""The small enums every other domain module shares: statuses, phases, outcome kinds, manual commands."""

from __future__ import annotations

from enum import StrEnum


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    DEAD_LETTERED = "dead_lettered"
    SUSPENDED = "suspended"


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED})
# Waiting for a person: the only non-terminal statuses allowed to have no pending timer.
PAUSED_STATUSES = frozenset({SagaStatus.DEAD_LETTERED, SagaStatus.SUSPENDED})


class Phase(StrEnum):
    ACTION = "action"
    COMPENSATION = "compensation"


class CallStatus(StrEnum):
    """Where one call (a step's action, or its compensation) stands."""

    IDLE = "idle"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Stopped by a contract/configuration error or our own exception; the saga is suspended.
    BLOCKED = "blocked"
    SKIPPED = "skipped"


class OutcomeKind(StrEnum):
    """How the executor classified a call's result (design.md §4 "Outcomes")."""

    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    TRANSIENT = "transient"
    MISCONFIGURED = "misconfigured"
    CRASHED = "crashed"


class ManualCommand(StrEnum):
    RETRY = "retry"
    SKIP = "skip"
    RESOLVE = "resolve"
    RESUME = "resume"
    ABORT = "abort"
