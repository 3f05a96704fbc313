"""Saga definitions: register (the brief's JSON verbatim), the catalogue, one definition's versions."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from orchestrator.api.common import deps, json_response, principal, read_guard, sagas, store_guard
from orchestrator.api.json_body import read_json
from orchestrator.api.models import (
    DefinitionDetail,
    DefinitionRegistered,
    DefinitionVersionInfo,
    DefinitionVersions,
)
from orchestrator.api.problems import Problem
from orchestrator.api.routes import BODY_PROBLEMS, TENANT_PROBLEMS, Param, Reply, Route
from orchestrator.domain.definitions import NAME_PATTERN, SagaInput, canonical_dict, definition_hash
from orchestrator.domain.versions import latest_version
from projections.views import DefinitionSummary

BASE = "/api/v1/sagas/definitions"
_NAME = re.compile(NAME_PATTERN)


class DefinitionCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[DefinitionSummary]


async def register(request: web.Request) -> web.Response:
    who = principal(request)
    d = deps(request)
    raw = await read_json(request, d.settings.server.max_body_bytes)
    async with store_guard():
        registered = await sagas(request).register_definition(who, raw)
    definition = registered.definition
    body = DefinitionRegistered(
        name=definition.name,
        version=definition.version,
        hash=definition_hash(definition),
        created=registered.created,
        position=registered.position.encode() if registered.position else None,
        definition=canonical_dict(definition),
    )
    location = f"{BASE}/{definition.name}/versions/{definition.version}"
    return json_response(body, 201 if registered.created else 200, {"Location": location})


async def catalogue(request: web.Request) -> web.Response:
    who = principal(request)
    async with read_guard():
        items = await sagas(request).definitions(who)
    return json_response(DefinitionCatalogue(items=items))


async def _versions(request: web.Request) -> tuple[str, dict[str, tuple[dict[str, Any], str]]]:
    who = principal(request)
    name = request.match_info["name"]
    if not _NAME.match(name):
        raise Problem(404, "not-found", f"no definition {name!r}")
    async with store_guard():
        versions = await sagas(request).definition_versions(who, name)
    if not versions:
        raise Problem(404, "not-found", f"no definition {name!r}")
    return name, versions


async def versions(request: web.Request) -> web.Response:
    name, found = await _versions(request)
    latest = latest_version(found)
    assert latest is not None  # found is not empty
    items = [DefinitionVersionInfo(version=v, hash=h) for v, (_, h) in found.items()]
    return json_response(DefinitionVersions(name=name, latest=latest, versions=items))


async def version(request: web.Request) -> web.Response:
    name, found = await _versions(request)
    wanted = request.match_info["version"]
    if wanted not in found:
        raise Problem(404, "not-found", f"no version {wanted!r} of definition {name!r}")
    definition, digest = found[wanted]
    return json_response(DefinitionDetail(name=name, version=wanted, hash=digest, definition=definition))


_NAME_PARAM = Param("name", "path", {"type": "string"}, True, "the definition's name")

ROUTES = (
    Route(
        "POST",
        BASE,
        register,
        "registerDefinition",
        "Register a definition version (the same content again is a no-op; different content is 409)",
        "definitions",
        {
            201: Reply("registered", DefinitionRegistered, headers={"Location": "the version's URL"}),
            200: Reply("this exact version was registered before", DefinitionRegistered),
        },
        request=SagaInput,
        problems=(*TENANT_PROBLEMS, *BODY_PROBLEMS, 409, 503),
    ),
    Route(
        "GET",
        BASE,
        catalogue,
        "listDefinitions",
        "The tenant's definition catalogue (read model)",
        "definitions",
        {200: Reply("the catalogue", DefinitionCatalogue)},
        problems=(*TENANT_PROBLEMS, 503),
    ),
    Route(
        "GET",
        BASE + "/{name}",
        versions,
        "getDefinition",
        "One definition's versions (from the event store)",
        "definitions",
        {200: Reply("the versions", DefinitionVersions)},
        params=(_NAME_PARAM,),
        problems=(*TENANT_PROBLEMS, 404, 503),
    ),
    Route(
        "GET",
        BASE + "/{name}/versions/{version}",
        version,
        "getDefinitionVersion",
        "One version, canonical (every default spelled out), with its hash",
        "definitions",
        {200: Reply("the version", DefinitionDetail)},
        params=(_NAME_PARAM, Param("version", "path", {"type": "string"}, True, "a semantic version")),
        problems=(*TENANT_PROBLEMS, 404, 503),
    ),
)
