"""The default HTTP status table of design.md §4 "Outcomes" (a service may override it in the engine)."""

from __future__ import annotations

from orchestrator.domain.vocabulary import OutcomeKind, Phase

# 409 means "the same key is still in flight" for a participant that honours the contract.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
CONTRACT_ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 406, 413, 415})


def classify_http_status(status: int, phase: Phase) -> OutcomeKind:
    if 200 <= status < 300:
        return OutcomeKind.SUCCEEDED
    if phase is Phase.COMPENSATION and status in (404, 410):
        # Nothing to undo: the action never arrived, or its effect is already gone.
        return OutcomeKind.SUCCEEDED
    if status in TRANSIENT_STATUSES or 500 <= status < 600:
        return OutcomeKind.TRANSIENT
    if 300 <= status < 400 or status in CONTRACT_ERROR_STATUSES:
        return OutcomeKind.MISCONFIGURED
    if 400 <= status < 500:
        # Business rejection for an action; "cannot compensate" for a compensation.
        return OutcomeKind.REJECTED
    return OutcomeKind.MISCONFIGURED
