"""Saga lists per tenant: by time, by definition (scored by start time) and by phase.

The phase of a saga moves with ``IndexMove`` on the detail's ``phase`` field (read-modify-write in the
script): open phases are scored by start time (kept through the move), terminal ones by finish time.
Pauses do not move a saga out of its phase index (see :mod:`projections.projectors.dlq`); the reader
filters paused sagas out of the running/compensating lists.

Retention: lists scored by start time are trimmed, on each start, of sagas started more than the retention
ago; terminal lists, on each terminal event, of sagas that finished more than the retention ago, which is
when their details expire. So the time and definition lists are a window of the last ``retention``; an
open saga older than that is still in its phase list and, when paused, in the DLQ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

from orchestrator.domain.events import CompensationStarted, SagaCompensated, SagaCompleted, SagaStarted
from orchestrator.eventstore import RecordedEvent
from projections.projectors.keys import (
    PHASES,
    all_index,
    decode_saga_event,
    definition_index,
    ms,
    phase_index,
    saga_key,
)
from projections.projectors.saga_detail import DEFAULT_RETENTION
from projections.updates import IndexMove, Update, ZAdd, ZRemRangeByScore

__all__ = ["SagaListsProjector"]


def phase_indexes(tenant: str) -> Mapping[str, tuple[str, ...]]:
    return {phase: (phase_index(tenant, phase),) for phase in PHASES}


class SagaListsProjector:
    def __init__(self, retention: timedelta = DEFAULT_RETENTION) -> None:
        self.retention_ms = retention.total_seconds() * 1000.0

    def project(self, event: RecordedEvent) -> Sequence[Update]:
        found = decode_saga_event(event)
        if found is None:
            return ()
        decoded, tenant, saga_id = found
        e, at, doc = decoded.event, ms(event.recorded_at), saga_key(tenant, saga_id)
        floor = at - self.retention_ms
        match e:
            case SagaStarted():
                by_definition = definition_index(tenant, e.definition_name)
                return [
                    ZAdd(all_index(tenant), saga_id, at),
                    ZAdd(by_definition, saga_id, at),
                    IndexMove(doc, "phase", saga_id, "running", phase_indexes(tenant), score=at),
                    ZRemRangeByScore(all_index(tenant), float("-inf"), floor),
                    ZRemRangeByScore(by_definition, float("-inf"), floor),
                ]
            case CompensationStarted():
                return [IndexMove(doc, "phase", saga_id, "compensating", phase_indexes(tenant))]
            case SagaCompleted() | SagaCompensated():
                phase = "completed" if isinstance(e, SagaCompleted) else "compensated"
                return [
                    IndexMove(doc, "phase", saga_id, phase, phase_indexes(tenant), score=at),
                    ZRemRangeByScore(phase_index(tenant, phase), float("-inf"), floor),
                ]
            case _:
                return ()
