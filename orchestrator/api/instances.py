"""Saga instances: start (identity rules of design.md §3), detail and lists from the read model, the raw
history from the store, the DLQ and the tenant's counters."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

from aiohttp import web

from orchestrator.api.common import (
    deps,
    int_query,
    json_response,
    principal,
    query_errors,
    read_guard,
    saga_id_param,
    sagas,
    store_guard,
    str_query,
    validate,
)
from orchestrator.api.json_body import read_json
from orchestrator.api.models import (
    EventHistory,
    EventRecord,
    SagaStartedResponse,
    SagaStatusName,
    StartSagaRequest,
)
from orchestrator.api.problems import Problem, invalid_field
from orchestrator.api.routes import (
    BODY_PROBLEMS,
    IDEMPOTENCY_KEY,
    SAGA_ID,
    TENANT_PROBLEMS,
    Param,
    Reply,
    Route,
)
from orchestrator.domain.definitions import NAME_PATTERN
from orchestrator.eventstore.types import Position, RecordedEvent
from projections.views import Page, SagaCounters, SagaSummary, SagaView

BASE = "/api/v1/sagas/instances"
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_STATUSES = frozenset(get_args(SagaStatusName))
_NAME = re.compile(NAME_PATTERN)
_EVENT_PAGE = 1_000
READ_MODEL_POSITION = "X-Read-Model-Position"


class SagaPage(Page[SagaSummary]):
    """A page of saga summaries; pass ``next_cursor`` back as ``cursor``."""


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _KEY.match(key):
        raise invalid_field(
            400, "invalid-header", "header.Idempotency-Key", "1 to 200 visible ASCII characters"
        )
    return key


async def start(request: web.Request) -> web.Response:
    who = principal(request)
    d = deps(request)
    key = idempotency_key(request)
    body = validate(StartSagaRequest, await read_json(request, d.settings.server.max_body_bytes))
    async with store_guard():
        started = await sagas(request).start(
            who,
            name=body.saga_name,
            version=body.version,
            context=body.context,
            client_id=body.saga_id,
            idempotency_key=key,
        )
    answer = SagaStartedResponse(
        saga_id=started.saga_id,
        client_id=body.saga_id,
        status="running",
        saga_name=body.saga_name,
        version=started.definition_version,
        position=started.position.encode() if started.position else None,
    )
    return json_response(answer, 201 if started.created else 200, {"Location": f"{BASE}/{started.saga_id}"})


def _position_query(request: web.Request) -> Position | None:
    raw = request.query.get("min_position")
    if raw is None:
        return None
    try:
        return Position.decode(raw)
    except ValueError:
        raise invalid_field(400, "invalid-query", "query.min_position", "not a position token") from None


async def get_saga(request: web.Request) -> web.Response:
    who = principal(request)
    saga_id = saga_id_param(request)
    wanted = _position_query(request)
    limit_ms = int(deps(request).read_wait_max_s * 1000)
    wait_ms = int_query(request, "wait_ms", min(2_000, limit_ms), 0, limit_ms)
    use = sagas(request)
    headers: dict[str, str] = {}
    async with read_guard():
        if wanted is not None:
            reached, at = await use.wait_for_read_model(wanted, wait_ms / 1000)
            if not reached:
                # Stale but useful: the caller sees how far the read model got and may ask again.
                headers[READ_MODEL_POSITION] = at.encode() if at is not None else ""
        view = await use.saga(who, saga_id)
    if view is None:
        raise Problem(404, "not-found", f"no saga {saga_id!r}", headers=headers)
    headers["ETag"] = f'"{view.revision}"'
    return json_response(view, headers=headers)


async def list_sagas(request: web.Request) -> web.Response:
    who = principal(request)
    status = str_query(request, "status")
    if status is not None and status not in _STATUSES:
        raise invalid_field(400, "invalid-query", "query.status", f"one of {', '.join(sorted(_STATUSES))}")
    definition = str_query(request, "definition")
    if definition is not None and not _NAME.match(definition):
        raise invalid_field(400, "invalid-query", "query.definition", f"must match {NAME_PATTERN}")
    limit = int_query(request, "limit", 50, 1, 500)
    cursor = str_query(request, "cursor", 500)
    async with read_guard(), query_errors():
        page = await sagas(request).list_sagas(
            who, status=status, definition=definition, limit=limit, cursor=cursor
        )
    return json_response(SagaPage(items=page.items, next_cursor=page.next_cursor))


async def dlq(request: web.Request) -> web.Response:
    who = principal(request)
    limit = int_query(request, "limit", 50, 1, 500)
    cursor = str_query(request, "cursor", 500)
    async with read_guard(), query_errors():
        page = await sagas(request).dlq(who, limit=limit, cursor=cursor)
    return json_response(SagaPage(items=page.items, next_cursor=page.next_cursor))


async def counters(request: web.Request) -> web.Response:
    who = principal(request)
    async with read_guard():
        found = await sagas(request).counters(who)
    return json_response(found)


def _record(e: RecordedEvent) -> EventRecord:
    try:
        meta: dict[str, Any] = json.loads(e.metadata) if e.metadata else {}
    except ValueError:
        meta = {}
    try:
        data: Any = json.loads(e.data)
    except ValueError:
        data = e.data.decode(errors="replace")
    return EventRecord(
        revision=e.revision,
        position=e.position.encode(),
        type=e.type,
        recorded_at=e.recorded_at.isoformat(),
        data=data,
        actor=meta.get("actor"),
        causation_id=meta.get("$causationId"),
        correlation_id=meta.get("$correlationId"),
        schema_version=meta.get("schema"),
    )


async def events(request: web.Request) -> web.Response:
    saga_id = saga_id_param(request)
    start_from = int_query(request, "from_revision", 0, 0, 10**9)
    limit = int_query(request, "limit", 200, 1, _EVENT_PAGE)
    async with store_guard():
        found = await sagas(request).history(
            principal(request), saga_id, from_revision=start_from, limit=limit + 1
        )
    more = len(found) > limit
    items = [_record(e) for e in found[:limit]]
    return json_response(
        EventHistory(
            saga_id=saga_id, items=items, next_from_revision=items[-1].revision + 1 if more else None
        )
    )


_LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}, description="page size")
_CURSOR = Param("cursor", "query", {"type": "string", "maxLength": 500}, description="from next_cursor")
_READ = (*TENANT_PROBLEMS, 503)

ROUTES = (
    Route(
        "POST",
        BASE,
        start,
        "startSaga",
        "Start a saga (201), or get the same answer again for the same request (200)",
        "instances",
        {
            201: Reply("started", SagaStartedResponse, headers={"Location": "the saga's URL"}),
            200: Reply("started before with the same request", SagaStartedResponse),
        },
        request=StartSagaRequest,
        params=(IDEMPOTENCY_KEY,),
        problems=(*TENANT_PROBLEMS, *BODY_PROBLEMS, 409, 503),
    ),
    Route(
        "GET",
        BASE,
        list_sagas,
        "listSagas",
        "The tenant's sagas, newest first, optionally by status or definition",
        "instances",
        {200: Reply("a page", SagaPage)},
        params=(
            Param("status", "query", {"type": "string", "enum": sorted(_STATUSES)}),
            Param("definition", "query", {"type": "string", "pattern": NAME_PATTERN}),
            _LIMIT,
            _CURSOR,
        ),
        problems=_READ,
    ),
    Route(
        "GET",
        BASE + "/{id}",
        get_saga,
        "getSaga",
        "One saga (read model); min_position waits (bounded) until the read model has reached it",
        "instances",
        {
            200: Reply(
                "the saga",
                SagaView,
                headers={
                    "ETag": "the saga's revision, for If-Match",
                    READ_MODEL_POSITION: "present when min_position was not reached in time",
                },
            )
        },
        params=(
            SAGA_ID,
            Param("min_position", "query", {"type": "string"}, description="a position token from a write"),
            Param("wait_ms", "query", {"type": "integer", "minimum": 0}, description="longest wait"),
        ),
        problems=(*_READ, 404),
    ),
    Route(
        "GET",
        BASE + "/{id}/events",
        events,
        "getSagaEvents",
        "The saga's raw history from the event store (recorded time, type, data, actor, cause)",
        "instances",
        {200: Reply("events in revision order", EventHistory)},
        params=(
            SAGA_ID,
            Param("from_revision", "query", {"type": "integer", "minimum": 0, "maximum": 10**9}),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": _EVENT_PAGE}),
        ),
        problems=(*_READ, 404),
    ),
    Route(
        "GET",
        "/api/v1/sagas/dlq",
        dlq,
        "listDeadLetters",
        "Sagas waiting for a person (dead-lettered or suspended)",
        "instances",
        {200: Reply("a page", SagaPage)},
        params=(_LIMIT, _CURSOR),
        problems=_READ,
    ),
    Route(
        "GET",
        "/api/v1/sagas/metrics",
        counters,
        "getSagaCounters",
        "The tenant's saga counters and duration summaries (read model)",
        "instances",
        {200: Reply("counters", SagaCounters)},
        problems=_READ,
    ),
)
