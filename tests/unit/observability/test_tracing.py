"""The trace context as event metadata stores it, the span events of an append, tracing off, and the trace
ids every log line carries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from structlog.testing import LogCapture

from orchestrator.domain.events import (
    CompensationStarted,
    SagaCompleted,
    SagaSuspended,
    StepAttemptFailed,
    StepSucceeded,
)
from orchestrator.domain.state import DEADLINE_PASSED
from orchestrator.domain.vocabulary import Phase
from orchestrator.engine.calls import CallResult, OutcomeKind, StepCall
from orchestrator.eventstore.types import NO_STREAM
from orchestrator.observability.logging import processors
from orchestrator.observability.tracing import OFF, SagaTracer, TraceContext, span_events
from orchestrator.records.codec import Envelope, to_new_events

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALL = StepCall("t", "s-1", "reserve", "inventory", "reserve", Phase.ACTION, 2, "key-1", b"{}", 1.0, 0.0)


def test_a_stored_context_is_a_remote_parent() -> None:
    stored = TraceContext(PARENT, "vendor=1")
    context = stored.context()
    assert context is not None
    parent = trace.get_current_span(context).get_span_context()
    assert (format(parent.trace_id, "032x"), parent.is_remote) == (stored.trace_id, True)
    assert parent.trace_state.get("vendor") == "1"
    assert TraceContext().context() is None
    assert TraceContext("00-not-a-context-01").context() is None
    assert TraceContext.from_metadata({"traceparent": PARENT, "tracestate": 7}) == TraceContext(PARENT)
    assert not TraceContext.from_metadata({})


def test_the_codec_writes_tracestate_only_when_there_is_one() -> None:
    def metadata(envelope: Envelope) -> dict[str, Any]:
        (event,) = to_new_events("saga-1", NO_STREAM, [SagaCompleted()], envelope)
        found: dict[str, Any] = json.loads(event.metadata)
        return found

    base = {"tenant": "t", "actor": "a", "correlation_id": "c", "causation_id": "x"}
    assert "tracestate" not in metadata(Envelope(**base))
    assert metadata(Envelope(**base, traceparent=PARENT))["traceparent"] == PARENT
    assert metadata(Envelope(**base, traceparent=PARENT, tracestate="v=1"))["tracestate"] == "v=1"


def test_the_span_events_of_an_append() -> None:
    timeout = StepAttemptFailed(
        "reserve", 1, DEADLINE_PASSED, "the attempt's deadline passed", True, True, 40
    )
    rejected = StepAttemptFailed("charge", 1, "http_422", "no", False, False, None)
    found = span_events(
        [
            StepSucceeded("validate", 1, {}),
            timeout,
            rejected,
            CompensationStarted("charge was rejected"),
            SagaSuspended("bad credentials", "http_401", "charge", Phase.ACTION),
            SagaCompleted(),
        ]
    )
    assert [(key, name) for key, name, _ in found] == [
        ((Phase.ACTION, "reserve", 1), "saga.attempt.timeout"),
        ((Phase.ACTION, "reserve", 1), "saga.retry"),
        (None, "saga.compensation.started"),
        (None, "saga.suspended"),
        (None, "saga.completed"),
    ]
    assert found[1][2] == {
        "saga.reason": "the attempt's deadline passed",
        "saga.step.outcome_class": DEADLINE_PASSED,
        "saga.retry.in_ms": 40,
    }
    assert found[3][2] == {"saga.reason": "bad credentials", "error.type": "http_401"}


def test_tracing_off_makes_no_span_and_writes_no_context() -> None:
    assert not OFF.enabled
    with OFF.start(tenant="t", saga_id="s", definition="d", definition_version="1") as traced:
        assert not traced.context
        assert not traced.span.is_recording()
    span = OFF.attempt(TraceContext(PARENT), CALL)
    assert span is trace.INVALID_SPAN
    assert not OFF.resume("s")
    assert OFF.advance(TraceContext(PARENT), "s") is trace.INVALID_SPAN


def test_an_attempt_span_below_the_stored_context() -> None:
    provider = TracerProvider()
    tracer = SagaTracer(provider)
    span = tracer.attempt(TraceContext(PARENT), CALL)
    tracer.outcome(span, CallResult(OutcomeKind.TRANSIENT, 503, error="http_503", detail="busy"))
    span.end()
    context = span.get_span_context()
    assert format(context.trace_id, "032x") == TraceContext(PARENT).trace_id
    attributes = span.attributes  # type: ignore[attr-defined]
    assert attributes["saga.step.attempt"] == 2
    assert attributes["saga.step.outcome"] == "transient"
    assert attributes["error.type"] == "http_503"
    assert attributes["http.response.status_code"] == 503
    # A stream that stores no context (started while tracing was off) gets a root of its own, once.
    resumed = tracer.resume("s-1")
    assert resumed
    assert resumed.trace_id != TraceContext(PARENT).trace_id


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    capture = LogCapture()
    structlog.configure(processors=[*processors(), capture])
    try:
        yield capture
    finally:
        structlog.reset_defaults()


def test_every_log_line_carries_the_current_span(captured: LogCapture) -> None:
    log = structlog.get_logger("test")
    log.info("outside")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        log.info("inside")
    outside, inside = captured.entries
    assert "trace_id" not in outside
    assert "span_id" not in outside
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")


def test_nothing_uses_the_kurrentdb_clients_own_instrumentor() -> None:
    """Its instrumentor rewrites ``NewEvent.metadata`` with trace fields after our ids hashed the metadata
    (invariant 5): a resend would carry other bytes under the same id. Our trace context is written by the
    codec, before the ids."""
    root = Path(__file__).resolve().parents[3] / "orchestrator"
    users = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "kurrentdbclient.instrumentation" in path.read_text()
    ]
    assert users == []
