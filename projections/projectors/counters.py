"""Per-tenant counters (``keys.counters_key``): sagas started, rollbacks, terminal outcomes, failures by
reason class. Current counts of open statuses are not counters: the reader takes them from the phase and
DLQ indexes (a counter would need the status a saga leaves, which the pause events do not carry)."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.domain.events import (
    CompensationStarted,
    SagaCompensated,
    SagaCompleted,
    SagaDeadLettered,
    SagaStarted,
)
from orchestrator.eventstore import RecordedEvent
from projections.projectors.keys import counters_key, decode_saga_event, tenants_key
from projections.updates import HIncrBy, Update, ZAdd

__all__ = ["FAILURE_PREFIX", "CountersProjector", "failure_reason"]

FAILURE_PREFIX = "fail:"


def failure_reason(rollback_reason: str) -> str:
    """A small, bounded label (metrics) from a rollback's free-text reason (see ``react.rollback_reason``)."""
    text = rollback_reason.lower()
    if "abort" in text:
        return "aborted"
    if "deadline" in text and "saga" in text:
        return "saga_deadline"
    if "rejected" in text:
        return "business_rejection"
    if "gave up" in text or "not retried" in text or "deadline_passed" in text:
        return "retries_exhausted"
    return "other"


class CountersProjector:
    def project(self, event: RecordedEvent) -> Sequence[Update]:
        found = decode_saga_event(event)
        if found is None:
            return ()
        decoded, tenant, _ = found
        key, e = counters_key(tenant), decoded.event
        match e:
            case SagaStarted():
                # The tenant list lets the gauges find every tenant without a key scan.
                return [HIncrBy(key, "total", 1), ZAdd(tenants_key(), tenant, 0.0)]
            case CompensationStarted():
                # A failure is counted when its rollback starts, by cause; where it ends (compensated or
                # dead-lettered) is counted by the terminal / dead-letter events.
                return [
                    HIncrBy(key, "compensations", 1),
                    HIncrBy(key, FAILURE_PREFIX + failure_reason(e.reason), 1),
                ]
            case SagaCompleted():
                return [HIncrBy(key, "completed", 1)]
            case SagaCompensated():
                return [HIncrBy(key, "compensated", 1)]
            case SagaDeadLettered():
                return [HIncrBy(key, FAILURE_PREFIX + "dead_lettered", 1)]
            case _:
                return ()
