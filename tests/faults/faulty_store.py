"""An EventStore that delegates to a real store and injects the failures a networked store has.

On ``append`` (to streams with the given prefix, ``saga-`` by default), drawn from a seeded
``random.Random`` or scripted explicitly with :meth:`StoreFaults.inject`:

- ``refuse``: raise ``OperationalError`` before writing anything;
- ``ambiguous``: perform the real append, then raise ``OperationalError`` (the write landed, the answer
  was lost);
- ``delay``: sleep a bounded random time before appending (longer than some step timeouts);
- ``conflict``: raise ``WrongExpectedRevision`` for a burst of consecutive appends to one stream, without
  writing (another writer seems to hold the slot);
- ``outage``: refuse every append (and, by default, every saga stream read) for a while — a leader
  election on KurrentDB.

``read_stream`` can also fail on its own (``read_refuse``). Several wrappers (one per engine, say) may
share one :class:`StoreFaults`: the outage, the conflict bursts and the counts are then common, as they
would be for one store cluster. A fault is counted only when it hit a saga stream whose saga is in flight
(not terminal yet, as far as the appends seen through the wrappers tell).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from orchestrator.eventstore.errors import OperationalError, StreamNotFound, WrongExpectedRevision
from orchestrator.eventstore.port import (
    DEFAULT_BUFFER_SIZE,
    EventStore,
    PersistentSubscription,
    StreamSubscription,
    Subscription,
)
from orchestrator.eventstore.types import (
    AppendResult,
    EventFilter,
    Expected,
    NewEvent,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    StreamMetadata,
    StreamState,
    SubscriptionInfo,
)

TERMINAL_EVENTS = frozenset({"SagaCompleted", "SagaCompensated"})


class StoreFault(StrEnum):
    REFUSE = "refuse"
    AMBIGUOUS = "ambiguous"
    DELAY = "delay"
    CONFLICT = "conflict"
    OUTAGE = "outage"
    #: a saga stream read refused during an outage
    OUTAGE_READ = "outage_read"
    READ_REFUSE = "read_refuse"


#: the kinds drawn at random on an append, in this order
_APPEND_KINDS = (
    StoreFault.REFUSE,
    StoreFault.AMBIGUOUS,
    StoreFault.DELAY,
    StoreFault.CONFLICT,
    StoreFault.OUTAGE,
)


@dataclass(frozen=True)
class StoreFaultRates:
    """Probability of each kind per append (exclusive; the sum stays below 1), and their sizes."""

    refuse: float = 0.0
    ambiguous: float = 0.0
    delay: float = 0.0
    conflict: float = 0.0
    outage: float = 0.0
    #: per saga stream read, outside outages
    read_refuse: float = 0.0
    delay_max_s: float = 1.5
    #: consecutive appends to the stream that a conflict refuses (inclusive range)
    conflict_burst: tuple[int, int] = (1, 3)
    outage_s: tuple[float, float] = (0.5, 1.5)
    #: no random outage starts sooner than this after the last one ended (elections are rare; without a
    #: gap, the appends queued behind one outage would start the next one at once)
    outage_gap_s: float = 3.0
    #: whether saga stream reads fail during an outage too (a leader-only read does)
    reads_fail_in_outage: bool = True


NO_FAULTS = StoreFaultRates()


@dataclass(frozen=True)
class _Scripted:
    kind: StoreFault
    stream: str | None
    #: conflict: burst length; delay and outage: seconds
    size: float


class StoreFaults:
    """What every wrapper over one store shares: scripted faults, the outage, bursts, counts."""

    def __init__(self) -> None:
        #: injected faults that hit a saga in flight, by kind
        self.counts: Counter[str] = Counter()
        #: every injected fault, by kind
        self.all_counts: Counter[str] = Counter()
        self.outages = 0
        self.outage_until = 0.0
        self.terminal: set[str] = set()
        self.bursts: dict[str, int] = {}
        self.script: deque[_Scripted] = deque()

    def inject(self, kind: StoreFault, stream: str | None = None, *, size: float | None = None) -> None:
        """Make the next append (to ``stream``, or to any faulted stream) fail with ``kind``. ``size`` is
        the burst length of a conflict, or the seconds of a delay or an outage."""
        default = {StoreFault.CONFLICT: 2, StoreFault.DELAY: 0.5, StoreFault.OUTAGE: 1.0}.get(kind, 0)
        self.script.append(_Scripted(kind, stream, default if size is None else size))

    def in_outage(self) -> bool:
        return time.monotonic() < self.outage_until

    def in_flight(self, stream: str) -> bool:
        return stream.startswith("saga-") and stream not in self.terminal

    def count(self, kind: StoreFault, stream: str) -> None:
        self.all_counts[kind.value] += 1
        if self.in_flight(stream):
            self.counts[kind.value] += 1

    def take_scripted(self, stream: str) -> _Scripted | None:
        for item in self.script:
            if item.stream is None or item.stream == stream:
                self.script.remove(item)
                return item
        return None


class FaultyStore:
    """The EventStore port over ``inner``, with faults (see the module docstring)."""

    def __init__(
        self,
        inner: EventStore,
        *,
        seed: int = 0,
        rates: StoreFaultRates = NO_FAULTS,
        faults: StoreFaults | None = None,
        prefix: str = "saga-",
    ) -> None:
        self.inner = inner
        self.random = random.Random(seed)
        self.rates = rates
        self.faults = faults if faults is not None else StoreFaults()
        self.prefix = prefix

    # --- faults ------------------------------------------------------------------------------------------
    def _draw(self, stream: str) -> tuple[StoreFault | None, float]:
        scripted = self.faults.take_scripted(stream) if stream.startswith(self.prefix) else None
        if scripted is not None:
            return scripted.kind, scripted.size
        if not stream.startswith(self.prefix):
            return None, 0.0
        rates = self.rates
        roll = self.random.random()
        for kind in _APPEND_KINDS:
            rate: float = getattr(rates, kind.value)
            if roll < rate:
                if kind is StoreFault.DELAY:
                    return kind, self.random.uniform(0.05, rates.delay_max_s)
                if kind is StoreFault.CONFLICT:
                    return kind, self.random.randint(*rates.conflict_burst)
                if kind is StoreFault.OUTAGE:
                    if time.monotonic() < self.faults.outage_until + rates.outage_gap_s:
                        return None, 0.0
                    return kind, self.random.uniform(*rates.outage_s)
                return kind, 0.0
            roll -= rate
        return None, 0.0

    async def _actual(self, stream: str) -> int | None:
        try:
            last = await self.inner.read_stream(stream, from_revision=-1, backwards=True, limit=1)
        except StreamNotFound:
            return None
        return last[0].revision if last else None

    # --- streams -----------------------------------------------------------------------------------------
    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> AppendResult:
        faults = self.faults
        kind, size = self._draw(stream)
        if faults.in_outage():
            faults.count(StoreFault.OUTAGE, stream)
            raise OperationalError("store unavailable: leader election in progress")
        if kind is StoreFault.OUTAGE:
            faults.outages += 1
            faults.outage_until = time.monotonic() + size
            faults.count(StoreFault.OUTAGE, stream)
            raise OperationalError("store unavailable: leader election started")
        if faults.bursts.get(stream, 0) > 0 or kind is StoreFault.CONFLICT:
            left = faults.bursts.get(stream, 0) or int(size)
            faults.bursts[stream] = left - 1
            faults.count(StoreFault.CONFLICT, stream)
            raise WrongExpectedRevision(stream, expected, await self._actual(stream))
        if kind is StoreFault.REFUSE:
            faults.count(kind, stream)
            raise OperationalError("store refused the append (injected)")
        if kind is StoreFault.DELAY:
            faults.count(kind, stream)
            await asyncio.sleep(size)
        in_flight_before = faults.in_flight(stream)
        result = await self.inner.append(stream, events, expected=expected)
        if any(e.type in TERMINAL_EVENTS for e in events):
            faults.terminal.add(stream)
        if kind is StoreFault.AMBIGUOUS:
            faults.all_counts[kind.value] += 1
            if in_flight_before:
                faults.counts[kind.value] += 1
            raise OperationalError("the append's answer was lost (injected; the events were written)")
        return result

    async def read_stream(
        self,
        stream: str,
        *,
        from_revision: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Sequence[RecordedEvent]:
        if stream.startswith(self.prefix):
            if self.rates.reads_fail_in_outage and self.faults.in_outage():
                self.faults.count(StoreFault.OUTAGE_READ, stream)
                raise OperationalError("store unavailable: leader election in progress")
            if self.rates.read_refuse and self.random.random() < self.rates.read_refuse:
                self.faults.count(StoreFault.READ_REFUSE, stream)
                raise OperationalError("store refused the read (injected)")
        return await self.inner.read_stream(
            stream, from_revision=from_revision, backwards=backwards, limit=limit
        )

    def read_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        batch_size: int = 500,
        limit: int | None = None,
    ) -> AsyncIterator[Sequence[RecordedEvent]]:
        return self.inner.read_all(after=after, filter=filter, batch_size=batch_size, limit=limit)

    async def head_position(self) -> Position | None:
        return await self.inner.head_position()

    async def subscribe_stream(self, stream: str, *, after_revision: int | None = None) -> StreamSubscription:
        return await self.inner.subscribe_stream(stream, after_revision=after_revision)

    async def subscribe_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        checkpoint_interval: int = 32,
    ) -> Subscription:
        return await self.inner.subscribe_all(
            after=after, filter=filter, checkpoint_interval=checkpoint_interval
        )

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        return await self.inner.get_stream_metadata(stream)

    async def set_stream_metadata(
        self, stream: str, metadata: Mapping[str, Any], *, expected: Expected = StreamState.ANY
    ) -> None:
        await self.inner.set_stream_metadata(stream, metadata, expected=expected)

    async def tombstone_stream(self, stream: str, *, expected: Expected = StreamState.ANY) -> None:
        await self.inner.tombstone_stream(stream, expected=expected)

    # --- persistent subscriptions ------------------------------------------------------------------------
    async def create_subscription(
        self,
        group: str,
        *,
        filter: EventFilter | None = None,
        settings: PersistentSubscriptionSettings | None = None,
        after: Position | None = None,
        from_end: bool = False,
    ) -> None:
        await self.inner.create_subscription(
            group, filter=filter, settings=settings, after=after, from_end=from_end
        )

    async def update_subscription(self, group: str, settings: PersistentSubscriptionSettings) -> None:
        await self.inner.update_subscription(group, settings)

    async def delete_subscription(self, group: str) -> None:
        await self.inner.delete_subscription(group)

    async def read_subscription(
        self, group: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> PersistentSubscription:
        return await self.inner.read_subscription(group, buffer_size=buffer_size)

    async def replay_parked(self, group: str) -> None:
        await self.inner.replay_parked(group)

    async def get_subscription_info(self, group: str) -> SubscriptionInfo:
        return await self.inner.get_subscription_info(group)

    async def list_subscriptions(self) -> Sequence[SubscriptionInfo]:
        return await self.inner.list_subscriptions()

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def ping(self) -> None:
        if self.faults.in_outage():
            raise OperationalError("store unavailable: leader election in progress")
        await self.inner.ping()

    async def close(self) -> None:
        """The inner store belongs to whoever opened it: closing a wrapper leaves it open."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
