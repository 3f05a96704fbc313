"""Old streams stay readable: every recorded golden history (tests/golden/histories, one file per scenario
and release, never rewritten) folds, replays, verifies and projects to the status it ended in; the ids and
request hashes it carries are still what this code computes; and the newest release's files are what this
code writes, byte for byte."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from orchestrator.cli.replay import replay, verify
from orchestrator.domain import OutcomeKind, Phase, StepOutcome, advance
from orchestrator.domain.commands import StartCompensationStep
from orchestrator.domain.events import SagaStarted, encode_json
from orchestrator.domain.requests import action_body, sha256_hex
from orchestrator.domain.state import fold
from orchestrator.eventstore import NO_STREAM, Position, RecordedEvent
from orchestrator.eventstore.ids import event_id
from orchestrator.records.codec import from_recorded
from projections.projectors import saga_projectors
from projections.projectors.assemble import assemble_saga
from tests.golden.record import SCENARIOS, encode_history
from tests.unit.projections.test_saga_projectors import apply as apply_updates

HISTORIES = Path(__file__).with_name("histories")
FILES = sorted(HISTORIES.glob("*.json"))
NEWEST = max(f.name.split("-", 1)[0] for f in FILES)


def load(path: Path) -> tuple[dict[str, Any], list[RecordedEvent]]:
    body = json.loads(path.read_text())
    events = [
        RecordedEvent(
            UUID(e["id"]),
            e["type"],
            e["data"].encode(),
            e["metadata"].encode(),
            body["stream"],
            e["revision"],
            Position(1_000 + e["revision"]),
            datetime.fromisoformat(e["recorded_at"]),
        )
        for e in body["events"]
    ]
    return body, events


def test_every_scenario_has_a_file_of_the_newest_release() -> None:
    assert {f.name for f in FILES if f.name.startswith(f"{NEWEST}-")} == {
        f"{NEWEST}-{name}.json" for name in SCENARIOS
    }


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_an_old_stream_folds_replays_and_verifies(path: Path) -> None:
    body, events = load(path)
    result = replay(events)
    assert result.problems == []
    assert result.final is not None
    assert result.final.status.value == body["status"]
    assert verify(events, result) == []
    assert fold((d.event, d.recorded_at) for d in map(from_recorded, events)).status.value == body["status"]


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_an_old_stream_projects_to_its_status(path: Path) -> None:
    body, events = load(path)
    hashes: dict[str, dict[str, str]] = {}
    for event in events:
        for projector in saga_projectors():
            apply_updates(hashes, projector.project(event))
    started = from_recorded(events[0]).event
    assert isinstance(started, SagaStarted)
    doc = hashes[f"{started.tenant}:saga:{started.saga_id}"]
    view = assemble_saga(doc)
    assert view is not None
    assert view.status == body["status"]


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_ids_and_request_hashes_are_still_what_this_code_computes(path: Path) -> None:
    """Invariant 5 (same id, same bytes) and the byte-identical request of §0.9 hold for old streams: a
    change to the id scheme or to the canonical JSON of requests and definitions fails here."""
    body, events = load(path)
    for e in events:
        expected = NO_STREAM if e.revision == 0 else e.revision - 1
        assert e.id == event_id(body["stream"], expected, 0, e.type, e.data, e.metadata)
    first = from_recorded(events[0]).event
    assert isinstance(first, SagaStarted)
    for e in events:
        if e.type == "StepStarted":
            data = json.loads(e.data)
            request = action_body(first.saga_id, data["step"], first.context)
            assert data["request_hash"] == sha256_hex(request), (path.name, data["step"])


@pytest.mark.parametrize("path", [f for f in FILES if f.name.startswith(f"{NEWEST}-")], ids=lambda f: f.stem)
def test_the_newest_release_writes_exactly_these_bytes(path: Path) -> None:
    body, _ = load(path)
    saga = SCENARIOS[path.stem.split("-", 1)[1]]()
    assert saga.state.status.value == body["status"]
    assert encode_history(saga.history) == body["events"]
    for recorded in body["events"]:
        event = from_recorded(load(path)[1][recorded["revision"]]).event
        assert encode_json(event)[2].decode() == recorded["data"]


def test_a_compensation_started_by_an_older_release_is_retried_with_the_same_body() -> None:
    """A rolling upgrade: a compensation whose intent an older release wrote (naming one key) is retried by
    this release with byte-identical bytes under its key, not in the newer form."""
    _, events = load(HISTORIES / "v1-compensated.json")
    cut = next(e.revision for e in events if e.type == "CompensationStepStarted")
    first_intent = json.loads(events[cut].data)
    assert "action_idempotency_keys" not in first_intent
    state = fold((d.event, d.recorded_at) for d in map(from_recorded, events[: cut + 1]))
    now = events[cut].recorded_at + timedelta(milliseconds=10)
    failed = StepOutcome(
        first_intent["step"], 1, Phase.COMPENSATION, OutcomeKind.TRANSIENT, error_class="http_503"
    )
    state = advance(state, now, failed).state
    assert state is not None
    retry_at = state.steps[first_intent["step"]].compensation.retry_at
    assert retry_at is not None
    plan = advance(state, retry_at + timedelta(milliseconds=1))
    again = [c for c in plan.calls if isinstance(c, StartCompensationStep)]
    assert [(c.attempt, c.idempotency_key) for c in again] == [(2, first_intent["idempotency_key"])]
    assert again[0].request_hash == first_intent["request_hash"]
