"""The default HTTP status table of design.md §4 "Outcomes" (a service may override it in the engine)."""

from __future__ import annotations

from orchestrator.domain.vocabulary import OutcomeKind, Phase

# 409 means "the same key is still in flight" for a participant that honours the contract.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
CONTRACT_ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 406, 413, 415})
# Answers after which the request may have been carried out although no success was read: 409 (the same key
# is still in flight), and 502 / 504 (a gateway answered; it cannot know what the service behind it did).
_MAYBE_DONE_STATUSES = frozenset({409, 502, 504})


def may_have_taken_effect(status: int) -> bool:
    """True when, after this answer to an action, its effect may exist (so a rollback must undo it).

    Every 2xx counts, whether or not its body could be read; a 503, 429 or 4xx rejection says the
    participant did not do it.
    """
    return 200 <= status < 300 or status in _MAYBE_DONE_STATUSES


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
