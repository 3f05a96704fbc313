"""The KurrentDB adapter's gRPC calls as client spans (opentelemetry-instrumentation-grpc), set up by the
composition root exactly as ``serve`` does (``open_tracing``, then ``open_store``), against the local
KurrentDB-compatible server (a subprocess, not instrumented): the spans sit below the current span, an
append's span ends with its call, a resend stays byte-identical (invariant 5: the trace context goes in
the call's headers, never in an event), and with tracing off nothing is patched."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator.composition import open_store, open_tracing
from orchestrator.domain.events import StepStarted
from orchestrator.eventstore import NO_STREAM, EventStore, NewEvent, StreamDeleted, WrongExpectedRevision
from orchestrator.eventstore.types import Expected
from orchestrator.observability.tracing import TraceContext
from orchestrator.records.codec import Envelope, to_new_events
from orchestrator.settings import Settings
from tests.contract.harness import LocalServer
from tests.contract.support import Names

pytestmark = pytest.mark.timeout(60)

STREAMS = "event_store.client.streams.Streams"
#: what the codec writes for an intent, and nothing else may appear in the stored metadata
METADATA_KEYS = {"tenant", "$correlationId", "$causationId", "actor", "traceparent", "schema", "nonce"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    local = LocalServer(tmp_path_factory.mktemp("eventstore-server-tracing"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def names(server: LocalServer) -> Iterator[Names]:
    refused_before = len(server.refused())
    yield Names.fresh()
    refused = server.refused()[refused_before:]
    assert refused == [], f"the local server refused or failed requests: {refused}"


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings decide (a parent-based ratio sampler that drops orphan client spans); no exporter but
    the test's own."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)


def settings(url: str, *, tracing: bool) -> Settings:
    return Settings(event_store={"url": url}, observability={"tracing": {"enabled": tracing}})


@dataclass
class Traced:
    store: EventStore
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def grpc_spans(self) -> list[ReadableSpan]:
        spans = [s for s in self.exporter.get_finished_spans() if (s.attributes or {}).get("rpc.system")]
        return sorted(spans, key=lambda s: s.start_time or 0)


@contextlib.asynccontextmanager
async def traced_store(url: str) -> AsyncIterator[Traced]:
    """What ``serve`` does: tracing first, then the store (whose channel is made instrumented)."""
    async with open_tracing(settings(url, tracing=True)) as provider:
        assert isinstance(provider, TracerProvider)
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        async with open_store(settings(url, tracing=True)) as store:
            yield Traced(store, provider, exporter)


def intent(stream: str, expected: Expected, context: TraceContext) -> list[NewEvent]:
    """An intent as the engine appends it: the trace context is in the metadata before the ids hash it."""
    started = StepStarted("reserve", 1, 0, "key-1", "hash-1", 1_700_000_000_000)
    envelope = Envelope(
        tenant="acme",
        actor="engine",
        correlation_id="c-1",
        causation_id="c-1",
        traceparent=context.traceparent,
        tracestate=context.tracestate,
    )
    return to_new_events(stream, expected, [started], envelope, nonce="incarnation-1:7")


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_appends_and_reads_are_client_spans_below_the_current_span(
    server: LocalServer, names: Names, otel_env: None
) -> None:
    stream = names.stream("order")
    async with traced_store(server.url) as traced:
        with traced.provider.get_tracer("test").start_as_current_span("work") as work:
            await traced.store.append(stream, names.events(2), expected=NO_STREAM)
            assert len(await traced.store.read_stream(stream)) == 2
        spans = traced.grpc_spans()
    # Connecting (and its ping) had no span above it: no trace of its own (NoOrphanClients).
    assert [(s.name, s.kind) for s in spans] == [
        (f"/{STREAMS}/BatchAppend", SpanKind.CLIENT),
        (f"/{STREAMS}/Read", SpanKind.CLIENT),
    ]
    for span, method in zip(spans, ["BatchAppend", "Read"], strict=True):
        assert span.parent is not None
        assert span.parent.span_id == work.get_span_context().span_id
        assert span.context is not None
        assert span.context.trace_id == work.get_span_context().trace_id
        assert dict(span.attributes or {}) == {
            "rpc.system": "grpc",
            "rpc.service": STREAMS,
            "rpc.method": method,
            "rpc.grpc.status_code": 0,
        }
        assert span.status.status_code is StatusCode.UNSET


async def test_an_appends_span_ends_with_its_call(server: LocalServer, names: Names, otel_env: None) -> None:
    # The client stops reading BatchAppend once it has the answer (it cancels the call, or raises out of
    # it on a refusal). The span must end with the call, not when the garbage collector finalizes the
    # unread stream (which is when upstream's wrapper would end it): collection is off meanwhile.
    stream = names.stream("order")
    async with traced_store(server.url) as traced:
        with traced.provider.get_tracer("test").start_as_current_span("work"):
            gc.disable()
            try:
                await traced.store.append(stream, names.events(1), expected=NO_STREAM)
                assert [s.name for s in traced.grpc_spans()] == [f"/{STREAMS}/BatchAppend"]
                with pytest.raises(WrongExpectedRevision):
                    await traced.store.append(stream, names.events(1, start=1), expected=NO_STREAM)
                await until(lambda: len(traced.grpc_spans()) == 2)
            finally:
                gc.enable()
        accepted, refused = traced.grpc_spans()
    # A refusal is the server's answer, not a failed call.
    for span in (accepted, refused):
        assert span.name == f"/{STREAMS}/BatchAppend"
        assert span.status.status_code is StatusCode.UNSET


async def test_a_failed_call_is_an_error_span(server: LocalServer, names: Names, otel_env: None) -> None:
    stream = names.stream("order")
    async with traced_store(server.url) as traced:
        await traced.store.append(stream, names.events(1), expected=NO_STREAM)
        await traced.store.tombstone_stream(stream)
        with traced.provider.get_tracer("test").start_as_current_span("work"):
            with pytest.raises(StreamDeleted):
                await traced.store.read_stream(stream)
            await until(lambda: len(traced.grpc_spans()) == 1)
        (read,) = traced.grpc_spans()
    assert read.name == f"/{STREAMS}/Read"
    assert read.status.status_code is StatusCode.ERROR
    # The server's answer to reading a tombstoned stream: FAILED_PRECONDITION.
    assert (read.attributes or {})["rpc.grpc.status_code"] == 9


@pytest.mark.parametrize("slot", ["no-stream", "revision"])
async def test_a_resend_is_byte_identical_with_grpc_tracing_on(
    server: LocalServer, names: Names, otel_env: None, slot: str
) -> None:
    stream = names.stream("saga")
    async with traced_store(server.url) as traced:
        with traced.provider.get_tracer("test").start_as_current_span("saga.step reserve") as step:
            expected: Expected = NO_STREAM
            head = 0
            if slot == "revision":
                await traced.store.append(stream, names.events(1), expected=NO_STREAM)
                expected, head = 0, 1
            context = TraceContext.of(step)
            events = intent(stream, expected, context)
            sent = [(e.id, e.type, bytes(e.data), bytes(e.metadata)) for e in events]
            first = await traced.store.append(stream, events, expected=expected)
            # The answer was lost (say): the writer sends the very same events to the same slot.
            again = await traced.store.append(stream, events, expected=expected)
            stored = list(await traced.store.read_stream(stream, from_revision=head))
        appends = [s for s in traced.grpc_spans() if s.name.endswith("/BatchAppend")]
    assert again.position == first.position  # idempotent: nothing new was written
    assert [(e.id, e.type, e.data, e.metadata) for e in stored] == sent
    metadata = json.loads(stored[0].metadata)
    # Exactly what the codec wrote: no trace fields of the client library's own instrumentor ($traceId,
    # $spanId) or of anything else.
    assert set(metadata) == METADATA_KEYS
    step_context = step.get_span_context()
    version, trace_id, parent_id, _flags = metadata["traceparent"].split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{step_context.trace_id:032x}",
        f"{step_context.span_id:016x}",
    )
    # Both sends went through the instrumented channel, below the step's span.
    resends = appends[-2:]
    assert len(resends) == 2
    assert [s.parent.span_id if s.parent else None for s in resends] == [step_context.span_id] * 2


async def test_channels_are_instrumented_only_while_tracing_is_on_for_a_kurrentdb_store(
    server: LocalServer, names: Names, otel_env: None, tmp_path: Path
) -> None:
    original = (grpc.aio.insecure_channel, grpc.aio.secure_channel)

    def factories() -> tuple[object, object]:
        return grpc.aio.insecure_channel, grpc.aio.secure_channel

    # Tracing off: nothing is patched, and the store works as ever.
    async with open_tracing(settings(server.url, tracing=False)) as provider:
        assert provider is None
        assert factories() == original
        async with open_store(settings(server.url, tracing=False)) as store:
            await store.append(names.stream("off"), names.events(1), expected=NO_STREAM)
        assert factories() == original
    # Tracing on with the embedded store: no gRPC client to instrument.
    embedded = Settings(
        event_store={"url": "embedded", "data_dir": str(tmp_path)},
        observability={"tracing": {"enabled": True}},
    )
    async with open_tracing(embedded) as provider:
        assert provider is not None
        assert factories() == original
    # Tracing on with a KurrentDB URL: patched while it is set up, given back when it ends.
    async with open_tracing(settings(server.url, tracing=True)) as provider:
        assert provider is not None
        assert factories() != original
    assert factories() == original


async def test_setting_up_grpc_spans_first_keeps_the_stable_http_conventions(
    otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The conventions are read once per process, by the first instrumentation set up: with a KurrentDB
    # store that is the gRPC one (open_tracing), before the API's aiohttp middleware.
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability as Stability,
    )
    from opentelemetry.instrumentation._semconv import _OpenTelemetryStabilitySignalType, _StabilityMode

    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    monkeypatch.setattr(Stability, "_initialized", False)
    monkeypatch.setattr(Stability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {})
    async with open_tracing(settings("esdb://localhost:2113?tls=false", tracing=True)):
        mode = Stability._get_opentelemetry_stability_opt_in_mode(_OpenTelemetryStabilitySignalType.HTTP)
    assert mode is _StabilityMode.HTTP
