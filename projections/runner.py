"""The projection runner: follows ``$all`` from the stored position of its generation and applies bounded
batches with compare-and-set (design.md §0 invariant 7, §6).

- Exactly once: every batch moves the stored position from the batch's start to its end in the same Lua
  call as its updates; a conflict (someone else moved it) applies nothing, and the runner re-reads the
  stored position and resubscribes from there.
- One active runner per generation: a lease (:mod:`projections.lease`) checked inside the apply script:
  the projector lease of the process it runs in (``lease=``, the projector service's), or a lease of its
  own on its generation. The lease is an efficiency measure (a standby does no wasted work) and refuses
  a stale owner's batches; the compare-and-set is the fence, so even two runners without a lease never
  double-apply.
- Markers advance the position: a ``Checkpoint`` or ``CaughtUp`` flushes the batch with the marker's
  position (possibly with no updates), so a filtered-out tail never stalls the stored position.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from orchestrator.eventstore import (
    CaughtUp,
    Checkpoint,
    EventFilter,
    EventStore,
    EventStoreError,
    Position,
    RecordedEvent,
    StoreClosed,
    Subscription,
    SubscriptionDropped,
    SubscriptionItem,
)
from projections.lease import Lease
from projections.metrics import ProjectionMetrics
from projections.redis_store import ReadModelError, RedisViewStore
from projections.updates import Projector, Update

__all__ = [
    "ProjectionMetrics",
    "Projector",
    "ProjectorError",
    "Runner",
    "RunnerSettings",
    "wait_for_position",
]

log = structlog.get_logger(__name__)


class ProjectorError(Exception):
    """A projector raised: a bug. The runner stops rather than skip an event (the view would be wrong
    for ever without saying so)."""


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    #: most events per batch (one Lua call)
    batch_events: int = 500
    #: most updates per batch, so a burst of fat events still makes a bounded script call
    batch_updates: int = 5_000
    #: longest wait for more events before a partial batch is applied (live tail latency)
    linger: float = 0.02
    #: the lease's time to live: a standby takes over within ``lease_ttl * 1.1`` of the holder's last
    #: renewal (it polls at a tenth of the TTL)
    lease_ttl: float = 5.0
    #: subscription checkpoint interval (in the store's scan windows), see ``EventStore.subscribe_all``
    checkpoint_interval: int = 32
    #: backoff after a Redis or event store failure (doubles up to ``max_backoff``)
    backoff: float = 0.1
    max_backoff: float = 5.0
    #: at most one head_position() read per this many seconds, for the lag gauge
    head_refresh: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_events < 1 or self.batch_updates < 1 or self.linger < 0 or self.lease_ttl <= 0:
            raise ValueError("batch sizes and lease_ttl must be positive, linger not negative")


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_LINGER = object()
_APPLIED, _CONFLICT, _LEASE_LOST = "applied", "conflict", "lease_lost"


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, raising what it failed with. A cancellation of the caller
    itself propagates: a ``suppress(CancelledError)`` around ``await task`` would swallow it (the caller
    would carry on as if it had not been cancelled, and whoever stops it would wait for ever)."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


class Runner:
    """One runner of one generation. ``start()`` runs it as a task until ``stop()``."""

    def __init__(
        self,
        events: EventStore,
        views: RedisViewStore,
        generation: int,
        projectors: Sequence[Projector],
        *,
        filter: EventFilter | None = None,
        settings: RunnerSettings | None = None,
        owner: str | None = None,
        use_lease: bool = True,
        lease: Lease | None = None,
        metrics: ProjectionMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.views = views
        self.generation = generation
        self.projectors = tuple(projectors)
        self.filter = filter
        self.settings = settings or RunnerSettings()
        self.owner = owner or f"runner-{uuid.uuid4()}"
        self.use_lease = use_lease or lease is not None
        #: someone else's lease (the projector service's) this runner works under; it only follows it
        self._shared_lease = lease is not None
        self.lease = lease or Lease(views, self.owner, self.settings.lease_ttl, generation=generation)
        self.metrics = metrics or ProjectionMetrics()
        #: how far behind the last applied batch was, in seconds (None: nothing applied yet)
        self.lag_seconds: float | None = None
        self._clock = clock
        self._label = str(generation)
        #: the position this runner last applied or read from the store
        self.position: Position | None = None
        #: events this runner applied (not counting what was in the store before it started)
        self.events_applied = 0
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._head: Position | None = None
        self._head_read_at = float("-inf")

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"projection-runner-g{self.generation}")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await _cancel(task)

    @property
    def caught_up(self) -> bool:
        """Applied through a ``CaughtUp`` marker at least once."""
        return self._caught_up.is_set()

    # A bound that ends in a value, not an exception, is the point of these waits: hence `timeout`.
    async def wait_caught_up(self, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                await self._caught_up.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        backoff = self.settings.backoff
        renewer: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    if self._shared_lease:
                        await self.lease.wait_held()  # its holder (the service) acquires and renews it
                    elif self.use_lease and (renewer is None or renewer.done()):
                        await self.lease.acquire()
                        log.info("projection lease acquired", generation=self.generation, owner=self.owner)
                        renewer = asyncio.create_task(self.lease.keep())
                    if await self._follow() == _LEASE_LOST:
                        self.lease.lose()  # whoever holds it learns at once, not at the next renewal
                        if renewer is not None:
                            await _cancel(renewer)  # back to standby: acquire again before any work
                    backoff = self.settings.backoff
                except (ReadModelError, EventStoreError) as e:
                    if isinstance(e, StoreClosed):
                        raise
                    log.warning("projection runner retrying", generation=self.generation, error=str(e))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.max_backoff)
        finally:
            if renewer is not None:
                await _cancel(renewer)
            if self.use_lease and not self._shared_lease:
                with contextlib.suppress(ReadModelError):
                    await self.lease.release()

    # --- following $all --------------------------------------------------------------------------------
    async def _follow(self) -> str:
        """Subscribe from the stored position and apply batches until a conflict or a lost lease; return
        which, so ``run`` resubscribes from the stored position or goes back to acquiring the lease."""
        start = await self.views.position(self.generation)
        self.position = start
        subscription = await self.events.subscribe_all(
            after=start, filter=self.filter, checkpoint_interval=self.settings.checkpoint_interval
        )
        queue: asyncio.Queue[SubscriptionItem | _Failed] = asyncio.Queue(self.settings.batch_events * 2)
        pump = asyncio.create_task(_pump(subscription, queue))
        loop = asyncio.get_running_loop()
        try:
            batch = _Batch(start)
            deadline: float | None = None
            while True:
                item: SubscriptionItem | _Failed | object
                if deadline is None:
                    item = await queue.get()
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            item = await queue.get()
                    except TimeoutError:
                        item = _LINGER
                flush = item is _LINGER
                caught_up = False
                if isinstance(item, _Failed):
                    raise item.error
                if isinstance(item, RecordedEvent):
                    batch.add(item, self._project(item))
                    flush = batch.events >= self.settings.batch_events or (
                        len(batch.updates) >= self.settings.batch_updates
                    )
                elif isinstance(item, Checkpoint):
                    batch.advance(item.position)
                    flush = True
                elif isinstance(item, CaughtUp):
                    if item.position is not None:
                        batch.advance(item.position)
                    flush = caught_up = True
                if flush:
                    outcome = await self._apply(batch, caught_up)
                    if outcome != _APPLIED:
                        return outcome
                    batch = _Batch(batch.end)
                    deadline = None
                elif deadline is None and batch.pending:
                    deadline = loop.time() + self.settings.linger
        finally:
            pump.cancel()
            try:
                with contextlib.suppress(EventStoreError):
                    await subscription.close()
            finally:
                await asyncio.wait([pump])

    def _project(self, event: RecordedEvent) -> list[Update]:
        updates: list[Update] = []
        for projector in self.projectors:
            try:
                updates.extend(projector.project(event))
            except Exception as e:
                raise ProjectorError(
                    f"{type(projector).__name__} failed on {event.type} at {event.position}: {e}"
                ) from e
        return updates

    async def _apply(self, batch: _Batch, caught_up: bool) -> str:
        """Apply one batch; anything but ``_APPLIED`` means resubscribe (conflict) or stand by (lease)."""
        if batch.end is None or not batch.pending:
            if caught_up:
                self._caught_up.set()
            return _APPLIED
        started = time.perf_counter()
        result = await self.views.apply_batch(
            self.generation,
            batch.start,
            batch.end,
            batch.updates,
            fence=self.lease.fence if self.use_lease else None,
        )
        metrics = self.metrics
        metrics.apply_seconds.labels(self._label).observe(time.perf_counter() - started)
        if not result:
            if result.lease_lost:
                metrics.fenced.labels(self._label).inc()
                log.warning("projection lease lost at apply", generation=self.generation)
                return _LEASE_LOST
            else:
                metrics.conflicts.labels(self._label).inc()
                log.info(
                    "projection position moved by another writer; resuming from it",
                    generation=self.generation,
                    expected=batch.start,
                    stored=result.stored,
                )
                return _CONFLICT
        if result.op_errors:
            metrics.op_errors.labels(self._label).inc(result.op_errors)
            log.error(
                "view updates refused by redis",
                generation=self.generation,
                count=result.op_errors,
                first_error=result.first_error,
            )
        self.position = batch.end
        self.events_applied += batch.events
        metrics.events.labels(self._label).inc(batch.events)
        metrics.batch_size.labels(self._label).observe(batch.events)
        await self._observe_lag(batch, caught_up)
        if caught_up:
            self._caught_up.set()
        return _APPLIED

    async def _observe_lag(self, batch: _Batch, caught_up: bool) -> None:
        if caught_up:
            self.lag_seconds = 0.0
            self.metrics.lag_positions.labels(self._label).set(0)
            self.metrics.lag_seconds.labels(self._label).set(0)
            return
        if batch.last_time is not None:
            age = max(0.0, self._clock() - batch.last_time)
            self.lag_seconds = age
            self.metrics.lag_seconds.labels(self._label).set(age)
        now = time.monotonic()
        if now - self._head_read_at >= self.settings.head_refresh:
            self._head_read_at = now
            self._head = await self.events.head_position()
        if self._head is not None and batch.end is not None:
            self.metrics.lag_positions.labels(self._label).set(max(0, self._head.commit - batch.end.commit))


class _Batch:
    """Updates accumulated since ``start`` and the position they bring the view to."""

    def __init__(self, start: Position | None) -> None:
        self.start = start
        self.end = start
        self.updates: list[Update] = []
        self.events = 0
        self.last_time: float | None = None

    @property
    def pending(self) -> bool:
        return self.end != self.start

    def add(self, event: RecordedEvent, updates: list[Update]) -> None:
        self.updates.extend(updates)
        self.events += 1
        self.advance(event.position)
        self.last_time = event.recorded_at.timestamp()

    def advance(self, position: Position) -> None:
        if self.end is None or position > self.end:
            self.end = position


async def _pump(subscription: Subscription, queue: asyncio.Queue[SubscriptionItem | _Failed]) -> None:
    """Move items from the subscription into a queue, so the batcher can wait with a linger timeout
    without cancelling a subscription read half way (not every adapter tolerates that)."""
    try:
        async for item in subscription:
            await queue.put(item)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        await queue.put(_Failed(e))
    else:
        await queue.put(_Failed(SubscriptionDropped("the $all subscription ended")))


async def wait_for_position(
    views: RedisViewStore,
    position: Position,
    timeout: float,  # noqa: ASYNC109 - on timeout the caller serves the stale view; no exception
    *,
    generation: int | None = None,
    max_interval: float = 0.05,
) -> tuple[bool, Position | None]:
    """Read-your-writes: wait (at most ``timeout`` seconds) until the view — of ``generation``, or of
    the active one, re-read each time since a rebuild may switch it — has applied ``position``.
    Returns ``(reached, current position)``; on a timeout the caller serves the stale view and says how
    stale it is (``X-Read-Model-Position``)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        gen = generation if generation is not None else await views.active_generation()
        current = await views.position(gen) if gen is not None else None
        if current is not None and current >= position:
            return True, current
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, current
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval)
