"""The audit log: who did what, in which tenant, to which saga, with what result, when, in one
``audit-{tenant}`` stream per tenant, for compliance reporting (``audit:read``, the auditor's).

- **Derived** records: every mutation a person or a service made is already an event that says who made it
  (``actor`` and ``auth`` in its metadata): a saga started, an intervention applied, a definition
  registered, an API key created, rotated or revoked. One role (the projector) follows those streams with
  a catch-up subscription and writes one record per such event. A record's id is a function of its source
  event, and it is appended at the exact revision of the tenant's audit stream after reading which source
  the stream's last derived record came from, so a restart, or two derivers at once, never write a record
  twice (the loser of a race reads the winner's record and moves on).
- **Direct** records, for what has no other home: a request the permission table refused (403) is
  recorded by the node that refused it. Requests that could not be authenticated at all carry no tenant
  one can trust and can come in floods: they are counted (``saga_auth_denials_total``) and a sample is
  written once a minute per node to the operations tenant's log, with the counts by reason.

No record carries a secret: actors, key ids and reasons, never tokens, keys or request bodies.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from orchestrator.app.background import forever
from orchestrator.app.permissions import Permission, authorize
from orchestrator.app.principal import Principal
from orchestrator.domain.requests import canonical_bytes
from orchestrator.eventstore.errors import StreamNotFound, WrongExpectedRevision
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import (
    ANY,
    NO_STREAM,
    CaughtUp,
    Checkpoint,
    EventFilter,
    Expected,
    NewEvent,
    Position,
    RecordedEvent,
)
from orchestrator.records.streams import (
    API_KEY_STREAM_PREFIX,
    DEFINITION_REGISTERED,
    DEFINITION_STREAM_PREFIX,
    SAGA_STREAM_PREFIX,
)

log = structlog.get_logger("orchestrator.audit")

AUDIT_PREFIX = "audit-"
RECORD = "AuditRecord"
#: where the deriver notes how far it got (a hint: records are never written twice either way)
CHECKPOINT_STREAM = "audit-deriver-checkpoint"
_SOURCES = (SAGA_STREAM_PREFIX, DEFINITION_STREAM_PREFIX, API_KEY_STREAM_PREFIX)
_NAMESPACE = uuid.UUID("8f7d3a52-5a0e-5c5e-9b8e-2f7c6d1e0a41")
#: the source event types that are someone's mutation, and the action each records
_ACTIONS = {
    "SagaStarted": "saga.start",
    "ManualInterventionApplied": "saga.intervene",
    "SagaAbortRequested": "saga.abort",
    DEFINITION_REGISTERED: "definition.register",
    "ApiKeyCreated": "api-key.create",
    "ApiKeyRotated": "api-key.rotate",
    "ApiKeyRevoked": "api-key.revoke",
}
#: how far back the deriver looks for its last record in a stream that also has direct records
_TAIL = 100
SAMPLE_INTERVAL_S = 60.0


def audit_stream(tenant: str) -> str:
    return f"{AUDIT_PREFIX}{tenant}"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: str
    tenant: str
    actor: str
    #: how the actor was authenticated: "jwt", "trusted-header", "api-key:<key id>", "none", …
    auth: str
    action: str
    result: str
    saga_id: str | None = None
    target: str | None = None
    detail: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    #: the event it was derived from ("stream@revision"), or None for a direct record
    source: str | None = None
    #: the source event's position in $all (how the deriver knows where it got to)
    source_position: str | None = None


def _record_json(record: AuditRecord) -> dict[str, Any]:
    return {f: getattr(record, f) for f in AuditRecord.__slots__ if getattr(record, f) is not None}


def _trace_id(traceparent: str) -> str | None:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def derive(event: RecordedEvent) -> AuditRecord | None:
    """The audit record of one source event, or None when it is nobody's mutation (the engine's work)."""
    action = _ACTIONS.get(event.type)
    if action is None:
        return None
    try:
        meta = json.loads(event.metadata) if event.metadata else {}
        data = json.loads(event.data)
    except ValueError:
        return None
    if not isinstance(meta, dict) or not isinstance(data, dict):
        return None
    actor = str(meta.get("actor", ""))
    if actor.startswith("engine:"):
        return None
    tenant = str(meta.get("tenant") or data.get("tenant") or "")
    if event.stream.startswith(API_KEY_STREAM_PREFIX):
        tenant = event.stream.removeprefix(API_KEY_STREAM_PREFIX)
    if not tenant:
        return None
    saga_id = (
        event.stream.removeprefix(SAGA_STREAM_PREFIX) if event.stream.startswith(SAGA_STREAM_PREFIX) else None
    )
    target, detail = None, None
    if event.type == "ManualInterventionApplied":
        action = f"saga.{data.get('command', 'intervene')}"
        detail = str(data.get("reason", ""))[:500] or None
        target = data.get("requested_step")
    elif event.type == DEFINITION_REGISTERED:
        target = f"{data.get('name')}@{data.get('version')}"
    elif event.stream.startswith(API_KEY_STREAM_PREFIX):
        target = str(data.get("key_id", ""))
        detail = str(data.get("reason", ""))[:500] or None
    elif event.type == "SagaStarted":
        target = f"{data.get('definition_name')}@{data.get('definition_version')}"
    auth = str(meta.get("auth") or meta.get("by") or "")
    return AuditRecord(
        at=event.recorded_at.isoformat(),
        tenant=tenant,
        actor=actor or "unknown",
        auth=auth or "unknown",
        action=action,
        result="ok",
        saga_id=saga_id,
        target=target if isinstance(target, str) else None,
        detail=detail,
        request_id=str(meta["$causationId"]) if meta.get("$causationId") else None,
        trace_id=_trace_id(str(meta.get("traceparent", ""))),
        source=f"{event.stream}@{event.revision}",
        source_position=event.position.encode(),
    )


def _new_record(record: AuditRecord, *, derived: bool) -> NewEvent:
    data = canonical_bytes(_record_json(record))
    meta = canonical_bytes({"tenant": record.tenant, "actor": "audit"})
    # A derived record's id is its source's: the same source can never make two records.
    name = record.source if derived and record.source else f"direct|{uuid.uuid4()}"
    return NewEvent(uuid.uuid5(_NAMESPACE, name), RECORD, data, meta)


def parse(event: RecordedEvent) -> AuditRecord | None:
    try:
        data = json.loads(event.data)
        return AuditRecord(**{k: v for k, v in data.items() if k in AuditRecord.__slots__})
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: list[AuditRecord]
    #: pass it back as ``cursor`` for the next page; None: nothing more (yet)
    next_cursor: str | None


class AuditTrail:
    """Writes direct records, derives the rest, and serves the log to auditors."""

    def __init__(
        self,
        store: EventStore,
        *,
        operations_tenant: str = "default",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._operations_tenant = operations_tenant
        self._clock = clock
        self._unauthenticated: Counter[str] = Counter()
        #: per audit stream: the $all position of the last source its derived records cover
        self._covered: dict[str, Position | None] = {}

    # --- direct records ------------------------------------------------------------------------------
    async def denied(
        self, who: Principal, action: str, detail: str, *, request_id: str | None, trace_id: str | None
    ) -> None:
        """A request the permission table refused: recorded in the caller's tenant."""
        record = AuditRecord(
            at=self._clock().isoformat(),
            tenant=who.tenant,
            actor=who.actor,
            auth=f"{who.authenticated_by}:{who.credential_id}" if who.credential_id else who.authenticated_by,
            action=action,
            result="denied",
            detail=detail[:500],
            request_id=request_id,
            trace_id=trace_id,
        )
        await self._append_direct(record)

    def unauthenticated(self, reason: str) -> None:
        """Counted here; written as one sample record per interval (``flush_samples``)."""
        self._unauthenticated[reason] += 1

    async def flush_samples(self) -> None:
        if not self._unauthenticated:
            return
        counts, self._unauthenticated = dict(self._unauthenticated), Counter()
        record = AuditRecord(
            at=self._clock().isoformat(),
            tenant=self._operations_tenant,
            actor="unauthenticated",
            auth="none",
            action="request.unauthenticated",
            result="denied",
            detail=", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items())),
        )
        await self._append_direct(record)

    async def _append_direct(self, record: AuditRecord) -> None:
        stream = audit_stream(record.tenant)
        try:
            await self._store.append(stream, [_new_record(record, derived=False)], expected=ANY)
        except Exception:
            # The refusal itself stands; losing its record is logged (without any credential).
            log.warning("audit_record_not_written", action=record.action, tenant=record.tenant, exc_info=True)

    # --- derivation (one role runs it) ----------------------------------------------------------------
    async def derive_forever(self) -> None:
        await forever(self._derive, dropped="audit_derivation_dropped")

    async def _derive(self) -> None:
        after = await self._checkpoint()
        subscription = await self._store.subscribe_all(
            after=after, filter=EventFilter(stream_prefixes=_SOURCES)
        )
        since_checkpoint = 0
        try:
            async for item in subscription:
                if isinstance(item, CaughtUp):
                    continue
                if isinstance(item, Checkpoint):
                    continue
                record = derive(item)
                if record is not None:
                    await self.write_derived(record, item.position)
                    since_checkpoint += 1
                if since_checkpoint >= 100:
                    await self._save_checkpoint(item.position)
                    since_checkpoint = 0
        finally:
            await subscription.close()

    async def write_derived(self, record: AuditRecord, position: Position) -> bool:
        """Append ``record`` unless its stream already covers ``position``; True when this call wrote it."""
        stream = audit_stream(record.tenant)
        for _ in range(10):
            covered, expected = await self._tail(stream)
            if covered is not None and position <= covered:
                return False
            try:
                await self._store.append(stream, [_new_record(record, derived=True)], expected=expected)
            except WrongExpectedRevision:
                self._covered.pop(stream, None)
                continue
            self._covered[stream] = position
            return True
        raise WrongExpectedRevision(stream, "a stable tail", None)

    async def _tail(self, stream: str) -> tuple[Position | None, Expected]:
        """The last source position the stream's derived records cover, and its last revision."""
        try:
            tail = await self._store.read_stream(stream, from_revision=-1, backwards=True, limit=_TAIL)
        except StreamNotFound:
            return None, NO_STREAM
        if not tail:
            return None, NO_STREAM
        for event in tail:
            record = parse(event)
            if record is not None and record.source_position:
                return Position.decode(record.source_position), tail[0].revision
        return None, tail[0].revision

    async def _checkpoint(self) -> Position | None:
        try:
            last = await self._store.read_stream(CHECKPOINT_STREAM, from_revision=-1, backwards=True, limit=1)
        except StreamNotFound:
            return None
        if not last:
            return None
        return Position.decode(json.loads(last[0].data)["position"])

    async def _save_checkpoint(self, position: Position) -> None:
        data = canonical_bytes({"position": position.encode()})
        event = NewEvent(uuid.uuid4(), "AuditCheckpoint", data, b"{}")
        await self._store.append(CHECKPOINT_STREAM, [event], expected=ANY)

    # --- reading (the auditor) ---------------------------------------------------------------------
    async def records(
        self,
        who: Principal,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        saga_id: str | None = None,
        action: str | None = None,
        limit: int = 100,
        cursor: int | None = None,
    ) -> AuditPage:
        """The caller's tenant's records, oldest first, filtered; ``cursor`` is the next revision to read."""
        authorize(who, Permission.READ_AUDIT)
        stream = audit_stream(who.tenant)
        start = cursor or 0
        items: list[AuditRecord] = []
        while len(items) < limit:
            try:
                batch = await self._store.read_stream(stream, from_revision=start, limit=500)
            except StreamNotFound:
                return AuditPage([], None)
            if not batch:
                return AuditPage(items, str(start) if items else None)
            for event in batch:
                start = event.revision + 1
                record = parse(event)
                if record is None or not _matches(record, since, until, actor, saga_id, action):
                    continue
                items.append(record)
                if len(items) == limit:
                    return AuditPage(items, str(start))
        return AuditPage(items, str(start))


def _matches(
    record: AuditRecord,
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
    saga_id: str | None,
    action: str | None,
) -> bool:
    at = datetime.fromisoformat(record.at)
    return (
        (since is None or at >= since)
        and (until is None or at < until)
        and (actor is None or record.actor == actor)
        and (saga_id is None or record.saga_id == saga_id)
        and (action is None or record.action == action or record.action.startswith(f"{action}."))
    )


def records_json(records: Sequence[AuditRecord]) -> list[Mapping[str, Any]]:
    return [_record_json(r) for r in records]
