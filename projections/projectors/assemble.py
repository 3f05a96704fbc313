"""The read side of the saga detail: fold the flat fields of one saga hash into a :class:`SagaView`.

Pure, like the projectors. The projectors wrote each fact with the revision it happened at, so the facts
that depend on order are settled here exactly as the domain's fold settles them:

- a person's last retry / resume of a call (of the phase the saga was in then) resets it unless the call
  changed after it; a skip marks it skipped;
- a retry that was waiting when the rollback started is failed ("cancelled by compensation");
- a step blocked before an abort is failed;
- a paused saga that a person let go on (by naming one step) is paused only while a call of its phase is
  still blocked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from projections.projectors.keys import INTERVENTION_PREFIX, TERMINAL_PHASES, call_field
from projections.projectors.saga_detail import ACTION, COMPENSATION
from projections.views import CallView, SagaSummary, SagaView, StepView

__all__ = ["SUMMARY_FIELDS", "assemble_saga", "assemble_summary"]

#: the hash fields a list row needs (one HMGET per row)
SUMMARY_FIELDS = (
    "saga_id",
    "client_id",
    "definition_name",
    "definition_version",
    "phase",
    "pause",
    "reason",
    "started_at",
    "updated_at",
)
_DONE = ("succeeded", "skipped")


def _int(raw: Mapping[str, str], name: str) -> int | None:
    value = raw.get(name)
    return int(value) if value is not None else None


def _after(a: int | None, b: int | None) -> bool:
    """``a`` happened after ``b`` (a missing revision never happened)."""
    return a is not None and (b is None or a > b)


class _Fold:
    def __init__(self, raw: Mapping[str, str]) -> None:
        self.raw = raw
        self.comp_rev = _int(raw, "comp_rev")
        self.abort_rev = _int(raw, "abort_rev")
        # Each step's manual commands as (revision, command), from one field per command.
        self.manual: dict[str, list[tuple[int, str]]] = {}
        for name, value in raw.items():
            if name.startswith(INTERVENTION_PREFIX):
                command, steps = json.loads(value)
                for step in steps:
                    self.manual.setdefault(step, []).append((int(name[len(INTERVENTION_PREFIX) :]), command))

    def forward_at(self, revision: int) -> bool:
        """Whether the saga was still going forward (not rolling back) at ``revision``."""
        return self.comp_rev is None or self.comp_rev > revision

    def call(self, phase: str, step: str) -> tuple[CallView, int]:
        """The call's view and the revision of its last status change (for ordering)."""
        raw = self.raw

        def f(name: str) -> str | None:
            return raw.get(call_field(phase, step, name))

        status = f("status") or "idle"
        rev = int(f("rev") or -1)
        error = f("error")
        manual = list(self.manual.get(step, ()))
        legacy = raw.get(f"m.{step}")
        if legacy is not None:
            # A hash projected before `intervention.*` fields holds only the step's latest command here.
            manual.append(tuple(json.loads(legacy)))
        # Only the call of the phase the saga was in is changed, by the last command of that phase (a
        # rollback's command never undoes what a forward one did to the action).
        mine = [m for m in manual if (phase == ACTION) == self.forward_at(m[0])]
        if mine:
            manual_rev, command = max(mine)
            if command == "skip":
                status, rev = "skipped", max(rev, manual_rev)
            elif manual_rev > rev:
                status, rev = "idle", manual_rev
        if phase == ACTION and status == "retry_wait" and _after(self.comp_rev, rev):
            status, error = "failed", "cancelled by compensation"
        if phase == ACTION and status == "blocked" and _after(self.abort_rev, rev):
            status = "failed"
        attempt_ms, outcome_ms = f("attempt_ms"), f("outcome_ms")
        duration = None
        if attempt_ms is not None and outcome_ms is not None and float(outcome_ms) >= float(attempt_ms):
            duration = float(outcome_ms) - float(attempt_ms)
        view = CallView(
            status=status,  # type: ignore[arg-type]  # written by the projector from CallStatusName
            attempts=int(f("attempts") or 0),
            idempotency_key=f("key"),
            started_at=f("started_at"),
            finished_at=f("finished_at") if status in ("succeeded", "failed") else None,
            last_duration_ms=duration,
            last_error=error,
        )
        return view, rev

    def status(self, steps: list[StepView]) -> str:
        raw = self.raw
        phase = raw["phase"]
        pause = raw.get("pause")
        if phase in TERMINAL_PHASES or not pause:
            return phase
        if _after(_int(raw, "mia_rev"), _int(raw, "pause_rev")):
            forward = self.comp_rev is None
            calls = [s.action_call if forward else s.compensation_call for s in steps]
            if not any(c.status == "blocked" for c in calls):
                return phase
        return pause


def assemble_saga(raw: Mapping[str, str]) -> SagaView | None:
    """The view of one saga hash; None for a hash that is not (or no longer) a whole saga document."""
    if "saga_id" not in raw or "phase" not in raw:
        return None
    fold = _Fold(raw)
    steps: list[StepView] = []
    compensated: list[tuple[int, str]] = []
    pending: list[str] = []
    for spec in json.loads(raw["def_steps"]):
        name = str(spec["name"])
        action, _ = fold.call(ACTION, name)
        compensation, comp_rev = fold.call(COMPENSATION, name)
        output = raw.get(call_field(ACTION, name, "output"))
        steps.append(
            StepView(
                name=name,
                service=spec["service"],
                action=spec["action"],
                compensation=spec.get("compensation"),
                kind=spec.get("kind", "compensatable"),
                depends_on=list(spec.get("depends_on", [])),
                action_call=action,
                compensation_call=compensation,
                output=json.loads(output) if output is not None else None,
            )
        )
        if compensation.status in _DONE:
            compensated.append((comp_rev, name))
        elif (
            fold.comp_rev is not None
            and spec.get("compensation")
            and raw.get(call_field(ACTION, name, "effective")) == "1"
        ):
            pending.append(name)
    started_ms, finished_ms = raw.get("started_ms"), raw.get("finished_ms")
    duration = None
    if started_ms is not None and finished_ms is not None:
        duration = float(finished_ms) - float(started_ms)
    status = fold.status(steps)
    return SagaView(
        saga_id=raw["saga_id"],
        tenant=raw["tenant"],
        client_id=json.loads(raw.get("client_id", "null")),
        definition_name=raw["definition_name"],
        definition_version=raw["definition_version"],
        definition_hash=raw["definition_hash"],
        status=status,  # type: ignore[arg-type]  # one of the phase / pause names
        context=json.loads(raw["context"]),
        steps=steps,
        compensated_steps=[name for _, name in sorted(compensated)],
        # Undone in reverse definition order (the dependency order of a sequential saga).
        compensation_pending=pending[::-1] if status not in TERMINAL_PHASES else [],
        reason=raw.get("reason"),
        started_at=raw["started_at"],
        updated_at=raw["updated_at"],
        finished_at=raw.get("finished_at"),
        duration_ms=duration,
        revision=int(raw["revision"]),
        position=raw["position"],
    )


def assemble_summary(values: list[str | None]) -> SagaSummary | None:
    """A list row from the ``SUMMARY_FIELDS`` of one saga (None when the saga's detail has expired)."""
    row: dict[str, Any] = dict(zip(SUMMARY_FIELDS, values, strict=True))
    if row["saga_id"] is None or row["phase"] is None:
        return None
    phase, pause = row.pop("phase"), row.pop("pause")
    row["client_id"] = json.loads(row["client_id"] or "null")
    row["status"] = phase if phase in TERMINAL_PHASES or not pause else pause
    return SagaSummary(**row)
