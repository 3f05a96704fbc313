"""Who is asking: one place decides the tenant, actor and roles of a request (design.md §7).

Until JWT lands, ``X-Tenant-Id`` / ``X-Actor`` / ``X-Roles`` are trusted only in ``trusted-header`` mode,
where a gateway in front of the service sets them; in ``none`` mode every request is the default tenant
and may use the admin routes (a single-user development setup).
"""

from __future__ import annotations

import re

from aiohttp import web

from orchestrator.api.problems import invalid_field
from orchestrator.app.principal import ADMIN, Principal
from orchestrator.settings import AuthSettings

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)
_ACTOR = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
__all__ = ["ADMIN", "TENANT_PATTERN", "Principal", "resolve_principal"]


def resolve_principal(request: web.Request, auth: AuthSettings) -> Principal:
    if auth.mode == "none":
        return Principal(auth.default_tenant, "anonymous", frozenset({ADMIN}), "none")
    tenant = request.headers.get("X-Tenant-Id")
    if tenant is None:
        # A gateway that forgot the header must not land its callers in some default tenant.
        raise invalid_field(
            401, "tenant-required", "header.X-Tenant-Id", "required (auth mode trusted-header)"
        )
    if not _TENANT.match(tenant):
        raise invalid_field(400, "invalid-tenant", "header.X-Tenant-Id", f"must match {TENANT_PATTERN}")
    actor = request.headers.get("X-Actor", f"tenant:{tenant}")
    if not _ACTOR.match(actor):
        raise invalid_field(400, "invalid-actor", "header.X-Actor", "1 to 200 printable characters")
    roles = frozenset(r.strip() for r in request.headers.get("X-Roles", "").split(",") if r.strip())
    return Principal(tenant, actor, roles, "trusted-header")
