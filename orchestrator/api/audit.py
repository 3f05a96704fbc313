"""``GET /api/v1/audit``: the caller's tenant's audit log (``audit:read``), oldest first, filtered by time,
actor, saga and action, a page at a time (``cursor``)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from orchestrator.api.common import int_query, json_response, principal, store_guard
from orchestrator.api.deps import AUDIT
from orchestrator.api.models import AuditPageModel, AuditRecordModel
from orchestrator.api.problems import invalid_field
from orchestrator.api.routes import TENANT_PROBLEMS, Param, Reply, Route
from orchestrator.app.audit import records_json

PATH = "/api/v1/audit"


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid_field(400, "invalid-query", f"query.{name}", "an ISO 8601 time") from None
    if value.tzinfo is None:
        raise invalid_field(400, "invalid-query", f"query.{name}", "needs a time zone (Z or ±hh:mm)")
    return value


async def audit_log(request: web.Request) -> web.Response:
    who = principal(request)
    cursor_raw = request.query.get("cursor")
    if cursor_raw is not None and not cursor_raw.isdigit():
        raise invalid_field(400, "invalid-query", "query.cursor", "not a cursor from this log")
    async with store_guard():
        page = await request.app[AUDIT].records(
            who,
            since=_time(request, "since"),
            until=_time(request, "until"),
            actor=request.query.get("actor"),
            saga_id=request.query.get("saga_id"),
            action=request.query.get("action"),
            limit=int_query(request, "limit", 100, 1, 1000),
            cursor=int(cursor_raw) if cursor_raw is not None else None,
        )
    items = [AuditRecordModel(**r) for r in records_json(page.items)]
    return json_response(AuditPageModel(items=items, next_cursor=page.next_cursor))


def _q(name: str, description: str, schema: dict[str, str] | None = None) -> Param:
    return Param(name, "query", schema or {"type": "string"}, False, description)


ROUTES = (
    Route(
        "GET",
        PATH,
        audit_log,
        "getAuditLog",
        "The tenant's audit log: who did what, when, with what result (the auditor's)",
        "audit",
        {200: Reply("a page of records, oldest first", AuditPageModel)},
        params=(
            _q(
                "since",
                "records at or after this time (ISO 8601 with a zone)",
                {"type": "string", "format": "date-time"},
            ),
            _q("until", "records before this time", {"type": "string", "format": "date-time"}),
            _q("actor", "only this actor"),
            _q("saga_id", "only records about this saga"),
            _q("action", "an action, or a prefix of actions (saga, api-key, …)"),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, False, "at most"),
            _q("cursor", "next_cursor of the previous page"),
        ),
        problems=(*TENANT_PROBLEMS, 403, 503),
    ),
)
