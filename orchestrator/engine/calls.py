"""What a step call is and what came back. The outcome table (design.md §4) lives in the domain
(``orchestrator.domain.outcomes``); per phase it is:

| answer                                             | action phase              | compensation phase |
|----------------------------------------------------|---------------------------|--------------------|
| 2xx                                                | succeeded (body = output) | done               |
| 404                                                | misconfigured             | done (no effect)   |
| 410                                                | rejected                  | done (no effect)   |
| 422, 402, any other 4xx not listed                 | rejected                  | cannot compensate  |
| 408, 409, 425, 429, 5xx, timeout, connection error | transient                 | transient          |
| 400, 401, 403, 405, 406, 413, 415, 3xx             | misconfigured (suspend)   | misconfigured      |

A service may override single statuses (``outcomes`` in its registry entry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.outcomes import classify_http_status
from orchestrator.domain.vocabulary import OutcomeKind, Phase

__all__ = ["CallResult", "OutcomeKind", "Phase", "StepCall", "classify"]


def classify(status: int, phase: Phase, overrides: Mapping[str, str] | None = None) -> OutcomeKind:
    """The domain's default table, with a service's per-status overrides on top."""
    if overrides and str(status) in overrides:
        return OutcomeKind(overrides[str(status)])
    return classify_http_status(status, phase)


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
    #: not sent because of the engine itself (the attempt's send window closed, or no pooled connection
    #: came in time), not because the participant was unreachable: the attempt does not use up a retry
    withheld: bool = False
    #: True when the participant may have carried the request out although no success was read (a
    #: timeout or reset after sending, a 2xx whose body is unusable, a gateway's 502/504): the step must
    #: then be compensated on rollback
    maybe_effective: bool = False
