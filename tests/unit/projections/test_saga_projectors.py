"""The saga projectors are pure: given one recorded event, these updates (no Redis)."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.domain.events import (
    CompensationStarted,
    Event,
    ManualInterventionApplied,
    SagaCompleted,
    SagaDeadLettered,
    SagaStarted,
    StepAttemptFailed,
    StepStarted,
)
from orchestrator.domain.vocabulary import ManualCommand
from orchestrator.eventstore import NO_STREAM, Position, RecordedEvent
from orchestrator.records.codec import Envelope, to_new_events
from projections.projectors import saga_projectors
from projections.projectors.assemble import assemble_saga
from projections.projectors.counters import CountersProjector, failure_reason
from projections.projectors.definitions import DefinitionCatalogueProjector
from projections.projectors.dlq import DlqProjector
from projections.projectors.saga_detail import SagaDetailProjector
from projections.projectors.saga_lists import SagaListsProjector
from projections.queries import decode_cursor, encode_cursor
from projections.updates import ExpireAt, HIncrBy, HSet, IndexMove, ZAdd, ZRemRangeByScore

T0 = datetime(2025, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
SAGA = "0b7f3c1e-0000-4000-8000-000000000001"
DEF_STEPS = [
    {"name": "a", "service": "s", "action": "do-a", "compensation": "undo-a", "kind": "compensatable"},
    {"name": "b", "service": "s", "action": "do-b", "compensation": "undo-b", "kind": "compensatable"},
]


def recorded(event: Event, revision: int, *, seconds: float = 0, tenant: str = "acme") -> RecordedEvent:
    stream = f"saga-{SAGA}"
    envelope = Envelope(tenant=tenant, actor="test", correlation_id=SAGA, causation_id="c")
    new = to_new_events(stream, NO_STREAM if revision == 0 else revision - 1, [event], envelope)[0]
    return RecordedEvent(
        new.id,
        new.type,
        new.data,
        new.metadata,
        stream,
        revision,
        Position(100 + revision),
        T0 + timedelta(seconds=seconds),
    )


def started() -> SagaStarted:
    definition = {"name": "order", "version": "1.0.0", "steps": DEF_STEPS}
    return SagaStarted("acme", SAGA, "c-1", "order", "1.0.0", "h", definition, {"x": 1}, None, 500)


def apply(hashes: dict[str, dict[str, str]], updates: Any) -> None:
    """A tiny stand-in for the script, for HSet only: enough to feed the pure assembler."""
    for u in updates:
        if isinstance(u, HSet):
            hashes.setdefault(u.key, {}).update(u.fields)
        elif isinstance(u, IndexMove):
            hashes.setdefault(u.doc, {})[u.field] = u.to
            if not u.to:
                del hashes[u.doc][u.field]


def test_the_detail_writes_only_what_each_event_knows() -> None:
    p = SagaDetailProjector()
    [doc] = p.project(recorded(started(), 0))
    assert isinstance(doc, HSet)
    assert doc.key == f"acme:saga:{SAGA}"
    assert doc.fields["started_ms"] == repr(T0.timestamp() * 1000)
    assert json.loads(doc.fields["def_steps"]) == DEF_STEPS
    assert (doc.fields["revision"], doc.fields["position"]) == ("0", Position(100).encode())

    [step] = p.project(recorded(StepStarted("a", 1, 0, "key-a", "rh", 1000), 1, seconds=1))
    assert isinstance(step, HSet)
    assert step.fields["a.a.status"] == "running"
    assert step.fields["a.a.rev"] == "1"
    assert step.fields["a.a.key"] == "key-a"
    assert "a.a.started_at" in step.fields

    late = StepAttemptFailed("a", 1, "http_503", "", True, False, None, late=True)
    [only] = p.project(recorded(late, 2))
    assert isinstance(only, HSet)
    assert "a.a.status" not in only.fields


def test_a_terminal_saga_expires_at_event_time_plus_retention() -> None:
    updates = SagaDetailProjector(timedelta(days=2)).project(recorded(SagaCompleted(), 9, seconds=60))
    expiry = [u for u in updates if isinstance(u, ExpireAt)]
    assert expiry == [
        ExpireAt(f"acme:saga:{SAGA}", math.ceil((T0 + timedelta(days=2, seconds=60)).timestamp()))
    ]


def test_lists_move_the_phase_inside_the_script_and_trim_by_score() -> None:
    p = SagaListsProjector(timedelta(days=1))
    start = p.project(recorded(started(), 0))
    at = T0.timestamp() * 1000
    assert ZAdd("acme:idx:all", SAGA, at) in start
    assert ZAdd("acme:idx:def:order", SAGA, at) in start
    move = next(u for u in start if isinstance(u, IndexMove))
    assert (move.field, move.to, move.score) == ("phase", "running", at)
    assert ZRemRangeByScore("acme:idx:all", float("-inf"), at - 86_400_000) in start

    [rollback] = p.project(recorded(CompensationStarted("step 'b' failed: rejected: http_422"), 5))
    assert isinstance(rollback, IndexMove)
    assert rollback.to == "compensating"
    assert rollback.score is None

    done = p.project(recorded(SagaCompleted(), 9, seconds=10))
    assert any(isinstance(u, IndexMove) and u.to == "completed" and u.score == at + 10_000 for u in done)
    assert ZRemRangeByScore("acme:idx:phase:completed", float("-inf"), at + 10_000 - 86_400_000) in done


def test_the_dlq_follows_pauses_and_lets_go_when_the_saga_moves_on() -> None:
    p = DlqProjector()
    [enter] = p.project(recorded(SagaDeadLettered("cannot compensate", "a"), 7, seconds=3))
    assert isinstance(enter, IndexMove)
    assert enter.to == "dead_lettered"
    assert enter.indexes["dead_lettered"] == ("acme:idx:pause:dead_lettered", "acme:idx:dlq")

    def mia(step: str | None, command: ManualCommand = ManualCommand.RESUME) -> ManualInterventionApplied:
        return ManualInterventionApplied(command, "ops", "why", "k", step, ("a",), 500)

    for command in (ManualCommand.RESUME, ManualCommand.SKIP):
        [leave] = p.project(recorded(mia(None, command), 8))
        assert isinstance(leave, IndexMove)
        assert leave.to == ""
    # Naming one step may leave another blocked, and so may a retry that names none (it holds back a step
    # that may have taken effect under its current key): the saga leaves when it actually moves on.
    assert p.project(recorded(mia("a"), 8)) == ()
    assert p.project(recorded(mia(None, ManualCommand.RETRY), 8)) == ()
    [moves_on] = p.project(recorded(StepStarted("a", 2, 1, "k2", "rh", 1000), 9))
    assert isinstance(moves_on, IndexMove)
    assert moves_on.to == ""


def test_counters_and_failure_reasons() -> None:
    p = CountersProjector()
    assert HIncrBy("acme:counters", "total", 1) in p.project(recorded(started(), 0))
    rollback = p.project(recorded(CompensationStarted("step 'b' failed: rejected: http_422"), 5))
    assert HIncrBy("acme:counters", "fail:business_rejection", 1) in rollback
    assert failure_reason("abort requested") == "aborted"
    assert failure_reason("saga deadline passed") == "saga_deadline"
    assert failure_reason("step 'b' failed: gave up after 3 attempt(s): http_503") == "retries_exhausted"
    assert failure_reason("something new") == "other"


def test_the_catalogue_reads_definition_registrations() -> None:
    data = {"tenant": "acme", "name": "order", "version": "1.2.0", "hash": "h", "definition": {}}
    event = RecordedEvent(
        uuid.uuid4(),
        "SagaDefinitionRegistered",
        json.dumps(data).encode(),
        b"{}",
        "sagadef-x",
        0,
        Position(1),
        T0,
    )
    hset, zadd = DefinitionCatalogueProjector().project(event)
    assert hset == HSet(
        "acme:def:order",
        {"1.2.0": json.dumps({"hash": "h", "registered_at": T0.isoformat()}, separators=(",", ":"))},
    )
    assert zadd == ZAdd("acme:defs", "order", T0.timestamp() * 1000)


def test_other_streams_and_events_without_a_tenant_are_ignored() -> None:
    foreign = RecordedEvent(uuid.uuid4(), "Opened", b"{}", b"{}", "account-1", 0, Position(1), T0)
    no_tenant = RecordedEvent(uuid.uuid4(), "SagaCompleted", b"{}", b"{}", f"saga-{SAGA}", 3, Position(2), T0)
    for projector in saga_projectors():
        assert projector.project(foreign) == ()
        assert projector.project(no_tenant) == ()


def test_the_reader_folds_manual_resets_and_cancelled_retries() -> None:
    hashes: dict[str, dict[str, str]] = {}
    events: list[Event] = [
        started(),
        StepStarted("a", 1, 0, "ka", "rh", 1000),
        StepAttemptFailed("a", 1, "http_503", "busy", True, False, 200),  # waiting for a retry...
        CompensationStarted("abort requested"),  # ...cancelled by the rollback
    ]
    for n, e in enumerate(events):
        for projector in saga_projectors():
            apply(hashes, projector.project(recorded(e, n, seconds=n)))
    view = assemble_saga(hashes[f"acme:saga:{SAGA}"])
    assert view is not None
    assert view.status == "compensating"
    assert view.steps[0].action_call.status == "failed"
    assert view.steps[0].action_call.last_error == "cancelled by compensation"
    assert view.steps[0].action_call.last_duration_ms == pytest.approx(1000)

    more: list[Event] = [
        SagaDeadLettered("stuck", None),
        ManualInterventionApplied(ManualCommand.RESUME, "ops", "go on", "k", "b", ("b",), 500),
    ]
    for n, e in enumerate(more, start=len(events)):
        for projector in saga_projectors():
            apply(hashes, projector.project(recorded(e, n, seconds=n)))
    view = assemble_saga(hashes[f"acme:saga:{SAGA}"])
    assert view is not None
    # Nothing is blocked, so the person's resume let it go on at once (the DLQ follows at its next step).
    assert view.status == "compensating"
    assert view.reason == "go on"
    assert view.steps[1].compensation_call.status == "idle"


def test_cursors_round_trip_and_malformed_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor(1735787045678.123, SAGA)) == (1735787045678.123, SAGA)
    for bad in ("", "!!!", encode_cursor(1.0, "x")[:-3], "WzEsMiwzXQ", "WyJhIiwiYiJd"):
        with pytest.raises(ValueError, match="cursor"):
            decode_cursor(bad)


def test_the_reader_keeps_each_phases_manual_commands_and_reads_the_older_per_step_field() -> None:
    hashes: dict[str, dict[str, str]] = {}
    events: list[Event] = [
        started(),
        StepStarted("a", 1, 0, "ka", "rh", 1000),
        SagaDeadLettered("stuck", "a"),
        ManualInterventionApplied(ManualCommand.SKIP, "ops", "why", "k1", None, ("a",), 500),
        CompensationStarted("step 'b' failed: rejected: http_422"),
        SagaDeadLettered("cannot compensate", "a"),
        ManualInterventionApplied(ManualCommand.RETRY, "ops", "why", "k2", None, ("a",), 500),
    ]
    for n, e in enumerate(events):
        for projector in saga_projectors():
            apply(hashes, projector.project(recorded(e, n, seconds=n)))
    doc = hashes[f"acme:saga:{SAGA}"]
    assert json.loads(doc["intervention.3"]) == ["skip", ["a"]]
    view = assemble_saga(doc)
    assert view is not None
    # The rollback's retry resets the compensation and leaves the forward skip of the action in place.
    assert (view.steps[0].action_call.status, view.steps[0].compensation_call.status) == ("skipped", "idle")

    # A hash projected before one field per command holds each step's latest command as `m.{step}`.
    legacy = {k: v for k, v in doc.items() if not k.startswith("intervention.")}
    legacy["m.a"] = json.dumps([6, "retry"])
    view = assemble_saga(legacy)
    assert view is not None
    assert view.steps[0].compensation_call.status == "idle"
