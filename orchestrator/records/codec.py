"""Domain events <-> store events: JSON data, string-valued metadata, deterministic ids.

Metadata on every event (design.md §3): ``tenant``, ``$correlationId``, ``$causationId``, ``actor``,
``traceparent``, ``schema`` (and ``tracestate`` when the trace context has one, ``auth`` when a person's
request made the append). An append that carries an
intent (``StepStarted``,
``CompensationStepStarted``) also carries ``nonce`` — this writer's incarnation and sequence — so two
writers that fold the same state and decide the same intent still write different bytes, and therefore
different event ids: only one of them wins the slot, and each can tell by reading it whether it won
(design.md §0.1). Resending after an ambiguous error reuses the exact same bytes (same ids: idempotent).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain.events import (
    CompensationStepStarted,
    Event,
    StepStarted,
    decode,
    encode_json,
)
from orchestrator.domain.requests import canonical_bytes
from orchestrator.eventstore.ids import new_events
from orchestrator.eventstore.types import Expected, NewEvent, RecordedEvent


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who and why, for every event of one append."""

    tenant: str
    actor: str
    correlation_id: str
    causation_id: str
    #: W3C trace context of the span that made the append (empty: not traced). Part of the bytes the
    #: event ids hash, so it is fixed before the ids are computed and never rewritten (invariant 5).
    traceparent: str = ""
    #: written only when there is one, so untraced metadata keeps the bytes it always had
    tracestate: str = ""
    #: how the actor was authenticated ("jwt", "trusted-header", "api-key:<key id>"), for the audit log;
    #: written only when known (the engine's own appends have none)
    auth: str = ""


@dataclass(frozen=True, slots=True)
class Decoded:
    event: Event
    recorded: RecordedEvent
    metadata: dict[str, str]

    @property
    def recorded_at(self) -> datetime:
        return self.recorded.recorded_at

    @property
    def tenant(self) -> str:
        return self.metadata.get("tenant", "")


def carries_intent(events: Sequence[Event]) -> bool:
    return any(isinstance(e, StepStarted | CompensationStepStarted) for e in events)


def to_new_events(
    stream: str,
    expected: Expected,
    events: Sequence[Event],
    envelope: Envelope,
    nonce: str | None = None,
) -> list[NewEvent]:
    items: list[tuple[str, bytes, bytes]] = []
    metadata: dict[int, bytes] = {}  # by schema version: the rest of the metadata is the append's
    for event in events:
        type_name, schema, data = encode_json(event)
        meta = metadata.get(schema)
        if meta is None:
            fields = {
                "tenant": envelope.tenant,
                "$correlationId": envelope.correlation_id,
                "$causationId": envelope.causation_id,
                "actor": envelope.actor,
                "traceparent": envelope.traceparent,
                "schema": str(schema),
            }
            if envelope.tracestate:
                fields["tracestate"] = envelope.tracestate
            if envelope.auth:
                fields["auth"] = envelope.auth
            if nonce is not None:
                fields["nonce"] = nonce
            meta = metadata[schema] = canonical_bytes(fields)
        items.append((type_name, data, meta))
    return new_events(stream, expected, items)


def from_recorded(recorded: RecordedEvent) -> Decoded:
    """Never raises: unreadable data or metadata becomes an ``UnknownEvent``."""
    try:
        metadata = json.loads(recorded.metadata) if recorded.metadata else {}
        if not isinstance(metadata, dict):
            metadata = {}
    except ValueError:
        metadata = {}
    try:
        schema = int(metadata.get("schema", "1"))
    except (TypeError, ValueError):
        schema = -1
    try:
        data = json.loads(recorded.data)
    except ValueError:
        data = {"raw": recorded.data.decode(errors="replace")}
        schema = -1
    return Decoded(decode(recorded.type, data, schema), recorded, metadata)
