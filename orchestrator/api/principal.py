"""Who is asking: one place decides the tenant, actor and roles of a request (design.md §9), once, before
any handler runs; every use case then checks the permission table (``orchestrator.app.permissions``).

Modes (``auth.mode``):

- ``none``: every request is the default tenant with every role. For a single developer on loopback;
  the service logs a warning when it listens anywhere else in this mode.
- ``trusted-header``: a gateway in front of the service authenticates and sets ``X-Tenant-Id``,
  ``X-Actor`` and ``X-Roles`` (comma-separated); the service must not be reachable around it.
- ``jwt``: ``Authorization: Bearer <JWT>``, verified by :mod:`orchestrator.api.jwt_auth`; the tenant,
  actor and roles come from claims named in the settings.

In ``trusted-header`` and ``jwt`` modes a request may instead carry an API key (``X-API-Key: sk_…`` or
``Authorization: ApiKey sk_…``, :mod:`orchestrator.app.api_keys`): the key's tenant and roles.

A request that cannot be authenticated answers 401 with ``WWW-Authenticate`` (RFC 6750) and a
problem+json body; every denial is counted (``saga_auth_denials_total``) by reason, never logged with
the credential.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from orchestrator.api.jwt_auth import JwtVerifier, TokenRejected, role_list
from orchestrator.api.problems import Problem, invalid_field
from orchestrator.app.api_keys import ApiKeys
from orchestrator.app.permissions import ALL_ROLES
from orchestrator.app.principal import ADMIN, Principal
from orchestrator.settings import AuthSettings

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)
_ACTOR = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_ROLE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_ROLES = 32
REALM = "saga-orchestrator"
ALL_ROLES_NAMES = frozenset(str(r) for r in ALL_ROLES)
__all__ = ["ADMIN", "TENANT_PATTERN", "Authenticator", "Principal"]


def _challenge(error: str | None = None, description: str | None = None, scheme: str = "Bearer") -> str:
    # RFC 6750 §3: no error attribute when the request carried no credentials at all.
    parts = [f'{scheme} realm="{REALM}"']
    if error is not None:
        parts.append(f'error="{error}"')
    if description is not None:
        parts.append(f'error_description="{description}"')
    return ", ".join(parts)


def _api_key(request: web.Request) -> str | None:
    """The API key a request presents, if it presents one."""
    header = request.headers.get("X-API-Key")
    if header is not None:
        return header.strip()
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    return value.strip() if scheme.lower() == "apikey" else None


class Authenticator:
    """Resolves a request's :class:`Principal` in the configured mode, counting every denial."""

    def __init__(
        self,
        settings: AuthSettings,
        registry: CollectorRegistry | None = None,
        *,
        api_keys: ApiKeys | None = None,
        on_unauthenticated: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        #: told the reason of every 401 (the audit log samples them)
        self._on_unauthenticated = on_unauthenticated
        self._api_keys = api_keys if settings.api_keys.enabled else None
        self.denials = Counter(
            "saga_auth_denials_total",
            "Requests refused for want of authentication (401) or permission (403), by mode and reason",
            ["mode", "reason"],
            registry=registry,
        )
        self.throttled = Counter(
            "saga_tenant_throttled_total",
            "Saga starts refused (429) because the tenant was over a cap, by tenant and cap",
            ["tenant", "cap"],
            registry=registry,
        )
        self.jwt = JwtVerifier(settings.jwt) if settings.mode == "jwt" else None

    async def close(self) -> None:
        if self.jwt is not None:
            await self.jwt.close()

    def forbidden(self) -> None:
        """Count a 403 (the permission table refused an authenticated principal)."""
        self.denials.labels(self._settings.mode, "forbidden").inc()

    async def authenticate(self, request: web.Request) -> Principal:
        mode = self._settings.mode
        try:
            if mode == "none":
                return Principal(self._settings.default_tenant, "anonymous", ALL_ROLES_NAMES, "none")
            presented = _api_key(request)
            if presented is not None:
                return await self._by_api_key(presented)
            if mode == "trusted-header":
                return self._trusted_header(request)
            return await self._bearer(request)
        except TokenRejected as e:
            self._unauthenticated(e.reason)
            scheme = "ApiKey" if e.reason == "api-key" else "Bearer"
            raise Problem(
                401,
                "invalid-api-key" if e.reason == "api-key" else "invalid-token",
                e.description,
                headers={"WWW-Authenticate": _challenge("invalid_token", e.description, scheme)},
            ) from None
        except Problem as e:
            if e.status == 401:
                self._unauthenticated(e.kind)
            else:
                self.denials.labels(mode, e.kind).inc()
            raise

    def _unauthenticated(self, reason: str) -> None:
        self.denials.labels(self._settings.mode, reason).inc()
        if self._on_unauthenticated is not None:
            self._on_unauthenticated(reason)

    async def _by_api_key(self, presented: str) -> Principal:
        found = await self._api_keys.authenticate(presented) if self._api_keys is not None else None
        if found is None:
            raise TokenRejected("api-key", "the API key is not valid (unknown, expired or revoked)")
        return found

    def _roles(self, claimed: Sequence[str]) -> frozenset[str]:
        if not self._settings.rbac_enabled:
            return ALL_ROLES_NAMES
        return frozenset(claimed)

    def _trusted_header(self, request: web.Request) -> Principal:
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
        roles = [r.strip() for r in request.headers.get("X-Roles", "").split(",") if r.strip()]
        if len(roles) > MAX_ROLES or not all(_ROLE.match(r) for r in roles):
            raise invalid_field(400, "invalid-roles", "header.X-Roles", "up to 32 role names")
        return Principal(tenant, actor, self._roles(roles), "trusted-header")

    async def _bearer(self, request: web.Request) -> Principal:
        assert self.jwt is not None
        header = request.headers.get("Authorization")
        if header is None:
            raise Problem(
                401,
                "unauthenticated",
                "this request needs a bearer token (Authorization: Bearer …)",
                headers={"WWW-Authenticate": _challenge()},
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRejected("malformed", "the Authorization header is not a bearer token")
        claims = await self.jwt.verify(token.strip())
        tenant, actor, roles = self.jwt.identity(claims)
        if not isinstance(tenant, str) or not _TENANT.match(tenant):
            raise TokenRejected("claims", "the token names no valid tenant")
        if not isinstance(actor, str) or not _ACTOR.match(actor):
            raise TokenRejected("claims", "the token names no valid subject")
        listed = role_list(roles) if roles is not None else []
        if listed is None or len(listed) > MAX_ROLES or not all(_ROLE.match(r) for r in listed):
            raise TokenRejected("claims", "the token's roles claim is not a list of role names")
        return Principal(tenant, actor, self._roles(listed), "jwt")
