"""One actor per active saga per process: it serialises every decision and append for its saga.

Messages arrive in a mailbox — deliveries from the persistent subscription (hints), outcomes of calls this
actor made, and wake-ups from the timer firer — and are handled in batches (coalesced). For each batch
the actor brings its folded state up to the stream head when it may be behind, records every outcome
together with the intents that then fall due (one append each), asks the pure core what else is due,
appends that, and only then acks the deliveries. Calls run as child tasks that post their outcome back,
so a slow participant never holds a delivery or the actor. The actor ends when it is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog
from opentelemetry import trace
from opentelemetry.trace import Span

from orchestrator import failpoints
from orchestrator.domain.commands import StartCompensationStep, StartStep, StepOutcome, Suspend
from orchestrator.domain.decide import Plan, advance, apply, decide
from orchestrator.domain.errors import DomainConflict, UnreadableHistory
from orchestrator.domain.events import Event
from orchestrator.domain.state import SagaState, evolve, fold, is_terminal
from orchestrator.domain.timing import Tuning
from orchestrator.domain.vocabulary import OutcomeKind, Phase
from orchestrator.engine.calls import CallResult, StepCall
from orchestrator.engine.state_cache import SagaStateCache
from orchestrator.engine.timers import DueTimer
from orchestrator.eventstore.errors import OperationalError, StreamNotFound, WrongExpectedRevision
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import NewEvent, RecordedEvent
from orchestrator.observability.metrics import EngineMetrics, trace_exemplar
from orchestrator.observability.tracing import AttemptKey, SagaTracer, TraceContext, span_events
from orchestrator.records.codec import Envelope, carries_intent, from_recorded, to_new_events

log = structlog.get_logger("orchestrator.engine")

#: resends of one append after an ambiguous store error before the actor gives up on this batch
_RESENDS = 5
#: re-decisions after losing a slot before the batch is left to the next wake-up
_REDECIDE = 20
#: while outcomes wait for the store, the actor tries again after this long, doubling up to the cap
_RETRY_FIRST_S = 0.05
_RETRY_CAP_S = 2.0


class ActorHost(Protocol):
    """What a saga actor needs from the process that runs it (the :class:`Engine`), and nothing more."""

    store: EventStore
    executor: Executor
    metrics: EngineMetrics
    tracer: SagaTracer
    tuning: Tuning
    cache: SagaStateCache
    clock: Callable[[], float]
    actor_name: str
    stopping: bool

    def nonce(self) -> str:
        """A fresh per-writer nonce for an append that carries an intent (design.md §0.1)."""
        ...

    def acquire_cap(self, service: str) -> float: ...

    def calls_started(self, task: asyncio.Task[None]) -> None: ...

    def outcomes_waiting(self, actor: SagaActor, waiting: bool) -> None: ...

    def actor_finished(self, actor: SagaActor) -> None: ...


class Executor(Protocol):
    async def call(self, call: StepCall) -> CallResult: ...


@dataclass(frozen=True, slots=True)
class Hint:
    """A delivery: "this saga may need attention". Its content is never used to decide."""

    event: RecordedEvent
    ack: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: StepOutcome
    service: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Wake:
    timer: DueTimer | None = None


Message = Hint | Outcome | Wake


def to_step_outcome(call: StepCall, result: CallResult) -> StepOutcome:
    return StepOutcome(
        step=call.step,
        attempt=call.attempt,
        phase=call.phase,
        kind=result.kind,
        output=result.output,
        error_class=result.error or "",
        detail=(result.detail or "")[:512],
        retry_after_ms=None if result.retry_after is None else int(result.retry_after * 1000),
        outcome_unknown=result.maybe_effective or result.kind is OutcomeKind.CRASHED,
        withheld=result.withheld,
    )


class SagaActor:
    def __init__(self, host: ActorHost, stream: str) -> None:
        self.host = host
        self.stream = stream
        self.state: SagaState | None = host.cache.state(stream)
        self._mailbox: deque[Message] = deque()
        self._wake = asyncio.Event()
        self.calls: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self._causation = ""
        #: the revision at which this actor last asked the core what is due (and appended it): a hint
        #: for a revision at or below it carries no news
        self._decided = host.cache.decided(stream)
        #: observed outcomes the store has not taken yet, oldest first: owned here until they are durable
        #: (design.md §0.3), whatever the store does meanwhile
        self._unrecorded: list[Outcome] = []
        self._told_waiting = False
        self._retry_in = _RETRY_FIRST_S
        #: the trace context the saga's stream stores (its latest): the parent of this actor's spans, and
        #: what its appends carry, unchanged (see orchestrator.observability.tracing)
        self._trace = host.cache.trace(stream)
        #: the spans of this actor's attempts, open from the intent to the recorded outcome
        self._spans: dict[AttemptKey, Span] = {}

    def post(self, message: Message) -> None:
        self._mailbox.append(message)
        self._wake.set()

    @property
    def idle(self) -> bool:
        return not self._mailbox and not self.calls and not self._unrecorded

    @property
    def unrecorded(self) -> int:
        """Observed outcomes still waiting for the store."""
        return len(self._unrecorded)

    async def run(self) -> None:
        try:
            while True:
                if not self._mailbox:
                    if self._unrecorded:
                        await self._wait(self._retry_in)
                        if not self._mailbox:
                            await self._handle([])
                        continue
                    if not self.calls:
                        return
                    await self._wait(None)
                    continue
                batch = list(self._mailbox)
                self._mailbox.clear()
                await self._handle(batch)
        finally:
            if self._unrecorded:
                # Only a stopping engine leaves them: their attempts' deadlines will record them as unknown.
                log.warning("outcomes_not_recorded", stream=self.stream, count=len(self._unrecorded))
            for span in self._spans.values():
                # No span outlives the actor; the trace goes on through the stored context.
                span.add_event(
                    "saga.attempt.abandoned", {"saga.reason": "stopped before the outcome was recorded"}
                )
                span.end()
            self._spans.clear()
            self._waiting_for_store(False)
            self.host.actor_finished(self)

    async def _wait(self, seconds: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    # --- one batch ----------------------------------------------------------------------------------------
    async def _handle(self, batch: list[Message]) -> None:
        hints = [m for m in batch if isinstance(m, Hint)]
        fresh = [m for m in batch if isinstance(m, Outcome)]
        wakes = [m for m in batch if isinstance(m, Wake)]
        for outcome in fresh:
            self._observe(outcome)
        outcomes = self._unrecorded + fresh
        self._unrecorded = []
        if hints:
            self._causation = str(hints[-1].event.id)
        if not outcomes and not wakes and all(h.event.revision <= self._decided for h in hints):
            for hint in hints:
                await hint.ack()
            return
        recorded = 0
        try:
            state = self.state
            if state is None or wakes or any(h.event.revision > state.revision for h in hints):
                await self._refresh()
            if self.state is not None:
                for outcome in outcomes:
                    await self._append_plan(outcome.outcome)
                    recorded += 1
                    self._attempt_recorded(outcome.outcome)
                    failpoints.hit("actor.after_outcome")
                await self._append_plan(None)
                self._decided = self.state.revision if self.state is not None else -1
                self._fire_lag(wakes)
        except StreamNotFound:
            self.state = None  # a hint for a stream that is gone or not a saga: nothing to do
        except UnreadableHistory as e:
            self.host.metrics.unknown_events.inc()
            log.warning("saga_unreadable", stream=self.stream, reason=str(e))
            self.state = None
            self.host.cache.forget(self.stream)
        except (OperationalError, _GaveUp) as e:
            # The store is unavailable or contended. Deliveries stay unacked (they come back, and the
            # saga's pending timers bring it back too), but an observed outcome exists nowhere else: keep
            # it and try again, in order, until the store takes it. While the store is unavailable the
            # engine takes no new work (backpressure), so what waits here stays bounded.
            self._defer(outcomes[recorded:], unavailable=isinstance(e, OperationalError))
            log.warning(
                "saga_batch_deferred", stream=self.stream, error=str(e), outcomes=len(self._unrecorded)
            )
            self.state = None
            self._decided = -1
            return
        except Exception as e:
            self.host.metrics.internal_errors.inc()
            log.exception("saga_internal_error", stream=self.stream)
            await self._suspend_for(e)
        self._retry_in = _RETRY_FIRST_S
        self._waiting_for_store(False)
        if self.state is not None:
            self.host.cache.remember(self.stream, self.state, self._decided, self._trace)
        for hint in hints:
            await hint.ack()

    def _defer(self, outcomes: list[Outcome], *, unavailable: bool) -> None:
        self._unrecorded = outcomes
        if outcomes:
            self._retry_in = min(self._retry_in * 2, _RETRY_CAP_S)
        self._waiting_for_store(bool(outcomes) and unavailable)

    def _waiting_for_store(self, waiting: bool) -> None:
        """Tell the host only when this changes: every handled batch passes here (a hot path)."""
        if waiting != self._told_waiting:
            self._told_waiting = waiting
            self.host.outcomes_waiting(self, waiting)

    async def _refresh(self) -> None:
        """Bring the folded state up to the stream head (incrementally when a state is cached)."""
        store = self.host.store
        if self.state is None:
            events = await store.read_stream(self.stream)
            decoded = [from_recorded(e) for e in events]
            self.state = fold((d.event, d.recorded_at) for d in decoded)
            self._trace = TraceContext()
        else:
            newer = await store.read_stream(self.stream, from_revision=self.state.revision + 1)
            decoded = [from_recorded(e) for e in newer]
            state = self.state
            for d in decoded:
                state = evolve(state, d.event, d.recorded_at)
            self.state = state
        for d in reversed(decoded):
            stored = TraceContext.from_metadata(d.metadata)
            if stored:
                self._trace = stored
                break

    def _observe(self, outcome: Outcome) -> None:
        o = outcome.outcome
        span = self._spans.get((o.phase, o.step, o.attempt), trace.INVALID_SPAN)
        self.host.metrics.step_duration.labels(outcome.service, o.phase.value, o.kind.value).observe(
            outcome.seconds, exemplar=trace_exemplar(span)
        )
        if o.phase is Phase.COMPENSATION:
            self.host.metrics.compensations.labels(o.kind.value).inc()
        with trace.use_span(span, end_on_exit=False):  # the log line carries the attempt's trace
            log.info(
                "step_outcome",
                saga_id=self.state.saga_id if self.state else None,
                tenant=self.state.tenant if self.state else None,
                step=o.step,
                phase=o.phase.value,
                attempt=o.attempt,
                outcome=o.kind.value,
                error=o.error_class or None,
                seconds=round(outcome.seconds, 4),
            )

    # --- spans ----------------------------------------------------------------------------------------
    def _stored_trace(self, state: SagaState) -> TraceContext:
        """The context this actor's appends carry: the stored one, or (a stream that stores none, with
        tracing on) a new root, made once and then carried like a stored one."""
        if not self._trace and self.host.tracer.enabled:
            self._trace = self.host.tracer.resume(state.saga_id)
        return self._trace

    def _annotate(self, message: StepOutcome | None, state: SagaState, events: list[Event]) -> None:
        """Span events for what an append recorded: on the span of the attempt each is about, else on the
        span of the outcome being recorded, else on a ``saga.advance`` span of its own."""
        found = span_events(events)
        if not found:
            return
        recording = None
        if message is not None:
            recording = self._spans.get((message.phase, message.step, message.attempt))
        own: Span | None = None
        for key, name, attributes in found:
            span = self._spans.get(key) if key is not None else None
            if span is None:
                span = recording
            if span is None:
                if own is None:
                    own = self.host.tracer.advance(self._trace, state.saga_id)
                span = own
            if key is not None and span is not self._spans.get(key):
                attributes = {**attributes, "saga.step.name": key[1], "saga.step.attempt": key[2]}
            span.add_event(name, attributes)
        if own is not None:
            own.end()

    def _attempt_recorded(self, outcome: StepOutcome) -> None:
        span = self._spans.pop((outcome.phase, outcome.step, outcome.attempt), None)
        if span is not None:
            span.end()

    def _fire_lag(self, wakes: list[Wake]) -> None:
        now = self.host.clock()
        for wake in wakes:
            if (
                wake.timer is not None
                and self.state is not None
                and wake.timer.timer_id not in self.state.timers
            ):
                self.host.metrics.timer_fire_lag.observe(max(0.0, now - wake.timer.due_at))

    async def _append_plan(self, message: StepOutcome | None) -> None:
        """Append the message's events plus every intent then due, at the head; on a lost slot, re-read
        and decide again (an outcome the fold already holds is not recorded twice)."""
        for _ in range(_REDECIDE):
            state = self.state
            assert state is not None
            if message is None and is_terminal(state):
                return
            now_s = self.host.clock()
            now = datetime.fromtimestamp(now_s, UTC)
            mono = time.monotonic()
            plan = advance(state, now, message, self.host.tuning)
            if not plan.events:
                return
            if await self._append(state, plan):
                self._annotate(message, state, plan.events)
                acked = self.host.clock()
                if acked - now_s > self.host.tuning.attempt_slack_ms / 2000 or plan.state is None:
                    # The store recorded these events when it committed them, after ``now``. An attempt's
                    # deadline is at least its slack away, so folding at ``now`` is safe unless the append
                    # took a good part of that; then fold at the acknowledgement, or the deadline would
                    # look due at once and time out the attempt the append just started.
                    self.state = apply(state, plan.events, datetime.fromtimestamp(acked, UTC))
                else:
                    self.state = plan.state
                if plan.calls:
                    failpoints.hit("actor.after_intent")
                self._launch(plan, mono)
                return
            self.host.metrics.append_conflicts.inc()
            await self._refresh()
        raise _GaveUp(f"{self.stream}: lost the slot {_REDECIDE} times in a row")

    async def _append(self, state: SagaState, plan: Plan) -> bool:
        nonce = self.host.nonce() if carries_intent(plan.events) else None
        traced = self._stored_trace(state)
        envelope = Envelope(
            tenant=state.tenant,
            actor=self.host.actor_name,
            correlation_id=state.saga_id,
            causation_id=self._causation,
            traceparent=traced.traceparent,
            tracestate=traced.tracestate,
        )
        new = to_new_events(self.stream, state.revision, plan.events, envelope, nonce)
        return await append_exact(self.host, self.stream, new, state.revision)

    def _launch(self, plan: Plan, mono: float) -> None:
        if self.host.stopping:
            return  # the intents are durable; their deadlines pass and another node retries them
        state = self.state
        assert state is not None
        for command in plan.calls:
            call = self._step_call(state, command, mono)
            span = self.host.tracer.attempt(self._trace, call)
            if span.get_span_context().is_valid:
                self._spans[(call.phase, call.step, call.attempt)] = span
                call = dataclasses.replace(call, traceparent=TraceContext.of(span).traceparent or None)
            # A context of its own: the call's trace is its attempt's span, not whatever the actor had.
            task = asyncio.create_task(
                self._call(call, span), name=f"call:{self.stream}:{call.step}", context=contextvars.Context()
            )
            self.calls.add(task)
            self.host.calls_started(task)
            task.add_done_callback(self.calls.discard)

    def _step_call(
        self, state: SagaState, command: StartStep | StartCompensationStep, mono: float
    ) -> StepCall:
        timeout = command.timeout_ms / 1000
        phase = Phase.ACTION if isinstance(command, StartStep) else Phase.COMPENSATION
        return StepCall(
            tenant=state.tenant,
            saga_id=state.saga_id,
            step=command.step,
            service=command.service,
            action=command.action,
            phase=phase,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            body=command.body,
            timeout=timeout,
            send_deadline=mono + timeout + self.host.acquire_cap(command.service),
        )

    async def _call(self, call: StepCall, span: Span) -> None:
        started = time.monotonic()
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            try:
                result = await self.host.executor.call(call)
            except Exception as e:  # our own bug: the saga is suspended, never compensated
                log.exception("executor_error", stream=self.stream, step=call.step)
                result = CallResult(
                    OutcomeKind.CRASHED, None, error="internal", detail=repr(e), maybe_effective=True
                )
        self.host.tracer.outcome(span, result)
        failpoints.hit("actor.after_call")
        self.post(Outcome(to_step_outcome(call, result), call.service, time.monotonic() - started))

    async def _suspend_for(self, error: Exception) -> None:
        with contextlib.suppress(Exception):
            await self._refresh()
            state = self.state
            if state is None or is_terminal(state):
                return
            now = datetime.fromtimestamp(self.host.clock(), UTC)
            try:
                events = decide(state, Suspend(f"internal error: {error!r}"[:500], type(error).__name__), now)
            except DomainConflict:
                return
            if events and await self._append(state, Plan(events, [])):
                self._annotate(None, state, events)
                self.state = apply(state, events, now)


class _GaveUp(Exception):
    pass


async def append_exact(host: ActorHost, stream: str, new: list[NewEvent], expected: int) -> bool:
    """Append ``new`` at ``expected``; True if these exact events hold the slot afterwards.

    After an ambiguous failure the very same bytes (same ids) are resent, which the store treats as
    idempotent; if the resend meets a conflict, the slot is read to learn whether the first send landed.
    """
    store = host.store
    ambiguous = False
    for attempt in range(_RESENDS):
        try:
            await store.append(stream, new, expected=expected)
            return True
        except WrongExpectedRevision:
            if not ambiguous:
                return False
            slot = await store.read_stream(stream, from_revision=expected + 1, limit=len(new))
            return [e.id for e in slot] == [n.id for n in new]
        except OperationalError:
            ambiguous = True
            if attempt == _RESENDS - 1:
                raise
            await asyncio.sleep(0.05 * 2**attempt)
    return False
