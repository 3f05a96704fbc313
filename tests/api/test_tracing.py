"""Tracing through the API: the request's server span holds the saga's start, a caller's trace context is
continued, the answer names the trace, and the spans reach a real OTLP/HTTP receiver as protobuf."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from orchestrator.observability import tracing_setup
from orchestrator.settings import TracingSettings
from tests.api.conftest import INSTANCES, ApiFactory
from tests.seed import SEED_DEFINITION, SEED_START

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _hex(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


async def test_the_request_span_holds_the_saga_start_and_continues_the_callers_trace(
    make_api: ApiFactory,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api = await make_api(tracer_provider=provider)
    assert (await api.register(SEED_DEFINITION)).status == 201
    caller = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
    response = await api.post(INSTANCES, SEED_START, {"traceparent": caller})
    assert response.status == 201
    assert response.headers["X-Trace-Id"] == CALLER_TRACE
    saga_id = (await response.json())["saga_id"]
    await api.wait_for(saga_id, {"SagaCompleted"})
    await until(
        lambda: any(e.name == "saga.completed" for s in exporter.get_finished_spans() for e in s.events)
    )
    spans = list(exporter.get_finished_spans())
    server = next(s for s in spans if s.kind is SpanKind.SERVER and s.name == f"POST {INSTANCES}")
    attributes = server.attributes or {}
    # The stable HTTP conventions.
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == INSTANCES
    assert attributes["http.response.status_code"] == 201
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    start = next(s for s in spans if s.name == "saga.start order-processing")
    assert start.parent is not None
    assert server.context is not None
    assert start.parent.span_id == server.context.span_id
    steps = [s for s in spans if s.name.startswith("saga.step ")]
    assert len(steps) == 3
    # The whole saga is in the caller's trace, and so is what each participant received.
    assert {_hex(s)[0] for s in [start, *steps]} == {CALLER_TRACE}
    assert {r.traceparent.split("-")[1] for r in api.participants.received} == {CALLER_TRACE}
    first = (await api.history(saga_id))[0]
    assert json.loads(first.metadata)["traceparent"].split("-")[1:3] == list(_hex(start))


async def test_health_and_metrics_are_not_traced(make_api: ApiFactory) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api = await make_api(tracer_provider=provider)
    for path in ("/health/live", "/metrics"):
        assert (await api.client.get(path)).status == 200
    assert (await api.client.get(f"{INSTANCES}?limit=1")).status == 503  # no read model here: traced
    assert [s.name for s in exporter.get_finished_spans()] == [f"GET {INSTANCES}"]


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each ``ExportTraceServiceRequest``."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[tuple[str, str, dict[str, str]]]:
        """(service name, span name, trace id) of everything received."""
        found = []
        for message in self.requests:
            for resource_spans in message.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append((resource["service.name"], span.name, {"trace_id": span.trace_id.hex()}))
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield found, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_spans_reach_an_otlp_http_receiver(
    make_api: ApiFactory, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    found, url = receiver
    settings = TracingSettings(enabled=True, endpoint=url, service_name="saga-wire-test")
    chosen = tracing_setup.plan(settings)
    assert chosen.endpoint == f"{url}/v1/traces"
    # The provider the composition root builds: batches, OTLP/HTTP protobuf.
    provider = tracing_setup.build_provider(chosen)
    try:
        api = await make_api(tracer_provider=provider)
        assert (await api.register(SEED_DEFINITION)).status == 201
        response = await api.post(INSTANCES, SEED_START)
        trace = response.headers["X-Trace-Id"]
        saga_id = (await response.json())["saga_id"]
        await api.wait_for(saga_id, {"SagaCompleted"})
        await until(lambda: len(api.participants.received) == 3)

        def exported() -> set[str]:
            return {name for _, name, ids in found.spans() if ids["trace_id"] == trace}

        async def flushed() -> bool:
            await asyncio.to_thread(provider.force_flush)
            return "saga.step process-payment" in exported()

        deadline = asyncio.get_running_loop().time() + 10
        while not await flushed():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(provider.shutdown)
    assert set(found.content_types) == {"application/x-protobuf"}
    assert {
        f"POST {INSTANCES}",
        "saga.start order-processing",
        "saga.step validate-order",
        "saga.step reserve-inventory",
        "POST",
    } <= exported()
    assert {service for service, _, _ in found.spans()} == {"saga-wire-test"}
