"""``replay SAGA_ID``: the audit timeline of one saga, read from the store (read-only).

Every event with its recorded time, actor and cause, and the state after it; ``--at REVISION`` shows the
full state at one revision; ``--verify`` re-folds the stream from scratch, checks the pinned definition
hash against the definition the saga started with, and compares the result with the read model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.definitions import definition_hash, parse_definition
from orchestrator.domain.errors import DefinitionError, UnreadableHistory
from orchestrator.domain.events import SagaStarted, encode
from orchestrator.domain.state import SagaState, evolve, start
from orchestrator.eventstore.types import RecordedEvent
from orchestrator.records.codec import Decoded, from_recorded


@dataclass(frozen=True)
class TimelineEntry:
    revision: int
    recorded_at: str
    type: str
    actor: str
    cause: str
    data: dict[str, Any]
    status: str
    steps: dict[str, str]


@dataclass
class Replay:
    entries: list[TimelineEntry] = field(default_factory=list)
    states: list[SagaState] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def final(self) -> SagaState | None:
        return self.states[-1] if self.states else None


def _summary(state: SagaState) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, step in state.steps.items():
        text = f"{step.action.status.value}#{step.action.attempt}"
        if step.compensation.attempt:
            text += f" / compensation {step.compensation.status.value}#{step.compensation.attempt}"
        out[name] = text
    return out


def replay(events: Sequence[RecordedEvent]) -> Replay:
    """Fold ``events`` one by one, recording the state after each; never raises on bad history."""
    result = Replay()
    state: SagaState | None = None
    for recorded in events:
        decoded: Decoded = from_recorded(recorded)
        try:
            if state is None:
                if not isinstance(decoded.event, SagaStarted):
                    raise UnreadableHistory("the stream does not begin with SagaStarted")
                state = start(decoded.event, recorded.recorded_at)
            else:
                state = evolve(state, decoded.event, recorded.recorded_at)
        except UnreadableHistory as e:
            result.problems.append(f"revision {recorded.revision}: {e}")
            break
        result.states.append(state)
        result.entries.append(
            TimelineEntry(
                revision=recorded.revision,
                recorded_at=recorded.recorded_at.isoformat(),
                type=recorded.type,
                actor=decoded.metadata.get("actor", ""),
                cause=decoded.metadata.get("$causationId", ""),
                data=encode(decoded.event).data,
                status=state.status.value,
                steps=_summary(state),
            )
        )
    return result


def verify(events: Sequence[RecordedEvent], result: Replay) -> list[str]:
    """Problems found: the pinned definition hash, revisions without gaps, a fold from scratch."""
    problems = list(result.problems)
    if not events:
        return ["no events"]
    first = from_recorded(events[0]).event
    if isinstance(first, SagaStarted):
        try:
            # Parsed afresh (no memo) so the check really recomputes the hash.
            computed = definition_hash(parse_definition(first.definition))
        except DefinitionError as e:
            problems.append(f"the pinned definition no longer parses: {e}")
        else:
            if computed != first.definition_hash:
                problems.append(
                    f"definition hash mismatch: pinned {first.definition_hash}, content hashes to {computed}"
                )
    revisions = [e.revision for e in events]
    if revisions != list(range(len(events))):
        problems.append("revisions are not contiguous from 0")
    return problems


def render(result: Replay, *, at: int | None = None) -> str:
    if at is not None:
        if not 0 <= at < len(result.states):
            return f"no revision {at} (the stream has {len(result.states)} readable events)"
        state = result.states[at]
        body = {
            "revision": state.revision,
            "status": state.status.value,
            "reason": state.reason,
            "steps": _summary(state),
            "timers": sorted(state.timers),
            "context": state.context,
        }
        return json.dumps(body, indent=2, sort_keys=True, default=str)
    lines = []
    for e in result.entries:
        lines.append(f"{e.revision:>4}  {e.recorded_at}  {e.type:<28} actor={e.actor or '-'}  → {e.status}")
        for name, text in e.steps.items():
            lines.append(f"        {name}: {text}")
    lines.extend(f"PROBLEM {p}" for p in result.problems)
    return "\n".join(lines)
