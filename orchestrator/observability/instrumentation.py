"""The maintained OpenTelemetry instrumentations, bound to an explicit tracer provider (never the global
one, and never by patching a class for the whole process): the aiohttp server middleware (the API's
server spans), the aiohttp client trace config (the step call's client span, which sends ``traceparent``
and ``tracestate``), and Redis clients. Each is imported only when tracing is on.

The HTTP spans use the stable HTTP semantic conventions (``http.request.method``, ``url.full``,
``http.response.status_code``, ``error.type``…); ``OTEL_SEMCONV_STABILITY_OPT_IN`` chooses otherwise.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import TracerProvider

_SEMCONV = "OTEL_SEMCONV_STABILITY_OPT_IN"
#: scrapes and probes are not worth a trace each; ``OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS`` (or
#: ``OTEL_PYTHON_EXCLUDED_URLS``) chooses otherwise
_NOT_TRACED = "^/metrics$,^/health"


def server_middleware(provider: TracerProvider) -> Middleware:
    """The aiohttp server instrumentation's middleware: a SERVER span per request, continuing the caller's
    W3C context. Put it first, so everything the request does (and logs) is inside its span."""
    # The instrumentation reads both from the environment only (once per process for the conventions).
    os.environ.setdefault(_SEMCONV, "http")
    if "OTEL_PYTHON_EXCLUDED_URLS" not in os.environ:
        os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", _NOT_TRACED)
    from opentelemetry.instrumentation import aiohttp_server

    # The middleware reads settings (excluded URLs, the semantic conventions, its meters) that only the
    # instrumentor sets up, and the instrumentor would also replace web.Application for the whole process:
    # set them up, then give the class back, and use the middleware where the app is built.
    instrumentor = aiohttp_server.AioHttpServerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        original = web.Application
        with warnings.catch_warnings():
            # aiohttp discourages subclassing Application, which the instrumentor does; the subclass is
            # dropped again at once.
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor.instrument(tracer_provider=provider)
        instrumentor.uninstrument()
        assert web.Application is original
    middleware: Middleware = aiohttp_server.create_aiohttp_middleware(tracer_provider=provider)
    return middleware


def client_trace_configs(provider: TracerProvider | None) -> list[aiohttp.TraceConfig]:
    """For a ``ClientSession``: a CLIENT span per request below the current span, which injects the W3C
    ``traceparent`` / ``tracestate`` headers. None without a provider."""
    if provider is None:
        return []
    from opentelemetry.instrumentation._semconv import _StabilityMode
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    mode = _StabilityMode.HTTP
    if os.environ.get(_SEMCONV, "http").strip() not in ("http", "http/dup"):
        mode = _StabilityMode.DEFAULT
    config: aiohttp.TraceConfig = create_trace_config(tracer_provider=provider, sem_conv_opt_in_mode=mode)
    return [config]


def instrument_redis(client: Any, provider: TracerProvider | None) -> None:
    """Spans for one Redis client's commands (the read models' queries inside a request)."""
    if provider is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=provider)
