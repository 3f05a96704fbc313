"""One middleware per request: trace id and context binding, the problem+json translation of every
error, the request histogram, and exactly one structured log line."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Histogram

from orchestrator.api.common import authenticate
from orchestrator.api.deps import AUDIT, AUTH
from orchestrator.api.problems import Problem, from_app_error, from_http_exception
from orchestrator.app.errors import AppError, Forbidden, TooManyRequests
from orchestrator.app.principal import Principal

log = structlog.get_logger("orchestrator.api")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: the label for requests that matched no route, so unknown paths cannot blow up the series count
UNMATCHED = "unmatched"


def trace_id(request: web.Request) -> str:
    """The trace of the request's server span (tracing on); else from a W3C ``traceparent`` when the
    caller sent a valid one, else a fresh id for this request."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return format(current.trace_id, "032x")
    m = _TRACEPARENT.match(request.headers.get("traceparent", "").strip().lower())
    if m and m.group(1) != "0" * 32:
        return m.group(1)
    return uuid.uuid4().hex


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def request_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "saga_http_request_duration_seconds",
        "HTTP requests by method, route template and status (SSE: until the stream ends)",
        ["method", "route", "status"],
        buckets=_BUCKETS,
        registry=registry,
    )


def observe(histogram: Histogram) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        trace = trace_id(request)
        route = route_template(request)
        saga_id = request.match_info.get("id")
        tenant: str | None = None
        who: Principal | None = None
        with structlog.contextvars.bound_contextvars(trace_id=trace, saga_id=saga_id):
            try:
                # Before the handler: a request that is not authenticated runs nothing.
                who = await authenticate(request)
                tenant = who.tenant if who is not None else None
                with structlog.contextvars.bound_contextvars(tenant=tenant):
                    response = await handler(request)
            except Problem as e:
                response = e.response(request.path)
            except AppError as e:
                if isinstance(e, Forbidden):
                    request.app[AUTH].forbidden()
                    if who is not None:
                        await request.app[AUDIT].denied(
                            who,
                            f"{request.method} {route}",
                            e.message,
                            request_id=request.headers.get("X-Request-Id"),
                            trace_id=trace,
                        )
                elif isinstance(e, TooManyRequests):
                    request.app[AUTH].throttled.labels(tenant or "", e.code).inc()
                response = from_app_error(e).response(request.path)
            except web.HTTPException as e:
                response = from_http_exception(e).response(request.path)
            except Exception:
                log.exception("http_unhandled_error", method=request.method, route=route)
                response = Problem(500, "internal", "internal error; see the server log").response()
            elapsed = time.perf_counter() - started
            histogram.labels(request.method, route, str(response.status)).observe(elapsed)
            if not response.prepared:
                response.headers["X-Trace-Id"] = trace
            log.info(
                "http_request",
                method=request.method,
                route=route,
                path=request.path,
                status=response.status,
                duration_ms=round(elapsed * 1000, 3),
                tenant=tenant,
                saga_id=saga_id,
                trace_id=trace,
            )
        return response

    return middleware
