"""OpenAPI 3.1 from the route table and the pydantic models (JSON Schema 2020-12 is OpenAPI 3.1's
dialect, so the models' schemas are used as they are)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from orchestrator.api.principal import TENANT_PATTERN
from orchestrator.api.routes import JSON, Param, Reply, Route, problem_replies
from orchestrator.settings import Settings

_REF = "#/components/schemas/{model}"
_TENANT_PARAMS = (
    Param("X-Tenant-Id", "header", {"type": "string", "pattern": TENANT_PATTERN}, True, "set by the gateway"),
    Param("X-Actor", "header", {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]{1,200}$"}),
    Param("X-Roles", "header", {"type": "string", "maxLength": 500}, description="comma-separated roles"),
)


def _models(routes: Iterable[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in routes:
        if route.request is not None:
            seen[(route.request, "validation")] = None
        for reply in [*route.responses.values(), *problem_replies(route.problems).values()]:
            if reply.model is not None:
                seen[(reply.model, "serialization")] = None
    return list(seen)


def _param(p: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "in": p.location, "required": p.required, "schema": dict(p.schema)}
    if p.description:
        out["description"] = p.description
    return out


def _reply(reply: Reply, refs: Mapping[tuple[Any, JsonSchemaMode], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        out["content"] = {reply.media: {"schema": refs[(reply.model, "serialization")]}}
    elif reply.schema is not None:
        out["content"] = {reply.media: {"schema": dict(reply.schema)}}
    if reply.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in reply.headers.items()
        }
    return out


def build_openapi(routes: Sequence[Route], settings: Settings, *, version: str) -> dict[str, Any]:
    refs, definitions = models_json_schema(_models(routes), ref_template=_REF)
    trusted = settings.auth.mode == "trusted-header"
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params = list(route.params)
        if route.tenant_scoped and trusted:
            params.extend(_TENANT_PARAMS)
        replies = {**problem_replies(route.problems), **route.responses}
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
            "responses": {str(status): _reply(r, refs) for status, r in sorted(replies.items())},
        }
        if params:
            operation["parameters"] = [_param(p) for p in params]
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": refs[(route.request, "validation")]}},
            }
        method: Literal["get", "post"] = "post" if route.method == "POST" else "get"
        paths.setdefault(route.path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "saga-orchestrator",
            "version": version,
            "description": "Event-sourced saga orchestrator. Errors are application/problem+json (RFC 9457).",
        },
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


OPENAPI = web.AppKey("openapi", dict[str, Any])


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


ROUTE = Route(
    "GET",
    "/api/v1/openapi.json",
    serve_openapi,
    "openapi",
    "This document",
    "meta",
    {200: Reply("OpenAPI 3.1", schema={"type": "object"})},
    tenant_scoped=False,
)
