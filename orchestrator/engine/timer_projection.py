"""Keeps this process's timer index in step with ``$all``.

For each saga event it folds the saga (from a bounded cache, or from the stream on a miss) and writes the
difference in pending timers, with the ``$all`` position, in one transaction of ``timers.db``. The firer
is told about new timers that fall inside its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from orchestrator.domain.errors import UnreadableHistory
from orchestrator.domain.events import SagaStarted
from orchestrator.domain.state import SagaState, evolve, fold, is_terminal, start, timer_changes
from orchestrator.engine.timers import TimerChange, TimerFirer, TimerIndex
from orchestrator.eventstore.port import EventStore, Subscription
from orchestrator.eventstore.types import (
    CaughtUp,
    Checkpoint,
    EventFilter,
    Position,
    RecordedEvent,
    SubscriptionItem,
)
from orchestrator.records.codec import from_recorded
from orchestrator.records.streams import SAGA_STREAM_PREFIX

SAGA_FILTER = EventFilter(stream_prefixes=(SAGA_STREAM_PREFIX,))


class TimerProjection:
    def __init__(
        self,
        store: EventStore,
        index: TimerIndex,
        firer: TimerFirer | None,
        *,
        cache_size: int = 10_000,
        batch_size: int = 500,
        on_applied: Callable[[Position], None] | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._firer = firer
        self._cache: OrderedDict[str, SagaState] = OrderedDict()
        self._cache_size = cache_size
        self._batch_size = batch_size
        self._on_applied = on_applied
        self.caught_up = False
        self.unreadable = 0
        self.lag_seconds = 0.0

    async def run(self) -> None:
        sub = await self._store.subscribe_all(after=self._index.position(), filter=SAGA_FILTER)
        # A pump fills a queue; the projector takes whatever is waiting as one batch, so a batch is
        # written as soon as the subscription has nothing more to give (no linger timer, no cancelled read).
        queue: asyncio.Queue[SubscriptionItem | BaseException] = asyncio.Queue(maxsize=4 * self._batch_size)
        pump = asyncio.create_task(_pump(sub, queue), name="timer-projection-pump")
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty() and len(items) < self._batch_size:
                    items.append(queue.get_nowait())
                await self._apply_batch(items)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await sub.close()

    async def _apply_batch(self, items: list[SubscriptionItem | BaseException]) -> None:
        changes: list[TimerChange] = []
        resets: set[str] = set()
        position: Position | None = None
        for item in items:
            if isinstance(item, BaseException):
                if position is not None:
                    await self._flush(changes, resets, position)
                raise item
            if isinstance(item, RecordedEvent):
                await self._project(item, changes, resets)
                position = item.position
                self.lag_seconds = max(0.0, time.time() - item.recorded_at.timestamp())
            elif isinstance(item, Checkpoint):
                position = item.position
            elif isinstance(item, CaughtUp):
                self.caught_up = True
        if position is not None:
            await self._flush(changes, resets, position)

    async def _flush(self, changes: list[TimerChange], resets: set[str], position: Position) -> None:
        # On the loop thread, like every other use of the index's connection: a short local transaction
        # (synchronous=NORMAL, no fsync), and never concurrent with the firer's reads or with close().
        self._index.apply(changes, position, resets)
        if self._firer is not None:
            self._firer.changed(changes)
        if self._on_applied is not None:
            self._on_applied(position)

    async def _project(self, recorded: RecordedEvent, changes: list[TimerChange], resets: set[str]) -> None:
        stream = recorded.stream
        decoded = from_recorded(recorded)
        before = self._cache.pop(stream, None)
        try:
            if isinstance(decoded.event, SagaStarted) and recorded.revision == 0:
                before, after = None, start(decoded.event, recorded.recorded_at)
            elif before is not None and before.revision == recorded.revision - 1:
                after = evolve(before, decoded.event, recorded.recorded_at)
            else:
                after = await self._load(stream, recorded.revision)
                before = None
                resets.add(stream)
                changes[:] = [c for c in changes if c.stream != stream]
        except UnreadableHistory:
            # Another node (a newer release) may read it; its own timers keep it alive there.
            self.unreadable += 1
            return
        armed, disarmed = timer_changes(before, after)
        changes.extend(TimerChange(tid, stream, None) for tid in disarmed)
        changes.extend(TimerChange(t.id, stream, t.due_at.timestamp()) for t in armed)
        if is_terminal(after):
            return  # nothing will be due again: keep it out of the cache
        self._cache[stream] = after
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _load(self, stream: str, up_to_revision: int) -> SagaState:
        events = await self._store.read_stream(stream, limit=up_to_revision + 1)
        return fold((d.event, d.recorded_at) for d in map(from_recorded, events))


async def _pump(sub: Subscription, queue: asyncio.Queue[SubscriptionItem | BaseException]) -> None:
    try:
        async for item in sub:
            await queue.put(item)
    except Exception as e:  # handed to the consumer, which raises it after applying what came before
        await queue.put(e)
