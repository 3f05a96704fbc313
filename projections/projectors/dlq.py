"""The DLQ: sagas waiting for a person (dead-lettered or suspended), scored by the time they stopped.

Membership follows the detail's ``pause`` field with ``IndexMove``. A saga leaves when it moves on: a
person's skip / resume that names no step (it then always continues: its default targets are every blocked
call, see ``orchestrator.domain.interventions``), or the first event that only a continuing saga writes (a
step or compensation starting, the rollback starting, an abort, the end). A command that names one step may
leave another step blocked, and so may a retry that names none (a step that may have taken effect under its
current key is retried only when named); only the fold can tell, so such a saga stays listed until it
writes one of those events (the engine's kick makes that immediate when it goes on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepStarted,
    ManualInterventionApplied,
    SagaAbortRequested,
    SagaCompensated,
    SagaCompleted,
    SagaDeadLettered,
    SagaSuspended,
    StepStarted,
)
from orchestrator.domain.vocabulary import ManualCommand
from orchestrator.eventstore import RecordedEvent
from projections.projectors.keys import PAUSES, decode_saga_event, dlq_index, ms, pause_index, saga_key
from projections.updates import IndexMove, Update

__all__ = ["DlqProjector"]

_MOVES_ON = (
    StepStarted,
    CompensationStarted,
    CompensationStepStarted,
    SagaAbortRequested,
    SagaCompleted,
    SagaCompensated,
)

# The commands that, naming no step, leave no call of the saga's phase blocked. Not RESOLVE (the terminal
# event that follows moves the saga on), nor RETRY (it holds back a blocked step that may have taken effect).
_ALWAYS_CONTINUES = (ManualCommand.SKIP, ManualCommand.RESUME)


def pause_indexes(tenant: str) -> Mapping[str, tuple[str, ...]]:
    return {pause: (pause_index(tenant, pause), dlq_index(tenant)) for pause in PAUSES}


class DlqProjector:
    def project(self, event: RecordedEvent) -> Sequence[Update]:
        found = decode_saga_event(event)
        if found is None:
            return ()
        decoded, tenant, saga_id = found
        e, doc = decoded.event, saga_key(tenant, saga_id)
        if isinstance(e, SagaDeadLettered | SagaSuspended):
            pause = "dead_lettered" if isinstance(e, SagaDeadLettered) else "suspended"
            at = ms(event.recorded_at)
            return [IndexMove(doc, "pause", saga_id, pause, pause_indexes(tenant), score=at)]
        continues = isinstance(e, _MOVES_ON) or (
            isinstance(e, ManualInterventionApplied)
            and e.command in _ALWAYS_CONTINUES
            and e.requested_step is None
        )
        if continues:
            return [IndexMove(doc, "pause", saga_id, "", pause_indexes(tenant))]
        return ()
