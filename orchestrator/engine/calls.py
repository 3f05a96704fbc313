"""What a step call is and what came back: the executor-facing values and the outcome table.

The outcome table (design.md §4), per phase:

| answer                                                 | action phase           | compensation phase  |
|--------------------------------------------------------|------------------------|---------------------|
| 2xx                                                    | success (body = output) | done               |
| 404, 410                                               | contract error          | done (nothing to undo) |
| 422, 402, any other 4xx not listed                     | business rejection      | cannot compensate   |
| 408, 425, 429, 5xx, 409 (duplicate in flight), timeout, connection error | transient | transient       |
| 400, 401, 403, 405, 406, 413, 415, 3xx                 | contract error          | contract error      |

A service may override single statuses (``outcomes`` in its registry entry).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Phase(enum.Enum):
    ACTION = "action"
    COMPENSATION = "compensation"


class OutcomeKind(enum.Enum):
    #: 2xx (or, compensating, "nothing to undo")
    SUCCESS = "success"
    #: the participant said no for business reasons: compensate (or, compensating, dead-letter)
    REJECTION = "rejection"
    #: try again later: retry with backoff until the policy gives up
    TRANSIENT = "transient"
    #: a contract or configuration error: suspend the saga, compensate nothing
    CONTRACT = "contract"


_TRANSIENT = frozenset({408, 409, 425, 429})
_CONTRACT = frozenset({400, 401, 403, 404, 405, 406, 413, 415})


def classify(status: int, phase: Phase, overrides: Mapping[str, str] | None = None) -> OutcomeKind:
    if overrides and str(status) in overrides:
        return OutcomeKind(overrides[str(status)])
    if 200 <= status < 300:
        return OutcomeKind.SUCCESS
    if phase is Phase.COMPENSATION and status in (404, 410):
        return OutcomeKind.SUCCESS
    if status in _TRANSIENT or status >= 500:
        return OutcomeKind.TRANSIENT
    if status in _CONTRACT or 300 <= status < 400 or status < 200:
        return OutcomeKind.CONTRACT
    return OutcomeKind.REJECTION


@dataclass(frozen=True, slots=True)
class StepCall:
    """One attempt of one step (or compensation) call. ``body`` is byte-identical for every attempt."""

    tenant: str
    saga_id: str
    step: str
    service: str
    action: str
    phase: Phase
    attempt: int
    idempotency_key: str
    body: bytes
    #: the service timeout of this step, in seconds
    timeout: float
    #: monotonic-clock instant after which nothing may be sent for this attempt
    send_deadline: float
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class CallResult:
    kind: OutcomeKind
    #: HTTP status, or None when no answer came (timeout, connection error, not sent)
    status: int | None
    #: parsed JSON output of a success (None for an empty body)
    output: Any = None
    #: short machine-readable class: "http_503", "timeout", "connection", "not_sent", "bad_output", …
    error: str | None = None
    detail: str | None = None
    #: seconds the participant asked us to wait (Retry-After), already capped
    retry_after: float | None = None
    #: True when no byte of the request can have reached the participant
    not_sent: bool = False
