"""``GET /.well-known/jwks.json``: the public keys participants verify the engine's per-call tokens with
(``services.<name>.token``). Public by nature: no caller needed."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.common import deps
from orchestrator.api.routes import Reply, Route


async def service_jwks(request: web.Request) -> web.Response:
    return web.Response(
        body=deps(request).service_jwks,
        content_type="application/json",
        headers={"Cache-Control": "max-age=300"},
    )


KEY = {"type": "object"}
ROUTES = (
    Route(
        "GET",
        "/.well-known/jwks.json",
        service_jwks,
        "getServiceKeys",
        "The public keys of the tokens the engine sends to participants (JWKS, RFC 7517)",
        "service-keys",
        {
            200: Reply(
                "the key set",
                schema={
                    "type": "object",
                    "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
                },
            )
        },
        tenant_scoped=False,
    ),
)
