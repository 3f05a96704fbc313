"""Durable timers: kinds, deterministic ids, and the pending-timer value the state keeps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class TimerKind(StrEnum):
    KICK = "kick"
    SAGA_DEADLINE = "saga_deadline"
    ATTEMPT_DEADLINE = "attempt_deadline"
    RETRY = "retry"
    COMPENSATION_DEADLINE = "compensation_deadline"
    COMPENSATION_RETRY = "compensation_retry"


def timer_id(saga_id: str, kind: TimerKind, step: str, attempt: int) -> str:
    """Deterministic, so every firer names the same timer the same way (design.md §0.6).

    Step names cannot contain '/', so the id is unambiguous. A kick's ``attempt`` is the revision that
    armed it; saga-level timers use an empty step.
    """
    return f"{saga_id}/{kind.value}/{step}/{attempt}"


@dataclass(frozen=True, slots=True)
class Timer:
    id: str
    kind: TimerKind
    step: str
    attempt: int
    due_at: datetime
