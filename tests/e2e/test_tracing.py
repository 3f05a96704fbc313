"""Tracing end to end, with the SDK's in-memory exporter: the span tree of a completed, a retried, a
compensated and a suspended-then-resumed saga; one trace across an engine restart; the participant's
``traceparent``; and a resend that stays byte-identical with tracing on (invariant 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator.domain.vocabulary import ManualCommand, SagaStatus
from orchestrator.eventstore.types import Expected, NewEvent
from orchestrator.records.streams import saga_stream
from tests.e2e.conftest import Harness, seed_definition
from tests.faults.faulty_store import FaultyStore, StoreFault

FORWARD = ["validate-order", "reserve-inventory", "process-payment"]


@dataclass
class Exported:
    """One process's tracer provider and what it exported (spans are exported when they end)."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    @classmethod
    def new(cls) -> Exported:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider, exporter)

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def attempts(spans: Sequence[ReadableSpan]) -> list[tuple[str, int, str]]:
    """(name, attempt, outcome) of each attempt span, in start order."""
    found = []
    for span in named(spans, "saga."):
        attributes = dict(span.attributes or {})
        if "saga.step.attempt" in attributes:
            found.append(
                (
                    span.name,
                    int(str(attributes["saga.step.attempt"])),
                    str(attributes.get("saga.step.outcome")),
                )
            )
    return found


def events(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def ids(traceparent: str) -> tuple[str, str]:
    """(trace id, parent id) of a W3C ``traceparent``, whose flags say it is sampled."""
    version, trace, parent, flags = traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    return trace, parent


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


async def traced_saga(harness: Harness, exported: Exported, **definition: Any) -> tuple[str, SagaStatus]:
    harness.trace(exported.provider)
    await harness.engine()
    saga_id = await harness.start(**definition)
    state = await harness.wait_for(saga_id)
    # The last attempt's span ends just after the append that finished the saga.
    await until(lambda: any(e.name in ("saga.completed", "saga.compensated", "saga.suspended")
                            for s in exported.spans for e in s.events))  # fmt: skip
    return saga_id, state.status


async def test_a_completed_saga_is_one_trace_below_its_start(harness: Harness) -> None:
    exported = Exported.new()
    saga_id, status = await traced_saga(harness, exported)
    assert status is SagaStatus.COMPLETED
    spans = exported.spans
    start = one(spans, "saga.start order-processing")
    assert start.attributes is not None
    assert start.attributes["saga.id"] == saga_id
    assert {trace_id(s) for s in spans} == {trace_id(start)}
    steps = children(spans, start)
    assert [s.name for s in steps] == [f"saga.step {name}" for name in FORWARD]
    received = harness.participants.received
    for step, call in zip(steps, received, strict=True):
        attributes = step.attributes
        assert attributes is not None
        assert attributes["saga.step.attempt"] == 1
        assert attributes["saga.step.outcome"] == "succeeded"
        assert attributes["saga.step.outcome_class"] == "ok"
        assert attributes["saga.step.idempotency_key"] == call.key
        assert attributes["peer.service"] == call.service
        # The HTTP call is the aiohttp client instrumentation's span, and its context is what the
        # participant received: the saga's trace, the client span as parent.
        (client,) = children(spans, step)
        assert client.kind is SpanKind.CLIENT
        assert client.attributes is not None
        assert client.attributes["http.response.status_code"] == 200
        assert ids(call.traceparent) == (trace_id(start), span_id(client))
    assert events(steps[-1]) == ["saga.completed"]
    # The stream stores the start's context; every append of the engine carries it unchanged.
    history = await harness.history(saga_id)
    stored = {ids(json.loads(e.metadata)["traceparent"]) for e in history}
    assert stored == {(trace_id(start), span_id(start))}


async def test_a_retried_step_has_a_span_per_attempt_with_the_retry_as_an_event(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = [503, 500, "ok"]
    exported = Exported.new()
    _, status = await traced_saga(harness, exported)
    assert status is SagaStatus.COMPLETED
    spans = exported.spans
    reserves = named(spans, "saga.step reserve-inventory")
    assert [(s.attributes or {}).get("saga.step.attempt") for s in reserves] == [1, 2, 3]
    assert [(s.attributes or {}).get("saga.step.outcome_class") for s in reserves] == [
        "http_503",
        "http_500",
        "ok",
    ]
    assert [events(s) for s in reserves] == [["saga.retry"], ["saga.retry"], []]
    assert reserves[0].status.status_code is StatusCode.ERROR
    assert (reserves[0].attributes or {})["error.type"] == "http_503"
    retry = reserves[0].events[0]
    assert retry.attributes is not None
    assert retry.attributes["saga.step.outcome_class"] == "http_503"
    # One key for every attempt, all three below the saga's start.
    start = one(spans, "saga.start order-processing")
    assert len({(s.attributes or {})["saga.step.idempotency_key"] for s in reserves}) == 1
    assert all(s.parent is not None and s.parent.span_id == span_id_int(start) for s in reserves)


def span_id_int(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_a_compensated_saga_traces_the_rejection_and_each_undo(harness: Harness) -> None:
    harness.participants.script[("payment-service", "charge")] = [422]
    exported = Exported.new()
    _, status = await traced_saga(harness, exported)
    assert status is SagaStatus.COMPENSATED
    spans = exported.spans
    start = one(spans, "saga.start order-processing")
    assert [(name, attempt, outcome) for name, attempt, outcome in attempts(spans)] == [
        ("saga.step validate-order", 1, "succeeded"),
        ("saga.step reserve-inventory", 1, "succeeded"),
        ("saga.step process-payment", 1, "rejected"),
        ("saga.compensate reserve-inventory", 1, "succeeded"),
        ("saga.compensate validate-order", 1, "succeeded"),
    ]
    charge = one(spans, "saga.step process-payment")
    assert events(charge) == ["saga.step.failed", "saga.compensation.started"]
    assert (charge.attributes or {})["saga.step.outcome_class"] == "http_422"
    assert events(one(spans, "saga.compensate validate-order")) == ["saga.compensated"]
    assert {trace_id(s) for s in spans} == {trace_id(start)}
    for undo in named(spans, "saga.compensate"):
        assert undo.parent is not None
        assert undo.parent.span_id == span_id_int(start)
        assert (undo.attributes or {})["saga.step.phase"] == "compensation"


async def test_a_suspended_saga_resumed_by_a_person_stays_in_its_trace(harness: Harness) -> None:
    harness.participants.script[("payment-service", "charge")] = [401, "ok"]
    exported = Exported.new()
    saga_id, status = await traced_saga(harness, exported)
    assert status is SagaStatus.SUSPENDED
    charge = one(exported.spans, "saga.step process-payment")
    assert events(charge) == ["saga.suspended"]
    assert (charge.attributes or {})["saga.step.outcome"] == "misconfigured"
    # The person's request has a trace of its own; the command joins the saga's, linked to it.
    operator = Exported.new().provider.get_tracer("operator")
    with operator.start_as_current_span("POST /resume") as request:
        await harness.commands.intervene(
            "acme", "ops", saga_id, ManualCommand.RESUME, reason="credentials fixed", idempotency_key="r-1"
        )
    state = await harness.wait_for(saga_id, {"SagaCompleted"})
    assert state.status is SagaStatus.COMPLETED
    await until(lambda: any("saga.completed" in events(s) for s in exported.spans))
    spans = exported.spans
    start = one(spans, "saga.start order-processing")
    intervene = one(spans, "saga.intervene resume")
    assert intervene.parent is not None
    assert intervene.parent.span_id == span_id_int(start)
    assert [link.context.span_id for link in intervene.links] == [request.get_span_context().span_id]
    assert events(intervene) == ["saga.intervention"]
    assert (intervene.attributes or {})["saga.reason"] == "credentials fixed"
    # The work the command let continue hangs below it, in the saga's trace.
    (retry,) = children(spans, intervene)
    assert retry.name == "saga.step process-payment"
    assert (retry.attributes or {})["saga.step.outcome"] == "succeeded"
    assert events(retry) == ["saga.completed"]
    assert {trace_id(s) for s in spans} == {trace_id(start)}
    assert ids(harness.participants.calls("payment-service", "charge")[-1].traceparent)[0] == trace_id(start)


async def test_an_engine_restart_continues_the_trace_from_the_stored_context(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = ["slow:1.5", "ok"]
    steps = [dict(s) for s in seed_definition()["steps"]]
    steps[1]["timeout"] = 300
    api, first, second = Exported.new(), Exported.new(), Exported.new()
    # Three processes: the start is traced by the API's, then one engine, then (after it stopped) another.
    harness.trace(api.provider)
    saga_id = await harness.start(steps=steps)
    (start,) = api.spans
    harness.tracer_provider = first.provider
    engine = await harness.engine()
    await until(lambda: bool(harness.participants.calls("inventory-service", "reserve")))
    await engine.stop(grace=0)
    harness.tracer_provider = second.provider
    await harness.engine()
    state = await harness.wait_for(saga_id, {"SagaCompleted"})
    assert state.status is SagaStatus.COMPLETED
    await until(lambda: any("saga.completed" in events(s) for s in second.spans))
    # The stopped engine ended what it had open (no span outlives its process).
    assert [s.name for s in named(first.spans, "saga.")] == [
        "saga.step validate-order",
        "saga.step reserve-inventory",
    ]
    abandoned = named(first.spans, "saga.step reserve")[0]
    assert "saga.step.outcome" not in (abandoned.attributes or {})
    assert events(abandoned) == ["saga.attempt.abandoned"]
    # The second engine found the attempt timed out and went on: below the stored start, same trace.
    ours = named(second.spans, "saga.")
    assert {trace_id(s) for s in first.spans + second.spans} == {trace_id(start)}
    assert [s.parent.span_id if s.parent else None for s in ours] == [span_id_int(start)] * len(ours)
    advance = one(ours, "saga.advance")
    assert events(advance) == ["saga.attempt.timeout", "saga.retry"]
    assert (advance.events[0].attributes or {})["saga.step.name"] == "reserve-inventory"
    assert [(name, attempt) for name, attempt, _ in attempts(ours)] == [
        ("saga.step reserve-inventory", 2),
        ("saga.step process-payment", 1),
    ]


class RecordingStore(FaultyStore):
    """Remembers every append it was asked for, as bytes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.appends: list[tuple[str, Expected, list[tuple[str, str, bytes, bytes]]]] = []

    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> Any:
        self.appends.append((stream, expected, [(str(e.id), e.type, e.data, e.metadata) for e in events]))
        return await super().append(stream, events, expected=expected)


async def test_a_resend_with_tracing_on_is_byte_identical(harness: Harness) -> None:
    exported = Exported.new()
    harness.trace(exported.provider)
    store = RecordingStore(harness.store)
    # The engine's first append lands, but its answer is lost: the engine sends it again.
    store.faults.inject(StoreFault.AMBIGUOUS)
    await harness.engine(store)
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    first, again = store.appends[0], store.appends[1]
    assert first[0] == saga_stream(saga_id)
    assert again == first  # same slot, same ids, same data and metadata bytes
    metadata = json.loads(first[2][0][3])
    start = one(exported.spans, "saga.start order-processing")
    assert ids(metadata["traceparent"]) == (trace_id(start), span_id(start))
    # And the store holds exactly that one event in the slot.
    history = await harness.history(saga_id)
    assert [str(e.id) for e in history[1 : 1 + len(first[2])]] == [i for i, *_ in first[2]]
    assert [e.metadata for e in history[1 : 1 + len(first[2])]] == [m for *_, m in first[2]]


async def test_tracing_off_writes_no_context_and_sends_no_traceparent(harness: Harness) -> None:
    await harness.engine()
    saga_id = await harness.start()
    assert (await harness.wait_for(saga_id)).status is SagaStatus.COMPLETED
    assert {json.loads(e.metadata)["traceparent"] for e in await harness.history(saga_id)} == {""}
    assert all("tracestate" not in json.loads(e.metadata) for e in await harness.history(saga_id))
    assert {c.traceparent for c in harness.participants.received} == {""}
