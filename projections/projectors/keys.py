"""The saga read models' Redis layout (logical keys, see :func:`projections.updates.view_key`) and the
small helpers every saga projector shares. The query side (:mod:`projections.queries`) reads the same keys.

Per tenant ``t``:

- ``t:saga:{id}`` — hash, the saga detail: scalar fields, plus flat per-call fields ``a.{step}.status`` /
  ``c.{step}.status`` … (``a`` = action, ``c`` = compensation) so that every event writes only the fields
  it knows (no read-modify-write in Python), and one field ``intervention.{revision}`` per person's
  command; :mod:`projections.queries` assembles the view. Its ``phase`` and ``pause`` fields drive the
  index moves. Expires at terminal event time + retention.
- ``t:idx:all`` / ``t:idx:def:{name}`` — every saga / per definition, scored by start time (ms).
- ``t:idx:phase:{running|compensating}`` — open sagas by phase, scored by start time; a paused saga stays
  in its phase's index (its phase is not in the pause event, so the index cannot be chosen on resume).
- ``t:idx:phase:{completed|compensated}`` — scored by finish time (trimmed as the details expire).
- ``t:idx:pause:{dead_lettered|suspended}`` and ``t:idx:dlq`` — paused sagas, scored by pause time.
- ``$:tenants`` — zset of the tenants seen (for the gauges).
- ``t:counters`` — hash of counters; ``t:defs`` (zset of names) and ``t:def:{name}`` (version -> time).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from orchestrator.eventstore import RecordedEvent
from orchestrator.records.codec import Decoded, from_recorded
from orchestrator.records.streams import SAGA_STREAM_PREFIX
from projections.updates import view_key

PHASES = ("running", "compensating", "completed", "compensated")
OPEN_PHASES = ("running", "compensating")
TERMINAL_PHASES = ("completed", "compensated")
PAUSES = ("dead_lettered", "suspended")


def saga_key(tenant: str, saga_id: str) -> str:
    return view_key(tenant, "saga", saga_id)


def all_index(tenant: str) -> str:
    return view_key(tenant, "idx", "all")


def definition_index(tenant: str, name: str) -> str:
    return view_key(tenant, "idx", "def", name)


def phase_index(tenant: str, phase: str) -> str:
    return view_key(tenant, "idx", "phase", phase)


def pause_index(tenant: str, pause: str) -> str:
    return view_key(tenant, "idx", "pause", pause)


def dlq_index(tenant: str) -> str:
    return view_key(tenant, "idx", "dlq")


#: the one key outside any tenant: the tenants seen (no tenant is named "$"; tenant keys never clash with it)
GLOBAL = "$"


def tenants_key() -> str:
    return view_key(GLOBAL, "tenants")


def counters_key(tenant: str) -> str:
    return view_key(tenant, "counters")


def definitions_index(tenant: str) -> str:
    return view_key(tenant, "defs")


def definition_key(tenant: str, name: str) -> str:
    return view_key(tenant, "def", name)


def call_field(phase: str, step: str, name: str) -> str:
    """``a.{step}.{name}`` (action) or ``c.{step}.{name}`` (compensation). Step names may hold dots but
    ``name`` never does, so the field is unambiguous; readers build it from the step names, never split it."""
    return f"{phase}.{step}.{name}"


INTERVENTION_PREFIX = "intervention."


def intervention_field(revision: int) -> str:
    """``intervention.{revision}``: a person's command at that revision, ``[command, [step, …]]``. Keyed by
    revision, not by step, so that a command of the rollback never overwrites one of the forward phase."""
    return f"{INTERVENTION_PREFIX}{revision}"


def ms(at: datetime) -> float:
    """Event time as a sorted-set score: milliseconds since the epoch (µs in the fraction)."""
    return at.timestamp() * 1000.0


def iso(at: datetime) -> str:
    return at.isoformat()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_last: list[tuple[RecordedEvent, Decoded]] = []


def _decode(event: RecordedEvent) -> Decoded:
    # The runner hands one event to every saga projector in turn; decoding it once (a one-slot cache on
    # identity, so still a pure function of the event) halves the projection's CPU.
    if _last and _last[0][0] is event:
        return _last[0][1]
    decoded = from_recorded(event)
    _last[:] = [(event, decoded)]
    return decoded


def decode_saga_event(event: RecordedEvent) -> tuple[Decoded, str, str] | None:
    """(decoded, tenant, saga id) for an event of a saga stream, else None. The tenant comes from the
    metadata every saga event carries; an event without one cannot be placed and is not projected."""
    if not event.stream.startswith(SAGA_STREAM_PREFIX):
        return None
    decoded = _decode(event)
    tenant = decoded.tenant
    if not tenant:
        return None
    return decoded, tenant, event.stream[len(SAGA_STREAM_PREFIX) :]
