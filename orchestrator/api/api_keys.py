"""API keys of the caller's tenant (``api-keys:manage``): create, list, rotate, revoke. The secret is in
the answer to create and rotate only; lists never show it (nor its hash)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel

from orchestrator.api.common import deps, json_response, principal, store_guard, validate
from orchestrator.api.deps import API_KEYS
from orchestrator.api.json_body import read_json
from orchestrator.api.models import (
    ApiKeyList,
    ApiKeyModel,
    CreateApiKeyRequest,
    IssuedApiKey,
    RevokeApiKeyRequest,
    RotateApiKeyRequest,
)
from orchestrator.api.routes import BODY_PROBLEMS, TENANT_PROBLEMS, Param, Reply, Route
from orchestrator.app.api_keys import ApiKey, Issued

BASE = "/api/v1/api-keys"
M = TypeVar("M", bound=BaseModel)
KEY_ID = Param("key_id", "path", {"type": "string", "pattern": "^[0-9a-f]{16}$"}, True, "the key's id")


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def key_model(key: ApiKey) -> ApiKeyModel:
    return ApiKeyModel(
        key_id=key.key_id,
        name=key.name,
        roles=list(key.roles),
        status=key.status(datetime.now(UTC)),  # type: ignore[arg-type]
        created_at=key.created_at.isoformat(),
        created_by=key.created_by,
        expires_at=_when(key.expires_at),
        rotated_at=_when(key.rotated_at),
        revoked_at=_when(key.revoked_at),
        last_used_at=_when(key.last_used_at),
    )


async def _body(request: web.Request, model: type[M]) -> M:
    return validate(model, await read_json(request, deps(request).settings.server.max_body_bytes))


def _issued(issued: Issued) -> IssuedApiKey:
    return IssuedApiKey(key=key_model(issued.key), secret=issued.secret)


async def create(request: web.Request) -> web.Response:
    who = principal(request)
    body = validate(
        CreateApiKeyRequest, await read_json(request, deps(request).settings.server.max_body_bytes)
    )
    expires = (
        datetime.now(UTC) + timedelta(seconds=body.expires_in_s) if body.expires_in_s is not None else None
    )
    async with store_guard():
        issued = await request.app[API_KEYS].create(who, name=body.name, roles=body.roles, expires_at=expires)
    # no-store: the answer carries a secret
    headers = {"Location": f"{BASE}/{issued.key.key_id}", "Cache-Control": "no-store"}
    return json_response(_issued(issued), 201, headers)


async def listing(request: web.Request) -> web.Response:
    async with store_guard():
        keys = await request.app[API_KEYS].list(principal(request))
    return json_response(ApiKeyList(items=[key_model(k) for k in keys]))


async def rotate(request: web.Request) -> web.Response:
    who = principal(request)
    body = validate(
        RotateApiKeyRequest, await read_json(request, deps(request).settings.server.max_body_bytes)
    )
    async with store_guard():
        issued = await request.app[API_KEYS].rotate(who, request.match_info["key_id"], grace_s=body.grace_s)
    return json_response(_issued(issued), 200, {"Cache-Control": "no-store"})


async def revoke(request: web.Request) -> web.Response:
    who = principal(request)
    body = validate(
        RevokeApiKeyRequest, await read_json(request, deps(request).settings.server.max_body_bytes)
    )
    async with store_guard():
        key = await request.app[API_KEYS].revoke(who, request.match_info["key_id"], reason=body.reason)
    return json_response(key_model(key))


_PROBLEMS = (*TENANT_PROBLEMS, 403)
ROUTES = (
    Route(
        "POST",
        BASE,
        create,
        "createApiKey",
        "Create an API key for a service; the secret is in this answer only",
        "api-keys",
        {201: Reply("created", IssuedApiKey, headers={"Location": "the key"})},
        request=CreateApiKeyRequest,
        problems=(*_PROBLEMS, *BODY_PROBLEMS, 503),
    ),
    Route(
        "GET",
        BASE,
        listing,
        "listApiKeys",
        "The tenant's API keys (never their secrets)",
        "api-keys",
        {200: Reply("the keys", ApiKeyList)},
        problems=(*_PROBLEMS, 503),
    ),
    Route(
        "POST",
        BASE + "/{key_id}/rotate",
        rotate,
        "rotateApiKey",
        "A new secret for the key; the previous one works for grace_s more seconds",
        "api-keys",
        {200: Reply("rotated", IssuedApiKey)},
        request=RotateApiKeyRequest,
        params=(KEY_ID,),
        problems=(*_PROBLEMS, *BODY_PROBLEMS, 404, 409, 503),
    ),
    Route(
        "POST",
        BASE + "/{key_id}/revoke",
        revoke,
        "revokeApiKey",
        "Revoke the key: every node refuses it within seconds",
        "api-keys",
        {200: Reply("revoked", ApiKeyModel)},
        request=RevokeApiKeyRequest,
        params=(KEY_ID,),
        problems=(*_PROBLEMS, *BODY_PROBLEMS, 404, 503),
    ),
)
