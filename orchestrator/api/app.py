"""The aiohttp application: ``create_app(deps)`` registers every route of the table, the middleware and
the resources that live as long as the app."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api import admin, definitions, health, instances, interventions, stream
from orchestrator.api.deps import DEPS, OPERATIONS, SAGAS, ApiDeps
from orchestrator.api.middleware import observe, request_histogram
from orchestrator.api.openapi import OPENAPI, ROUTE, build_openapi
from orchestrator.api.routes import Route
from orchestrator.app.operations import Operations
from orchestrator.app.sagas import Sagas

#: the brief's paths first, then design.md §7
ROUTES: tuple[Route, ...] = (
    *definitions.ROUTES,
    *instances.ROUTES,
    *interventions.ROUTES,
    *stream.ROUTES,
    *health.ROUTES,
    *admin.ROUTES,
    ROUTE,
)


def create_app(deps: ApiDeps) -> web.Application:
    # Bodies are read (and capped) by json_body; aiohttp's own cap only needs to stay out of its way.
    app = web.Application(
        middlewares=[observe(request_histogram(deps.registry))],
        client_max_size=deps.settings.server.max_body_bytes + 1,
    )
    app[DEPS] = deps
    app[OPERATIONS] = Operations(deps.store)
    app[SAGAS] = Sagas(deps.store, deps.commands, read_models=deps.read_models, engine=deps.engine)
    app[OPENAPI] = build_openapi(ROUTES, deps.settings, version=deps.node.version)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
    stream.install(app)
    app.cleanup_ctx.append(admin.rebuild_context)
    return app
