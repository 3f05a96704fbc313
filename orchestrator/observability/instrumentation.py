"""The maintained OpenTelemetry instrumentations, bound to an explicit tracer provider (never the global
one): the aiohttp server middleware (the API's server spans), the aiohttp client trace config (the step
call's client span, which sends ``traceparent`` and ``tracestate``), Redis clients, and the KurrentDB
adapter's gRPC calls. Each is imported only when tracing is on.

Only the gRPC one patches something for the whole process (``grpc.aio``'s channel factories, for as long
as tracing is set up): the KurrentDB client takes no interceptors and makes its channels itself, again on
every reconnect. Its interceptors put the trace context in the call's headers and never touch an event;
the KurrentDB client's own instrumentor is not used, because it writes trace fields into
``NewEvent.metadata`` after our ids hashed it (design.md §0.5).

The HTTP spans use the stable HTTP semantic conventions (``http.request.method``, ``url.full``,
``http.response.status_code``, ``error.type``…); ``OTEL_SEMCONV_STABILITY_OPT_IN`` chooses otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

_SEMCONV = "OTEL_SEMCONV_STABILITY_OPT_IN"
#: scrapes and probes are not worth a trace each; ``OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS`` (or
#: ``OTEL_PYTHON_EXCLUDED_URLS``) chooses otherwise
_NOT_TRACED = "^/metrics$,^/health"


def _stable_http_conventions() -> None:
    """The HTTP semantic conventions unless ``OTEL_SEMCONV_STABILITY_OPT_IN`` says otherwise. The choice is
    read once per process, by whichever instrumentation is set up first (the gRPC one, before the app)."""
    os.environ.setdefault(_SEMCONV, "http")


def server_middleware(provider: TracerProvider) -> Middleware:
    """The aiohttp server instrumentation's middleware: a SERVER span per request, continuing the caller's
    W3C context. Put it first, so everything the request does (and logs) is inside its span."""
    # The instrumentation reads both from the environment only (once per process for the conventions).
    _stable_http_conventions()
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


@contextlib.contextmanager
def grpc_client_spans(provider: TracerProvider) -> Iterator[None]:
    """A CLIENT span per gRPC call (``rpc.system`` grpc, ``rpc.service``, ``rpc.method``) of every
    ``grpc.aio`` channel created inside this block, below the current span; undone when it ends.

    Enter it before the KurrentDB adapter connects. Server-side gRPC is not instrumented, and neither are
    synchronous channels (the OTLP/gRPC exporter's). ``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES`` leaves
    services out."""
    _stable_http_conventions()
    instrumentor = _grpc_instrumentor()()
    if instrumentor.is_instrumented_by_opentelemetry:
        # A singleton, already set up by another tracing block of this process (tests run several): it
        # keeps its provider, and its block undoes it.
        yield
        return
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


@functools.cache
def _grpc_instrumentor() -> Any:
    """The maintained ``grpc.aio`` client instrumentor, whose streaming calls' spans end with the call.

    Upstream ends such a span when the consumer reads the responses to the end. The KurrentDB client
    stops reading once it has what it wanted (it cancels ``BatchAppend`` after the one answer, a
    subscription when it stops, and raises out of a stream on an error answer): that span would end only
    when the garbage collector finalizes the unread stream, long after the call (every append's span)."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, _aio_client

    class Instrumentor(GrpcAioInstrumentorClient):
        def _add_interceptors(self, tracer_provider: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            kwargs = super()._add_interceptors(tracer_provider, kwargs)  # type: ignore[no-untyped-call]
            for interceptor in kwargs["interceptors"]:
                if isinstance(interceptor, _aio_client._BaseAioClientInterceptor):
                    interceptor._wrap_stream_response = functools.partial(  # type: ignore[method-assign]
                        _stream_responses, interceptor
                    )
            return kwargs

    return Instrumentor


#: the tasks that read a finished stream's status for its span (a task needs a reference until it ends)
_settling: set[asyncio.Task[None]] = set()


async def _stream_responses(interceptor: Any, span: Span, call: Any) -> AsyncIterator[Any]:
    """Upstream's ``_wrap_stream_response``, plus: the span ends when the call does, whether or not the
    consumer reads on, and nothing touches it after that. A call the client cancelled is not an error
    (the client has its answer); a status the server ended it with is recorded as upstream records a
    unary call's."""

    def finished(done: Any) -> None:
        if not span.is_recording():
            return
        if done.cancelled():
            span.end()
            return
        task = asyncio.get_running_loop().create_task(_settle(span, done))
        _settling.add(task)
        task.add_done_callback(_settling.discard)

    call.add_done_callback(finished)
    try:
        async for response in call:
            if interceptor._response_hook and span.is_recording():
                interceptor._call_response_hook(span, response)
            yield response
    except Exception as e:
        if span.is_recording():
            interceptor.add_error_details_to_span(span, e)
        raise
    finally:
        if span.is_recording():
            span.end()


async def _settle(span: Span, call: Any) -> None:
    """End the span of a call the server ended (its status is known by now, but only to a coroutine)."""
    from opentelemetry.semconv._incubating.attributes.rpc_attributes import RPC_GRPC_STATUS_CODE

    code = await call.code()
    details = await call.details()
    if not span.is_recording():  # the consumer read to the end, or to the error, and ended it first
        return
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if code.value[0] != 0:
        span.set_status(Status(StatusCode.ERROR, description=details))
    span.end()
