"""The saga's own spans, joined through the trace context stored in event metadata (design.md §3).

One saga is one trace of short spans; none outlives the process that opened it:

- the API request's server span (the aiohttp instrumentation), and ``saga.start {definition}`` below it:
  the ``SagaStarted`` append carries that span's context as ``traceparent`` (and ``tracestate``);
- ``saga.step {step}`` / ``saga.compensate {step}``: one span per attempt, opened by the engine when the
  intent is durable and ended when its outcome is recorded; its parent is the context stored in the
  saga's stream, and the HTTP client span below it sends ``traceparent`` to the participant;
- ``saga.intervene {command}``: a person's command, in the saga's trace (its parent is the stored context),
  linked to the request that carried it; the events it appends carry this span's context, so the work it
  lets continue hangs below it;
- ``saga.advance``: only for what the engine records with no attempt span open in this process (an
  attempt timed out after a restart, an internal error), so those appear in the trace too.

Retries, timeouts, suspension, dead letters, compensation and the end of the saga are span events on the
span that recorded them, each with its reason.

The engine writes the stored context it resumed from into every append it makes, unchanged: the metadata
of a decision is a function of the stream (invariant 5 — a resend carries the same bytes, and two writers
deciding the same thing still write the same bytes); only the start and an intervention write a new one.
With tracing off (no provider) nothing here creates a span and no context is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.domain.events import (
    CompensationStarted,
    CompensationStepAttemptFailed,
    CompensationStepFailed,
    Event,
    ManualInterventionApplied,
    SagaAbortRequested,
    SagaCompensated,
    SagaCompleted,
    SagaDeadLettered,
    SagaSuspended,
    StepAttemptFailed,
    StepFailed,
)
from orchestrator.domain.state import DEADLINE_PASSED
from orchestrator.domain.vocabulary import OutcomeKind, Phase

if TYPE_CHECKING:
    from orchestrator.engine.calls import CallResult, StepCall

__all__ = ["OFF", "AttemptKey", "SagaTracer", "TraceContext", "Traced", "span_events"]

#: W3C Trace Context, whatever ``OTEL_PROPAGATORS`` says: the metadata field is named ``traceparent``
_W3C = TraceContextTextMapPropagator()
#: a span attribute or event carries at most this much of a reason (reasons quote participants' answers)
_REASON_CHARS = 256


def _version() -> str:
    try:
        return version("saga-orchestrator")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context as event metadata stores it; empty when nothing traced the write."""

    traceparent: str = ""
    tracestate: str = ""

    def __bool__(self) -> bool:
        return bool(self.traceparent)

    @classmethod
    def of(cls, span: Span) -> TraceContext:
        if not span.get_span_context().is_valid:
            return cls()
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=trace.set_span_in_context(span))
        return cls(carrier.get("traceparent", ""), carrier.get("tracestate", ""))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> TraceContext:
        parent, state = metadata.get("traceparent"), metadata.get("tracestate")
        return cls(parent if isinstance(parent, str) else "", state if isinstance(state, str) else "")

    def context(self) -> Context | None:
        """The parent this context stands for (None when empty or not a valid ``traceparent``)."""
        if not self.traceparent:
            return None
        carrier = {"traceparent": self.traceparent}
        if self.tracestate:
            carrier["tracestate"] = self.tracestate
        context = _W3C.extract(carrier)
        return context if trace.get_current_span(context).get_span_context().is_valid else None

    @property
    def trace_id(self) -> str:
        """The trace id in hex (empty when there is none)."""
        parts = self.traceparent.split("-")
        return parts[1] if len(parts) == 4 else ""


#: which attempt a span or an event is about: (phase, step, attempt)
AttemptKey = tuple[Phase, str, int]


def _reason(text: str) -> str:
    return text[:_REASON_CHARS]


def span_events(events: Sequence[Event]) -> list[tuple[AttemptKey | None, str, dict[str, str | int | bool]]]:
    """What of an append deserves a span event: (the attempt it is about, or None for the saga; name;
    attributes). Intents and plain successes do not: the attempt spans show them."""
    found: list[tuple[AttemptKey | None, str, dict[str, str | int | bool]]] = []
    for e in events:
        match e:
            case StepAttemptFailed() | CompensationStepAttemptFailed():
                phase = Phase.ACTION if isinstance(e, StepAttemptFailed) else Phase.COMPENSATION
                key: AttemptKey = (phase, e.step, e.attempt)
                if e.error_class == DEADLINE_PASSED:
                    found.append((key, "saga.attempt.timeout", {"saga.reason": _reason(e.detail)}))
                if e.retryable and e.retry_in_ms is not None:
                    attributes: dict[str, str | int | bool] = {
                        "saga.reason": _reason(e.detail or e.error_class),
                        "saga.step.outcome_class": e.error_class,
                        "saga.retry.in_ms": e.retry_in_ms,
                    }
                    found.append((key, "saga.retry", attributes))
            case StepFailed():
                attributes = {"saga.step.name": e.step, "saga.reason": _reason(e.reason)}
                found.append((None, "saga.step.failed", attributes))
            case CompensationStarted():
                found.append((None, "saga.compensation.started", {"saga.reason": _reason(e.reason)}))
            case CompensationStepFailed():
                attributes = {"saga.step.name": e.step, "saga.reason": _reason(e.reason)}
                found.append((None, "saga.compensation.failed", attributes))
            case SagaSuspended():
                attributes = {"saga.reason": _reason(e.reason), "error.type": e.error_class}
                found.append((None, "saga.suspended", attributes))
            case SagaDeadLettered():
                found.append((None, "saga.dead_lettered", {"saga.reason": _reason(e.reason)}))
            case SagaCompleted():
                found.append((None, "saga.completed", {}))
            case SagaCompensated():
                found.append((None, "saga.compensated", {}))
            case ManualInterventionApplied():
                attributes = {
                    "saga.intervention.command": e.command.value,
                    "saga.intervention.actor": e.actor,
                    "saga.reason": _reason(e.reason),
                }
                found.append((None, "saga.intervention", attributes))
            case SagaAbortRequested():
                attributes = {"saga.intervention.actor": e.actor, "saga.reason": _reason(e.reason)}
                found.append((None, "saga.abort_requested", attributes))
            case _:
                pass
    return found


@dataclass(frozen=True, slots=True)
class Traced:
    """An open span of the application layer and the context its appends carry."""

    span: Span
    context: TraceContext

    def record(self, events: Sequence[Event]) -> None:
        """The span events of what was appended (an intervention, an abort request)."""
        if self.span.is_recording():
            for _key, name, attributes in span_events(events):
                self.span.add_event(name, attributes)


_UNTRACED = Traced(trace.INVALID_SPAN, TraceContext())


class SagaTracer:
    """The saga's spans on one tracer provider; without one (tracing off) every method returns at once."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.enabled = provider is not None
        self._tracer: trace.Tracer = (
            provider.get_tracer("orchestrator", _version()) if provider is not None else trace.NoOpTracer()
        )

    # --- the application layer -------------------------------------------------------------------------
    @contextlib.contextmanager
    def start(
        self, *, tenant: str, saga_id: str, definition: str, definition_version: str
    ) -> Iterator[Traced]:
        """``saga.start``: below the current span (the API request's), current while the start appends."""
        if not self.enabled:
            yield _UNTRACED
            return
        attributes = {
            "saga.id": saga_id,
            "saga.tenant": tenant,
            "saga.definition.name": definition,
            "saga.definition.version": definition_version,
        }
        with self._tracer.start_as_current_span(
            f"saga.start {definition}", kind=SpanKind.INTERNAL, attributes=attributes
        ) as span:
            yield Traced(span, TraceContext.of(span))

    @contextlib.contextmanager
    def intervene(
        self, stored: TraceContext, *, tenant: str, saga_id: str, command: str, actor: str, reason: str
    ) -> Iterator[Traced]:
        """``saga.intervene``: a child of the saga's stored context (it continues the saga's trace), linked
        to the current span (the person's request, in the trace of whoever sent it)."""
        if not self.enabled:
            yield _UNTRACED
            return
        current = trace.get_current_span().get_span_context()
        parent = stored.context()
        links = [Link(current)] if parent is not None and current.is_valid else []
        attributes = {
            "saga.id": saga_id,
            "saga.tenant": tenant,
            "saga.intervention.command": command,
            "saga.intervention.actor": actor,
            "saga.reason": _reason(reason),
        }
        with self._tracer.start_as_current_span(
            f"saga.intervene {command}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        ) as span:
            yield Traced(span, TraceContext.of(span))

    # --- the engine ------------------------------------------------------------------------------------
    def resume(self, saga_id: str) -> TraceContext:
        """A context for a saga whose stream stores none (started while tracing was off): a root span,
        ended at once, that the engine's appends then carry like any stored context."""
        if not self.enabled:
            return TraceContext()
        span = self._tracer.start_span(
            "saga.resume", context=Context(), kind=SpanKind.INTERNAL, attributes={"saga.id": saga_id}
        )
        span.end()
        return TraceContext.of(span)

    def attempt(self, stored: TraceContext, call: StepCall) -> Span:
        """The span of one attempt, below the saga's stored context; the caller ends it."""
        if not self.enabled:
            return trace.INVALID_SPAN
        verb = "step" if call.phase is Phase.ACTION else "compensate"
        attributes: dict[str, str | int] = {
            "saga.id": call.saga_id,
            "saga.tenant": call.tenant,
            "saga.step.name": call.step,
            "saga.step.phase": call.phase.value,
            "saga.step.attempt": call.attempt,
            "saga.step.idempotency_key": call.idempotency_key,
            "peer.service": call.service,
        }
        return self._tracer.start_span(
            f"saga.{verb} {call.step}",
            context=stored.context() or Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )

    @staticmethod
    def outcome(span: Span, result: CallResult) -> None:
        if not span.is_recording():
            return
        span.set_attribute("saga.step.outcome", result.kind.value)
        span.set_attribute("saga.step.outcome_class", result.error or "ok")
        if result.status is not None:
            span.set_attribute("http.response.status_code", result.status)
        if result.kind is not OutcomeKind.SUCCEEDED:
            span.set_attribute("error.type", result.error or result.kind.value)
            span.set_status(Status(StatusCode.ERROR, (result.detail or result.error or "")[:_REASON_CHARS]))

    def advance(self, stored: TraceContext, saga_id: str) -> Span:
        """``saga.advance``: for span events of an append no attempt span of this process can carry."""
        if not self.enabled:
            return trace.INVALID_SPAN
        return self._tracer.start_span(
            "saga.advance",
            context=stored.context() or Context(),
            kind=SpanKind.INTERNAL,
            attributes={"saga.id": saga_id},
        )


#: tracing off
OFF = SagaTracer()
