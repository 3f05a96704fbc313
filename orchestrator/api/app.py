"""The aiohttp application: ``create_app(deps)`` registers every route of the table, the middleware and
the resources that live as long as the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from orchestrator.api import (
    admin,
    api_keys,
    audit,
    definitions,
    health,
    instances,
    interventions,
    service_keys,
    stream,
)
from orchestrator.api.deps import API_KEYS, AUDIT, AUTH, DEPS, OPERATIONS, SAGAS, ApiDeps
from orchestrator.api.middleware import observe, request_histogram
from orchestrator.api.openapi import OPENAPI, ROUTE, build_openapi
from orchestrator.api.principal import Authenticator
from orchestrator.api.routes import Route
from orchestrator.app.api_keys import ApiKeys
from orchestrator.app.audit import SAMPLE_INTERVAL_S, AuditTrail
from orchestrator.app.limits import TenantCaps
from orchestrator.app.operations import Operations
from orchestrator.app.sagas import Sagas
from orchestrator.observability.instrumentation import server_middleware

#: how often the keys' last uses are written (each key at most once per auth.api_keys.use_interval_s)
USE_FLUSH_S = 10.0
#: the brief's paths first, then design.md §7
ROUTES: tuple[Route, ...] = (
    *definitions.ROUTES,
    *instances.ROUTES,
    *interventions.ROUTES,
    *stream.ROUTES,
    *health.ROUTES,
    *admin.ROUTES,
    *api_keys.ROUTES,
    *audit.ROUTES,
    *service_keys.ROUTES,
    ROUTE,
)


async def _api_key_tasks(app: web.Application) -> AsyncIterator[None]:
    """Every node follows the key streams (so a revocation reaches it) and records the keys' last use."""
    keys = app[API_KEYS]

    async def record_uses() -> None:
        while True:
            await asyncio.sleep(USE_FLUSH_S)
            await keys.record_uses()

    tasks = [asyncio.create_task(keys.follow(), name="api-key-index"), asyncio.create_task(record_uses())]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await keys.record_uses()


async def _audit_samples(app: web.Application) -> AsyncIterator[None]:
    """Unauthenticated requests are written to the audit log as one sample record a minute, per node."""
    trail = app[AUDIT]

    async def flush() -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            await trail.flush_samples()

    task = asyncio.create_task(flush(), name="audit-samples")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await trail.flush_samples()


async def _close_auth(app: web.Application) -> None:
    await app[AUTH].close()


def create_app(deps: ApiDeps) -> web.Application:
    middlewares = [observe(request_histogram(deps.registry))]
    if deps.tracer_provider is not None:
        # First: the request's server span holds everything the request does and logs.
        middlewares.insert(0, server_middleware(deps.tracer_provider))
    # Bodies are read (and capped) by json_body; aiohttp's own cap only needs to stay out of its way.
    app = web.Application(
        middlewares=middlewares,
        client_max_size=deps.settings.server.max_body_bytes + 1,
    )
    app[DEPS] = deps
    auth = deps.settings.auth
    app[API_KEYS] = ApiKeys(
        deps.store, rbac_enabled=auth.rbac_enabled, use_interval_s=auth.api_keys.use_interval_s
    )
    app[AUDIT] = AuditTrail(deps.store, operations_tenant=auth.operations)
    app[AUTH] = Authenticator(
        auth, deps.registry, api_keys=app[API_KEYS], on_unauthenticated=app[AUDIT].unauthenticated
    )
    app[OPERATIONS] = Operations(
        deps.store, projector=deps.projector, operations_tenant=deps.settings.auth.operations
    )
    limits = auth.tenant_limits
    app[SAGAS] = Sagas(
        deps.store,
        deps.commands,
        read_models=deps.read_models,
        engine=deps.engine,
        caps=TenantCaps(limits.max_in_flight, limits.start_rate_per_s, limits.start_burst),
    )
    app[OPENAPI] = build_openapi(ROUTES, deps.settings, version=deps.node.version)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
    stream.install(app)
    app.cleanup_ctx.append(admin.rebuild_context)
    app.on_cleanup.append(_close_auth)
    app.cleanup_ctx.append(_audit_samples)
    if auth.mode != "none" and auth.api_keys.enabled:
        app.cleanup_ctx.append(_api_key_tasks)
    return app
