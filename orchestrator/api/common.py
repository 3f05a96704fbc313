"""Small helpers every handler module shares: dependencies, principal, JSON answers, parameter parsing,
body validation and the read-model guard."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator.api.deps import AUTH, DEPS, OPERATIONS, PRINCIPAL, SAGAS, ApiDeps
from orchestrator.api.principal import Principal
from orchestrator.api.problems import FieldProblem, Problem, from_app_error, invalid_field
from orchestrator.app.errors import Invalid
from orchestrator.app.operations import Operations
from orchestrator.app.ports import ReadModelUnavailable
from orchestrator.app.sagas import Sagas
from orchestrator.eventstore.errors import OperationalError

M = TypeVar("M", bound=BaseModel)


def deps(request: web.Request) -> ApiDeps:
    return request.app[DEPS]


def principal(request: web.Request) -> Principal:
    """Resolved once per request, before the handler, by the middleware (``authenticated``)."""
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        # A route the middleware does not authenticate asked who the caller is: a bug, never a default.
        raise Problem(500, "internal", "this route has no authenticated caller")
    return found


def needs_principal(path: str) -> bool:
    """Every ``/api/`` route but the OpenAPI document; health and metrics need no caller."""
    return path.startswith("/api/") and path != "/api/v1/openapi.json"


async def authenticate(request: web.Request) -> Principal | None:
    """The caller of a route that needs one (raises the 401/400 problem), else None."""
    if not needs_principal(request.path):
        return None
    found: Principal = await request.app[AUTH].authenticate(request)
    request[PRINCIPAL] = found
    return found


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=model.model_dump_json().encode(),
        content_type="application/json",
        headers=headers,
    )


def saga_id_param(request: web.Request) -> str:
    """Saga ids are UUIDs; anything else cannot name a saga, so it is simply not found."""
    raw = request.match_info["id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise Problem(404, "not-found", f"no saga {raw!r}") from None


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [
            FieldProblem(".".join(["body", *(str(p) for p in err["loc"])]), err["msg"])
            for err in e.errors(include_url=False)
        ]
        raise Problem(
            422, "invalid-request", "; ".join(f"{f.field}: {f.problem}" for f in errors), errors
        ) from None


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise invalid_field(400, "invalid-query", f"query.{name}", f"an integer from {low} to {high}")
    return int(raw)


def str_query(request: web.Request, name: str, max_length: int = 200) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise invalid_field(400, "invalid-query", f"query.{name}", f"at most {max_length} characters")
    return raw


def operations(request: web.Request) -> Operations:
    """The admin use cases."""
    return request.app[OPERATIONS]


def sagas(request: web.Request) -> Sagas:
    """The use cases (every handler calls these and nothing deeper)."""
    return request.app[SAGAS]


_RETRY = {"Retry-After": "5"}


@asynccontextmanager
async def read_guard() -> AsyncIterator[None]:
    """Redis down or slow: this read answers 503 (commands and health are unaffected)."""
    try:
        yield
    except ReadModelUnavailable as e:
        raise Problem(
            503, "read-model-unavailable", f"the read model is unavailable: {e}", headers=_RETRY
        ) from e
    except (ConnectionError, TimeoutError) as e:
        raise Problem(503, "read-model-unavailable", "the read model is unavailable", headers=_RETRY) from e


@asynccontextmanager
async def store_guard() -> AsyncIterator[None]:
    try:
        yield
    except OperationalError as e:
        raise Problem(503, "store-unavailable", f"the event store is unavailable: {e}", headers=_RETRY) from e


@asynccontextmanager
async def query_errors() -> AsyncIterator[None]:
    """A use case's refusal of what the query string asked (a cursor from another list, say): a malformed
    query parameter is a 400 here, as every other query parameter the API checks itself."""
    try:
        yield
    except Invalid as e:
        raise from_app_error(e, "query", 400) from None
