"""The read models' shapes: what the query API returns (pure values, no Redis).

Times come from events (the store's recorded time), never from the wall clock, so a rebuild yields the
same views. ``position`` fields are opaque tokens (``Position.encode()``).
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

SagaStatusName = Literal["running", "compensating", "completed", "compensated", "dead_lettered", "suspended"]
CallStatusName = Literal["idle", "running", "retry_wait", "succeeded", "failed", "blocked", "skipped"]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CallView(_View):
    """One call of a step: its action or its compensation."""

    status: CallStatusName = "idle"
    attempts: int = 0
    idempotency_key: str | None = None
    started_at: str | None = None  # ISO-8601, recorded time of the first StepStarted of this call
    finished_at: str | None = None
    #: recorded time from the last attempt's start to its outcome, in milliseconds
    last_duration_ms: float | None = None
    last_error: str | None = None


class StepView(_View):
    name: str
    service: str
    action: str
    compensation: str | None = None
    kind: str = "compensatable"
    depends_on: list[str] = []
    action_call: CallView = CallView()
    compensation_call: CallView = CallView()
    output: Any = None


class SagaView(_View):
    """Saga detail."""

    saga_id: str
    tenant: str
    client_id: str | None = None
    definition_name: str
    definition_version: str
    definition_hash: str
    status: SagaStatusName
    context: dict[str, Any]
    steps: list[StepView]
    #: names of the steps whose compensation is done / still to do (in the order they were compensated)
    compensated_steps: list[str] = []
    compensation_pending: list[str] = []
    reason: str | None = None
    started_at: str
    updated_at: str
    finished_at: str | None = None
    duration_ms: float | None = None
    revision: int
    position: str


class SagaSummary(_View):
    """One row of a list (by time, status or definition) and of the DLQ."""

    saga_id: str
    client_id: str | None = None
    definition_name: str
    definition_version: str
    status: SagaStatusName
    reason: str | None = None
    started_at: str
    updated_at: str


T = TypeVar("T")


class Page(_View, Generic[T]):
    items: list[T]
    #: opaque; pass back as ``cursor`` for the next page; None on the last page
    next_cursor: str | None = None


class DefinitionSummary(_View):
    name: str
    versions: list[str]
    latest: str
    registered_at: str


class SagaCounters(_View):
    """Per-tenant counters and duration summaries."""

    total: int = 0
    by_status: dict[str, int] = {}
    compensations: int = 0
    #: failures = compensated or dead-lettered, by reason class
    failures_by_reason: dict[str, int] = {}
    completed_duration_ms_sum: float = 0.0
    completed_count: int = 0
