"""Record the golden saga histories: each scenario driven through the pure core and encoded by the engine's
codec exactly as the engine appends it, written as one JSON file per scenario.

Golden files are never rewritten: a release that changes what is written adds files under a new prefix
(``python -m tests.golden.record tests/golden/histories v2``), and every file ever recorded stays in the
tests, so a change that cannot read an old stream fails. The ``v1`` files were recorded with the code of
commit 9c7b6c6 (before generations were named in compensations and withheld attempts were recorded).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.domain import Intervene, ManualCommand, OutcomeKind, Phase, decide
from orchestrator.domain.events import Event
from orchestrator.eventstore import NO_STREAM
from orchestrator.records.codec import Envelope, to_new_events
from tests.unit.domain.support import P, R, Saga, V, definition, pivot_saga, seed, step

TENANT = "t1"
SAGA_ID = "saga-1"


def person(saga: Saga, command: ManualCommand, key: str, name: str | None = None) -> None:
    saga.record(decide(saga.state, Intervene(command, "ops@example", "golden", key, name), saga.now))


def completed() -> Saga:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    saga.outcome(R, OutcomeKind.TRANSIENT, error_class="http_503", retry_after_ms=1000)
    saga.fire_due()
    saga.ok(R)
    saga.ok(P, {"payment_id": "pay-1", "amount": 99.99})
    return saga


def compensated() -> Saga:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    saga.ok(R)
    saga.outcome(P, OutcomeKind.REJECTED, error_class="http_422", detail="card declined")
    saga.undo(R)
    saga.undo(V)
    return saga


def timed_out_then_compensated() -> Saga:
    """Every attempt's deadline passes: the step's outcome is unknown, so it is compensated too."""
    saga = Saga(definition(step("a", timeout=1_000, retries=1), step("b", depends_on=["a"])))
    saga.run()
    while saga.state.steps["a"].compensation.attempt == 0:
        saga.fire_due()
    saga.undo("a")
    return saga


def suspended_resumed() -> Saga:
    saga = Saga(seed())
    saga.run()
    saga.ok(V)
    saga.outcome(R, OutcomeKind.MISCONFIGURED, error_class="http_401")
    person(saga, ManualCommand.RESUME, "resume-1")
    saga.run()
    saga.ok(R)
    saga.ok(P)
    return saga


def parallel_with_manual_retry() -> Saga:
    """A fan-out whose branch is dead-lettered during compensation, retried by a person (new generation)."""
    saga = Saga(
        definition(
            step("check"),
            step("hold", depends_on=["check"]),
            step("authorize", depends_on=["check"]),
            step("confirm", depends_on=["hold", "authorize"]),
        )
    )
    saga.run()
    saga.ok("check")
    saga.ok("hold")
    saga.outcome("authorize", OutcomeKind.REJECTED, error_class="http_422")
    saga.outcome("hold", OutcomeKind.REJECTED, phase=Phase.COMPENSATION, error_class="http_422")
    person(saga, ManualCommand.RETRY, "retry-1")
    saga.run()
    saga.undo("hold")
    saga.undo("check")
    return saga


def pivot_aborted() -> Saga:
    """The pivot's outcome stays unknown; a person aborts (waiving it) and the saga rolls back."""
    saga = Saga(pivot_saga())
    saga.run()
    saga.ok("reserve")
    while saga.state.status.value == "running":
        saga.fire_due()
    person(saga, ManualCommand.ABORT, "abort-1")
    saga.run()
    saga.undo("reserve")
    return saga


SCENARIOS: dict[str, Callable[[], Saga]] = {
    "completed": completed,
    "compensated": compensated,
    "timed-out-then-compensated": timed_out_then_compensated,
    "suspended-resumed": suspended_resumed,
    "parallel-with-manual-retry": parallel_with_manual_retry,
    "pivot-aborted": pivot_aborted,
}


def encode_history(history: list[tuple[Event, datetime]]) -> list[dict[str, Any]]:
    stream = f"saga-{SAGA_ID}"
    out: list[dict[str, Any]] = []
    for revision, (event, recorded_at) in enumerate(history):
        envelope = Envelope(tenant=TENANT, actor="engine:golden", correlation_id=SAGA_ID, causation_id="c")
        expected = NO_STREAM if revision == 0 else revision - 1
        new = to_new_events(stream, expected, [event], envelope, nonce=f"golden:{revision}")[0]
        out.append(
            {
                "id": str(new.id),
                "type": new.type,
                "revision": revision,
                "recorded_at": recorded_at.isoformat(),
                "data": new.data.decode(),
                "metadata": new.metadata.decode(),
            }
        )
    return out


def main(directory: Path, prefix: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, scenario in SCENARIOS.items():
        saga = scenario()
        path = directory / f"{prefix}-{name}.json"
        if path.exists():
            raise SystemExit(f"{path} exists: golden files are never rewritten")
        body = {"stream": f"saga-{SAGA_ID}", "status": saga.state.status.value}
        body["events"] = encode_history(saga.history)
        path.write_text(json.dumps(body, indent=1) + "\n")
        print(path, body["status"], len(saga.history))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
