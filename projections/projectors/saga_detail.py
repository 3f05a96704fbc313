"""Saga detail: one hash per saga (``keys.saga_key``) holding what each event knows, field by field.

Nothing here needs the saga's current state: derived facts (a retry cancelled by compensation, a step
reset by a person, whether a paused saga is still blocked, durations) are left to the reader, which sees
the revisions at which each field was written (``…rev`` fields) and so folds them exactly as the domain
does. Terminal sagas expire at terminal event time + retention.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import assert_never

from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepAttemptFailed,
    CompensationStepFailed,
    CompensationStepStarted,
    CompensationStepSucceeded,
    ManualInterventionApplied,
    SagaAbortRequested,
    SagaCompensated,
    SagaCompleted,
    SagaDeadLettered,
    SagaStarted,
    SagaSuspended,
    StepAttemptFailed,
    StepFailed,
    StepStarted,
    StepSucceeded,
    TimerFired,
    UnknownEvent,
)
from orchestrator.domain.vocabulary import ManualCommand, Phase
from orchestrator.eventstore import RecordedEvent
from projections.projectors.keys import (
    call_field,
    decode_saga_event,
    dumps,
    intervention_field,
    iso,
    ms,
    saga_key,
)
from projections.updates import ExpireAt, HSet, Update

__all__ = ["ACTION", "COMPENSATION", "SagaDetailProjector"]

ACTION, COMPENSATION = "a", "c"
DEFAULT_RETENTION = timedelta(days=30)


def _error(error_class: str, detail: str) -> str:
    return f"{error_class}: {detail}" if detail else error_class


class SagaDetailProjector:
    def __init__(self, retention: timedelta = DEFAULT_RETENTION) -> None:
        self.retention = retention

    def project(self, event: RecordedEvent) -> Sequence[Update]:
        found = decode_saga_event(event)
        if found is None:
            return ()
        decoded, tenant, saga_id = found
        doc = saga_key(tenant, saga_id)
        at = event.recorded_at
        rev = str(event.revision)
        fields = {"revision": rev, "position": event.position.encode(), "updated_at": iso(at)}
        updates: list[Update] = []
        e = decoded.event
        match e:
            case SagaStarted():
                fields.update(
                    saga_id=saga_id,
                    tenant=tenant,
                    client_id=dumps(e.client_id),
                    definition_name=e.definition_name,
                    definition_version=e.definition_version,
                    definition_hash=e.definition_hash,
                    context=dumps(e.context),
                    def_steps=dumps(e.definition.get("steps", [])),
                    started_at=iso(at),
                    started_ms=repr(ms(at)),
                )
            case StepStarted() | CompensationStepStarted():
                p = ACTION if isinstance(e, StepStarted) else COMPENSATION
                fields.update(_call(p, e.step, rev, "running"))
                fields[call_field(p, e.step, "attempts")] = str(e.attempt)
                fields[call_field(p, e.step, "key")] = e.idempotency_key
                fields[call_field(p, e.step, "attempt_ms")] = repr(ms(at))
                if e.attempt == 1:
                    fields[call_field(p, e.step, "started_at")] = iso(at)
            case StepSucceeded():
                # Even a late success makes the step succeeded (and to be compensated), as in the fold.
                fields.update(_call(ACTION, e.step, rev, "succeeded"))
                fields[call_field(ACTION, e.step, "finished_at")] = iso(at)
                fields[call_field(ACTION, e.step, "output")] = dumps(e.output)
                fields[call_field(ACTION, e.step, "effective")] = "1"
                if not e.late:
                    fields[call_field(ACTION, e.step, "outcome_ms")] = repr(ms(at))
            case CompensationStepSucceeded():
                fields.update(_call(COMPENSATION, e.step, rev, "succeeded"))
                fields[call_field(COMPENSATION, e.step, "finished_at")] = iso(at)
                if not e.late:
                    fields[call_field(COMPENSATION, e.step, "outcome_ms")] = repr(ms(at))
            case StepAttemptFailed() | CompensationStepAttemptFailed():
                p = ACTION if isinstance(e, StepAttemptFailed) else COMPENSATION
                if isinstance(e, StepAttemptFailed) and e.outcome_unknown:
                    fields[call_field(p, e.step, "effective")] = "1"
                if not e.late:  # a late outcome is a recorded fact, not a change of the call
                    status = "retry_wait" if e.retry_in_ms is not None else "failed"
                    fields.update(_call(p, e.step, rev, status))
                    fields[call_field(p, e.step, "outcome_ms")] = repr(ms(at))
                    fields[call_field(p, e.step, "error")] = _error(e.error_class, e.detail)
            case StepFailed() | CompensationStepFailed():
                p = ACTION if isinstance(e, StepFailed) else COMPENSATION
                fields.update(_call(p, e.step, rev, "failed"))
                fields[call_field(p, e.step, "error")] = e.reason
                fields[call_field(p, e.step, "finished_at")] = iso(at)
                if isinstance(e, StepFailed) and e.outcome_unknown:
                    fields[call_field(p, e.step, "effective")] = "1"
            case CompensationStarted():
                fields.update(reason=e.reason, comp_rev=rev)
            case SagaCompleted() | SagaCompensated():
                fields.update(finished_at=iso(at), finished_ms=repr(ms(at)))
                updates.append(ExpireAt.after(doc, at, self.retention))
            case SagaDeadLettered():
                fields.update(reason=e.reason, pause_rev=rev)
            case SagaSuspended():
                fields.update(reason=e.reason, pause_rev=rev)
                if e.step is not None and e.phase is not None:
                    p = ACTION if e.phase is Phase.ACTION else COMPENSATION
                    fields.update(_call(p, e.step, rev, "blocked"))
            case ManualInterventionApplied():
                if e.command is not ManualCommand.RESOLVE:  # resolve only ends the saga (next event)
                    fields.update(reason=e.reason, mia_rev=rev)
                    # Which calls it resets (action or compensation) depends on the phase the saga was
                    # in, which the reader knows from `comp_rev`.
                    fields[intervention_field(event.revision)] = dumps([str(e.command), list(e.steps)])
            case SagaAbortRequested():
                fields.update(reason=e.reason, abort_rev=rev)
            case TimerFired() | UnknownEvent():
                pass
            case _:
                assert_never(e)
        return [HSet(doc, fields), *updates]


def _call(phase: str, step: str, rev: str, status: str) -> dict[str, str]:
    return {call_field(phase, step, "status"): status, call_field(phase, step, "rev"): rev}
