"""The engine of one process: subscription consumers, saga actors, the timer index and its firer.

- Deliveries from the persistent subscription group are hints for a saga's actor (created on demand, at
  most ``max_in_flight`` at once: beyond that the consumer waits, which is the backpressure). The same
  number is the consumer's buffer size, so the store never has more deliveries in flight to this process.
- The timer projection keeps ``timers.db`` in step with ``$all``; the firer hands a due saga straight to
  a local actor.
- ``stop()`` stops taking deliveries, lets calls in flight finish within the grace period, records their
  outcomes, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import structlog

from orchestrator.domain.timing import Tuning
from orchestrator.engine.actor import Executor, Hint, Message, SagaActor, Wake
from orchestrator.engine.state_cache import SagaStateCache
from orchestrator.engine.timer_projection import SAGA_FILTER, TimerProjection
from orchestrator.engine.timers import DueTimer, TimerFirer, TimerIndex
from orchestrator.eventstore.errors import EventStoreError, SubscriptionExists
from orchestrator.eventstore.port import EventStore, PersistentSubscription
from orchestrator.eventstore.types import ConsumerStrategy, PersistentSubscriptionSettings, RecordedEvent
from orchestrator.observability.metrics import EngineMetrics
from orchestrator.observability.tracing import OFF, SagaTracer
from orchestrator.records.streams import SAGA_STREAM_PREFIX
from orchestrator.settings import EngineSettings

log = structlog.get_logger("orchestrator.engine")


#: a due timer that another node owns is fired here anyway at its third hand-out without its saga moving
#: (hand-outs come at 0, 5 and 15 s after it fell due, then further apart)
OWNER_FALLBACK_HAND_OUTS = 3


class TimerPlacement(Protocol):
    """Cluster mode's answer to "whose is this saga's timer?": ``mine`` (this node owns its shard),
    ``unowned`` (no assignment yet, or its owner is not in this node's live view: fire it), or ``theirs``."""

    def fires(self, stream: str) -> Literal["mine", "unowned", "theirs"]: ...


class Engine:
    def __init__(
        self,
        store: EventStore,
        executor: Executor,
        *,
        settings: EngineSettings,
        data_dir: Path | None = None,
        timer_index: TimerIndex | None = None,
        acquire_caps_ms: Mapping[str, int] | None = None,
        node_id: str | None = None,
        clock: Callable[[], float] = time.time,
        metrics: EngineMetrics | None = None,
        state_cache_size: int = 10_000,
        tracer: SagaTracer = OFF,
        placement: TimerPlacement | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or EngineMetrics()
        self.tracer = tracer
        #: cluster mode: which due timers are this node's to fire (None: all of them)
        self.placement = placement
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.actor_name = f"engine:{self.node_id}"
        # Per-writer nonce (design.md §0.1): this incarnation and a sequence number.
        self._incarnation = uuid.uuid4().hex
        self._sequence = itertools.count(1)
        self._acquire_caps = dict(acquire_caps_ms or {})
        self.tuning = self.tuning_for(settings, self._acquire_caps)
        if (data_dir is None) == (timer_index is None):
            raise ValueError("give the engine its timer index, or the data directory to keep one in")
        #: the timer index: given, or opened at start in ``data_dir`` (one file per group)
        self._index_path = data_dir / f"timers-{settings.group}.db" if data_dir is not None else None
        self._actors: dict[str, SagaActor] = {}
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self.cache = SagaStateCache(state_cache_size)
        self._calls: set[asyncio.Task[None]] = set()
        #: sagas whose actors hold outcomes the store refused; while any do, no new saga is taken on
        self._waiting_for_store: set[str] = set()
        self._store_taking = asyncio.Event()
        self._store_taking.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: PersistentSubscription | None = None
        self._index: TimerIndex | None = timer_index
        self.firer: TimerFirer | None = None
        self.timer_projection: TimerProjection | None = None
        self.stopping = False

    @staticmethod
    def tuning_for(settings: EngineSettings, acquire_caps_ms: Mapping[str, int]) -> Tuning:
        """The core's durations: an attempt's durable deadline covers the slowest pool acquisition."""
        max_cap = max(acquire_caps_ms.values(), default=1_000)
        return Tuning(kick_ms=settings.kick_ms, attempt_slack_ms=max_cap + settings.deadline_slack_ms)

    # --- services for actors ---------------------------------------------------------------------------
    def nonce(self) -> str:
        return f"{self._incarnation}:{next(self._sequence)}"

    def acquire_cap(self, service: str) -> float:
        return self._acquire_caps.get(service, 1_000) / 1000

    def calls_started(self, task: asyncio.Task[None]) -> None:
        self._calls.add(task)
        self.metrics.calls_in_flight.set(len(self._calls))

        def done(t: asyncio.Task[None]) -> None:
            self._calls.discard(t)
            self.metrics.calls_in_flight.set(len(self._calls))

        task.add_done_callback(done)

    def outcomes_waiting(self, actor: SagaActor, waiting: bool) -> None:
        """An actor holds outcomes the store refused (``waiting``), or no longer does."""
        if waiting:
            self._waiting_for_store.add(actor.stream)
            self._store_taking.clear()
        else:
            self._waiting_for_store.discard(actor.stream)
            if not self._waiting_for_store:
                self._store_taking.set()
        self.metrics.sagas_waiting_for_store.set(len(self._waiting_for_store))

    def actor_finished(self, actor: SagaActor) -> None:
        if self._actors.get(actor.stream) is actor:
            del self._actors[actor.stream]
            self._slots.release()
        self.metrics.actors.set(len(self._actors))

    async def post(self, stream: str, message: Message) -> None:
        """Hand ``message`` to the saga's actor, creating one (waiting for a free slot) if needed."""
        actor = self._actors.get(stream)
        if actor is None:
            # Backpressure: while observed outcomes wait for the store, take on no new saga (they would
            # only pile up more outcomes); the sagas already here go on and get their outcomes in first.
            await self._store_taking.wait()
            await self._slots.acquire()
            actor = self._actors.get(stream)  # another task may have created it meanwhile
            if actor is not None:
                self._slots.release()
            else:
                actor = SagaActor(self, stream)
                self._actors[stream] = actor
                self.metrics.actors.set(len(self._actors))
                actor.post(message)
                # A context of its own: an actor outlives whatever posted to it first (a request, a
                # delivery); its spans take their parent from the saga's stored trace context.
                actor.task = asyncio.create_task(
                    actor.run(), name=f"actor:{stream}", context=contextvars.Context()
                )
                return
        actor.post(message)

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        settings = PersistentSubscriptionSettings(
            strategy=ConsumerStrategy.PINNED,
            message_timeout=self.settings.message_timeout_s,
            max_retry_count=self.settings.max_retry_count,
            max_subscriber_count=self.settings.max_subscribers,
        )
        with contextlib.suppress(SubscriptionExists):
            # From the start: the group must see the first saga event ever written.
            await self.store.create_subscription(self.settings.group, filter=SAGA_FILTER, settings=settings)

    async def start(self) -> None:
        await self.ensure_group()
        if self._index is None:
            assert self._index_path is not None
            self._index = TimerIndex(self._index_path)
        self.firer = TimerFirer(self._index, self._on_due, window=self.settings.timer_window_s)
        self.timer_projection = TimerProjection(
            self.store, self._index, self.firer, on_applied=self._timers_applied
        )
        self._tasks = [
            asyncio.create_task(self._supervise("consumer", self._consume), name="engine-consumer"),
            asyncio.create_task(
                self._supervise("timer-projection", self.timer_projection.run), name="engine-timers"
            ),
            asyncio.create_task(self._supervise("timer-firer", self.firer.run), name="engine-firer"),
            asyncio.create_task(
                self._supervise("subscription-stats", self._subscription_stats), name="engine-sub-stats"
            ),
        ]

    def _timers_applied(self, _: object) -> None:
        if self._index is not None:
            self.metrics.timers_pending.set(self._index.count())

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while not self.stopping:
            try:
                await run()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except EventStoreError as e:
                log.warning("engine_task_restarting", task=name, error=str(e))
            except Exception:
                log.exception("engine_task_failed", task=name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _subscription_stats(self, interval: float = 5.0) -> None:
        """Export the group's in-flight and parked counts (the store knows them; Prometheus asks us)."""
        group = self.settings.group
        while True:
            info = await self.store.get_subscription_info(group)
            self.metrics.subscription_in_flight.labels(group).set(info.in_flight)
            self.metrics.subscription_parked.labels(group).set(info.parked)
            await asyncio.sleep(interval)

    async def _consume(self) -> None:
        # The store hands this process at most max_in_flight undecided deliveries, what its actor slots
        # can take: more would wait here unacked, their message timeout running, while other processes
        # of the group could take them (and each store would otherwise apply its own default limit).
        subscription = await self.store.read_subscription(
            self.settings.group, buffer_size=self.settings.max_in_flight
        )
        self._subscription = subscription
        try:
            async for event in subscription:
                if self.stopping:
                    break
                self.metrics.deliveries.inc()
                if not event.stream.startswith(SAGA_STREAM_PREFIX) or (
                    # Most deliveries are the engine's own appends coming back: nothing new to decide.
                    event.stream not in self._actors and event.revision <= self.cache.decided(event.stream)
                ):
                    await subscription.ack(event.id)
                    continue
                await self.post(event.stream, Hint(event, _acker(subscription, event)))
        finally:
            self._subscription = None
            with contextlib.suppress(EventStoreError):
                await subscription.close()

    async def _on_due(self, timer: DueTimer) -> None:
        if self.stopping:
            return
        placement = self.placement
        if placement is not None:
            match placement.fires(timer.stream):
                case "mine":
                    pass
                case "unowned":
                    self.metrics.timers_fired_for_owner.inc()
                case _ if timer.handed_out >= OWNER_FALLBACK_HAND_OUTS:
                    # The owner left it pending through several refires here: fire it anyway (firing
                    # is idempotent; the saga's own events clear it on every node).
                    self.metrics.timers_fired_for_owner.inc()
                case _:
                    self.metrics.timers_left_to_owner.inc()
                    return
        await self.post(timer.stream, Wake(timer))

    async def wake(self, stream: str) -> None:
        """Ask the saga's actor to look at the stream head now (used after a command was appended)."""
        await self.post(stream, Wake())

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking deliveries; give calls in flight ``grace`` seconds to finish and record them."""
        if self.stopping:
            return
        self.stopping = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        if self._subscription is not None:
            with contextlib.suppress(EventStoreError):
                await self._subscription.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=max(0.0, deadline - time.monotonic()))
        # Let the actors record the outcomes their calls posted.
        actors = [a.task for a in self._actors.values() if a.task is not None]
        if actors:
            await asyncio.wait(actors, timeout=max(0.1, deadline - time.monotonic()))
        for actor in list(self._actors.values()):
            if actor.task is not None and not actor.task.done():
                actor.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await actor.task
        for call in list(self._calls):
            call.cancel()
        if self._index is not None:
            self._index.close()
            self._index = None

    @property
    def active_actors(self) -> int:
        return len(self._actors)

    @property
    def group(self) -> str:
        return self.settings.group

    @property
    def timers_running(self) -> bool:
        return self.firer is not None and not self.stopping

    @property
    def timers_fired(self) -> int:
        return self.firer.fired_total if self.firer is not None else 0

    @property
    def consuming(self) -> bool:
        """Its persistent-subscription consumer is connected (it takes deliveries)."""
        return self._subscription is not None and not self.stopping


def _acker(subscription: PersistentSubscription, event: RecordedEvent) -> Callable[[], Awaitable[None]]:
    async def ack() -> None:
        with contextlib.suppress(EventStoreError):
            await subscription.ack(event.id)

    return ack
