"""The route table: one description per operation, from which the app registers its handlers and the
OpenAPI document is generated — so the published contract cannot drift from what is served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from orchestrator.api.models import ProblemModel
from orchestrator.api.problems import PROBLEM_JSON

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"

_PROBLEM_TEXT: Mapping[int, str] = {
    400: "malformed request (the problem names the field)",
    401: "no tenant (trusted-header mode)",
    403: "the admin role is required",
    404: "not found (or another tenant's)",
    409: "conflicts with the current state",
    412: "If-Match does not match the saga's revision",
    413: "body too large",
    415: "not application/json",
    422: "well-formed but invalid (every problem named)",
    503: "a dependency (read model, store, projector) is unavailable",
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: Literal["query", "header", "path"]
    schema: Mapping[str, Any]
    required: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    description: str
    model: type[BaseModel] | None = None
    media: str = JSON
    #: a raw JSON schema for bodies that are not a model (text, event streams)
    schema: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Reply]
    request: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    #: problem statuses this operation can answer, besides its successes
    problems: tuple[int, ...] = ()
    #: scoped to the caller's tenant (documents the trusted-header headers)
    tenant_scoped: bool = True


def problem_replies(statuses: tuple[int, ...]) -> dict[int, Reply]:
    return {s: Reply(_PROBLEM_TEXT.get(s, "error"), ProblemModel, PROBLEM_JSON) for s in statuses}


#: every tenant-scoped operation can answer these (bad or missing tenant header)
TENANT_PROBLEMS = (400, 401)
BODY_PROBLEMS = (400, 413, 415, 422)
SAGA_ID = Param("id", "path", {"type": "string"}, True, "the saga id (as returned by start)")
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"},
    description="a repeated key returns the recorded result and changes nothing",
)
