"""Commands from people and clients: register a definition, start a saga, intervene by hand.

Every command folds the stream it changes and appends with the expected revision (never decided on a
read model); a lost race re-reads and decides again. Identity is tenant-scoped (design.md §3):
``saga-{uuid5(tenant | client id)}`` when the client names the saga, ``saga-{uuid5(tenant | "idem" |
Idempotency-Key)}`` when it sends that header, else a random id. Starting again with the same request
returns the existing saga; with a different request it is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.app.errors import Conflict, Invalid, NotFound, PreconditionFailed
from orchestrator.domain.commands import Intervene
from orchestrator.domain.decide import begin, decide
from orchestrator.domain.definitions import (
    SagaDefinition,
    canonical_dict,
    canonical_json,
    parse_definition,
    parse_pinned,
)
from orchestrator.domain.errors import DefinitionError, DomainConflict, Issue
from orchestrator.domain.events import SagaStarted
from orchestrator.domain.requests import canonical_bytes
from orchestrator.domain.state import SagaState, fold
from orchestrator.domain.timing import Tuning
from orchestrator.domain.versions import latest_version
from orchestrator.domain.vocabulary import ManualCommand
from orchestrator.eventstore.errors import StreamNotFound, WrongExpectedRevision
from orchestrator.eventstore.ids import event_id, new_events
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import NO_STREAM, Expected, NewEvent, Position, RecordedEvent
from orchestrator.observability.tracing import OFF, SagaTracer, TraceContext, Traced
from orchestrator.records.codec import Envelope, from_recorded, to_new_events
from orchestrator.records.streams import (
    CLIENT_ID,
    DEFINITION_REGISTERED,
    definition_stream,
    saga_id_for,
    saga_stream,
)

#: re-decisions after losing a race to another writer before the caller gets a 409
_RACES = 10


@dataclass(frozen=True, slots=True)
class Registered:
    definition: SagaDefinition
    created: bool
    position: Position | None


@dataclass(frozen=True, slots=True)
class Started:
    saga_id: str
    stream: str
    created: bool
    position: Position | None
    definition_version: str


@dataclass(frozen=True, slots=True)
class Intervened:
    saga_id: str
    revision: int
    applied: bool
    position: Position | None


def start_request_hash(name: str, version: str | None, context: dict[str, Any]) -> str:
    """What "the same start request" means: definition name, version as given (or absent), context."""
    return hashlib.sha256(canonical_bytes({"name": name, "version": version, "context": context})).hexdigest()


class SagaCommands:
    def __init__(
        self,
        store: EventStore,
        tuning: Tuning,
        *,
        service_known: Callable[[str], bool] = lambda _: True,
        clock: Callable[[], float] | None = None,
        tracer: SagaTracer = OFF,
    ) -> None:
        self._store = store
        self._tuning = tuning
        self._service_known = service_known
        self._clock = clock
        self._tracer = tracer

    def _now(self) -> datetime:
        return datetime.now(UTC) if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    # --- definitions ----------------------------------------------------------------------------------
    async def definition_versions(self, tenant: str, name: str) -> dict[str, tuple[dict[str, Any], str]]:
        """version -> (canonical definition, hash), for one tenant's definition name."""
        try:
            events = await self._store.read_stream(definition_stream(tenant, name))
        except StreamNotFound:
            return {}
        versions: dict[str, tuple[dict[str, Any], str]] = {}
        for e in events:
            if e.type == DEFINITION_REGISTERED:
                data = json.loads(e.data)
                versions[data["version"]] = (data["definition"], data["hash"])
        return versions

    async def get_definition(self, tenant: str, name: str, version: str | None) -> SagaDefinition:
        versions = await self.definition_versions(tenant, name)
        chosen = version if version is not None else latest_version(versions)
        if chosen is None or chosen not in versions:
            what = f"version {version!r} of " if version else ""
            raise NotFound(f"no {what}definition {name!r}")
        return parse_pinned(*versions[chosen])

    async def register_definition(self, tenant: str, actor: str, raw: Any, *, auth: str = "") -> Registered:
        try:
            definition = parse_definition(raw)
        except DefinitionError as e:
            raise Invalid(e.issues, code="invalid-definition") from e
        unknown = [
            Issue(
                f"steps[{i}].service",
                f"step {s.name!r}: service {s.service!r} is not in the service registry",
            )
            for i, s in enumerate(definition.steps)
            if not self._service_known(s.service)
        ]
        if unknown:
            raise Invalid(unknown, code="invalid-definition")
        stream = definition_stream(tenant, definition.name)
        body = canonical_json(definition)
        for _ in range(_RACES):
            try:
                events = await self._store.read_stream(stream)
            except StreamNotFound:
                events = []
            for recorded in events:
                data = json.loads(recorded.data)
                if recorded.type == DEFINITION_REGISTERED and data["version"] == definition.version:
                    if canonical_bytes(data["definition"]) == body:
                        return Registered(definition, False, recorded.position)
                    raise Conflict(
                        f"definition {definition.name!r} version {definition.version!r} already exists"
                        " with different content; register a new version",
                        [Issue("version", "this version exists with different content")],
                        code="definition-conflict",
                    )
            data = {
                "tenant": tenant,
                "name": definition.name,
                "version": definition.version,
                "hash": hashlib.sha256(body).hexdigest(),
                "definition": canonical_dict(definition),
            }
            meta = {"tenant": tenant, "actor": actor, "schema": "1", **({"auth": auth} if auth else {})}
            expected: Expected = events[-1].revision if events else NO_STREAM
            new = new_events(
                stream, expected, [(DEFINITION_REGISTERED, canonical_bytes(data), canonical_bytes(meta))]
            )
            try:
                result = await self._store.append(stream, new, expected=expected)
            except WrongExpectedRevision:
                continue
            return Registered(definition, True, result.position)
        raise Conflict("the definition is being changed concurrently; try again", code="definition-conflict")

    # --- sagas -----------------------------------------------------------------------------------------
    async def start(
        self,
        tenant: str,
        actor: str,
        *,
        name: str,
        version: str | None,
        context: dict[str, Any],
        client_id: str | None = None,
        idempotency_key: str | None = None,
        auth: str = "",
    ) -> Started:
        if client_id is not None and not CLIENT_ID.match(client_id):
            raise Invalid([Issue("saga_id", f"{client_id!r} must match {CLIENT_ID.pattern}")])
        saga_id = saga_id_for(tenant, client_id, idempotency_key)
        stream = saga_stream(saga_id)
        request = start_request_hash(name, version, context)
        existing = await self._first_event(stream)
        if existing is not None:
            return self._same_start(existing, tenant, saga_id, stream, request)
        try:
            definition = await self.get_definition(tenant, name, version)
        except NotFound as e:
            # The request names a definition that does not exist: a problem with the request's field.
            field = "version" if version is not None else "saga_name"
            raise Invalid([Issue(field, e.message)], code="unknown-definition") from None
        started = begin(
            tenant=tenant,
            saga_id=saga_id,
            client_id=client_id,
            definition=definition,
            context=context,
            tuning=self._tuning,
        )
        with self._tracer.start(
            tenant=tenant, saga_id=saga_id, definition=definition.name, definition_version=definition.version
        ) as traced:
            # The saga's trace context goes into the metadata before any id is computed (invariant 5).
            envelope = Envelope(
                tenant=tenant,
                actor=actor,
                correlation_id=saga_id,
                causation_id=request,
                traceparent=traced.context.traceparent,
                tracestate=traced.context.tracestate,
                auth=auth,
            )
            new = to_new_events(stream, NO_STREAM, [started], envelope)
            # The request hash rides in the metadata so a repeated start can be recognised; the nonce makes
            # two identical starts racing each other two different appends, so the store lets one create
            # the saga and the other finds it (200), instead of taking the second as a resend of the first.
            new = [_with_meta(stream, e, request_hash=request, start_nonce=uuid.uuid4().hex) for e in new]
            try:
                result = await self._store.append(stream, new, expected=NO_STREAM)
            except WrongExpectedRevision:
                existing = await self._first_event(stream)
                if existing is None:
                    raise
                return self._same_start(existing, tenant, saga_id, stream, request)
        return Started(saga_id, stream, True, result.position, definition.version)

    async def _first_event(self, stream: str) -> RecordedEvent | None:
        try:
            events = await self._store.read_stream(stream, limit=1)
        except StreamNotFound:
            return None
        return events[0] if events else None

    def _same_start(
        self, first: RecordedEvent, tenant: str, saga_id: str, stream: str, request: str
    ) -> Started:
        decoded = from_recorded(first)
        event = decoded.event
        if not isinstance(event, SagaStarted) or event.tenant != tenant:
            raise Conflict("this saga id is taken", [Issue("saga_id", "taken")], code="saga-id-taken")
        if decoded.metadata.get("request_hash") != request:
            raise Invalid(
                [Issue("saga_id", "a saga with this id was already started with a different request")],
                code="start-mismatch",
            )
        return Started(saga_id, stream, False, first.position, event.definition_version)

    async def load(self, tenant: str, saga_id: str) -> tuple[SagaState, list[RecordedEvent]]:
        """Fold a saga of ``tenant``; a saga of another tenant does not exist for this caller."""
        try:
            events = list(await self._store.read_stream(saga_stream(saga_id)))
        except StreamNotFound as e:
            raise NotFound(f"no saga {saga_id!r}") from e
        state = fold((d.event, d.recorded_at) for d in map(from_recorded, events))
        if state.tenant != tenant:
            raise NotFound(f"no saga {saga_id!r}")
        return state, events

    async def intervene(
        self,
        tenant: str,
        actor: str,
        saga_id: str,
        command: ManualCommand,
        *,
        reason: str,
        idempotency_key: str,
        step: str | None = None,
        if_match: int | None = None,
        auth: str = "",
    ) -> Intervened:
        stream = saga_stream(saga_id)
        with contextlib.ExitStack() as spans:
            traced: Traced | None = None
            for _ in range(_RACES):
                state, recorded = await self.load(tenant, saga_id)
                if if_match is not None and if_match != state.revision:
                    raise PreconditionFailed(
                        f"the saga is at revision {state.revision}, not {if_match}", code="revision-mismatch"
                    )
                message = Intervene(command, actor, reason, idempotency_key, step)
                try:
                    events = decide(state, message, self._now(), self._tuning)
                except DomainConflict as e:
                    raise Conflict(str(e), code="intervention-refused") from e
                if not events:
                    return Intervened(saga_id, state.revision, False, None)
                if traced is None:
                    # One span for the command, whatever races it loses: in the saga's trace (below the
                    # context its stream stores), so the work it lets continue stays in that trace.
                    traced = spans.enter_context(
                        self._tracer.intervene(
                            stored_context(recorded),
                            tenant=tenant,
                            saga_id=saga_id,
                            command=command.value,
                            actor=actor,
                            reason=reason,
                        )
                    )
                envelope = Envelope(
                    tenant=tenant,
                    actor=actor,
                    correlation_id=saga_id,
                    causation_id=idempotency_key,
                    traceparent=traced.context.traceparent,
                    tracestate=traced.context.tracestate,
                    auth=auth,
                )
                new = to_new_events(stream, state.revision, events, envelope)
                try:
                    result = await self._store.append(stream, new, expected=state.revision)
                except WrongExpectedRevision:
                    if if_match is not None:
                        raise PreconditionFailed(
                            "the saga changed while the command was decided", code="revision-mismatch"
                        ) from None
                    continue
                traced.record(events)
                return Intervened(saga_id, state.revision + len(events), True, result.position)
        raise Conflict(
            "the saga is changing too fast to apply the command; try again", code="intervention-refused"
        )


def stored_context(recorded: list[RecordedEvent]) -> TraceContext:
    """The trace context a saga's stream stores: the latest one written (interventions replace it)."""
    for event in reversed(recorded):
        try:
            metadata = json.loads(event.metadata)
        except ValueError:
            continue
        found = TraceContext.from_metadata(metadata) if isinstance(metadata, dict) else TraceContext()
        if found:
            return found
    return TraceContext()


def _with_meta(stream: str, event: NewEvent, **extra: str) -> NewEvent:
    """``event`` (the first of a new stream) with more metadata, and the id of those bytes."""
    meta = json.loads(event.metadata)
    meta.update(extra)
    body = canonical_bytes(meta)
    return NewEvent(
        event_id(stream, NO_STREAM, 0, event.type, event.data, body), event.type, event.data, body
    )
