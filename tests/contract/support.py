"""Helpers of the contract suite: unique names, event builders, waiting with a deadline, and a collector
that drains a subscription in the background.

Nothing here knows an adapter; everything goes through the port.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol
from uuid import UUID, uuid4

from orchestrator.eventstore import (
    ANY,
    CaughtUp,
    Checkpoint,
    EventFilter,
    EventStore,
    EventStoreError,
    NewEvent,
    Position,
    RecordedEvent,
    SubscriptionInfo,
)


@dataclass(frozen=True)
class Names:
    """Names unique to one test, so that runs sharing one server never see each other's data."""

    uid: str

    @classmethod
    def fresh(cls) -> Names:
        return cls(uuid4().hex)

    @property
    def prefix(self) -> str:
        return f"t{self.uid}-"

    @property
    def filter(self) -> EventFilter:
        """Everything this test writes with :meth:`stream`, nothing else."""
        return EventFilter(stream_prefixes=(self.prefix,))

    def stream(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def outside(self, name: str) -> str:
        """A stream of this test that :attr:`filter` does not select."""
        return f"o{self.uid}-{name}"

    def group(self, name: str = "group") -> str:
        return f"g{self.uid}-{name}"

    def type(self, name: str) -> str:
        return f"T{self.uid}{name}"

    def events(self, count: int, kind: str = "Happened", *, start: int = 0) -> list[NewEvent]:
        """``count`` JSON events with fresh ids (determinism is not the point where this is used)."""
        return [
            NewEvent(uuid4(), self.type(kind), json.dumps({"n": start + i}).encode(), b'{"test":"contract"}')
            for i in range(count)
        ]


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline that fails the test, not a cancel scope
    *,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.01,
) -> None:
    """Poll ``predicate`` (sync or async) until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        await asyncio.sleep(interval)


async def within(predicate: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109 - as above
    """Like :func:`eventually`, but report whether it held instead of failing: for what a shared
    server may or may not do within a test's time."""
    try:
        await eventually(predicate, timeout)
    except AssertionError:
        return False
    return True


async def holds_for(predicate: Callable[[], bool], duration: float, *, what: str = "condition") -> None:
    """Assert that ``predicate`` holds throughout ``duration`` seconds.

    Used only to show that something does *not* happen (a redelivery), over a window just longer than
    the time in which a wrong store would make it happen; bounded, and it fails as soon as it is violated.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while loop.time() < deadline:
        assert predicate(), what
        await asyncio.sleep(0.02)
    assert predicate(), what


def increasing(events: Sequence[RecordedEvent]) -> bool:
    """Whether the events' positions strictly increase."""
    return all(a.position < b.position for a, b in pairwise(events))


async def read_all_events(store: EventStore, **kwargs: Any) -> list[RecordedEvent]:
    return [event async for batch in store.read_all(**kwargs) for event in batch]


async def mark(store: EventStore, names: Names) -> Position:
    """Append one event outside the test's prefix and return its position: a start point that skips
    everything written before the test (on a shared server: other runs' events)."""
    result = await store.append(names.outside("marker"), names.events(1, "Marker"), expected=ANY)
    return result.position


async def info_reaches(
    store: EventStore,
    group: str,
    timeout: float = 5.0,  # noqa: ASYNC109 - as in eventually()
    **expected: object,
) -> SubscriptionInfo:
    """Poll the group's info until every field in ``expected`` has the given value; return that info."""
    last: list[SubscriptionInfo] = []

    async def check() -> bool:
        info = await store.get_subscription_info(group)
        last[:] = [info]
        return all(getattr(info, field) == value for field, value in expected.items())

    await eventually(check, timeout, what=lambda: f"{group} info {expected}; last seen {last}", interval=0.05)
    return last[0]


class _Iterable(Protocol):
    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def close(self) -> None: ...


class Collector:
    """Drains a subscription in a background task into :attr:`items`.

    Tests wait on what arrived with :func:`eventually` instead of awaiting ``__anext__`` with a timeout:
    cancelling a pending read is not part of the port, so the suite never does it.
    """

    def __init__(
        self, subscription: _Iterable, *, on_event: Callable[[RecordedEvent], Awaitable[None]] | None = None
    ) -> None:
        self.subscription = subscription
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self._on_event = on_event
        self._closed = False
        self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async for item in self.subscription:
                self.items.append(item)
                if self._on_event is not None and isinstance(item, RecordedEvent):
                    await self._on_event(item)
        except Exception as e:  # kept for the test to assert on
            self.error = e

    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def events(self) -> list[RecordedEvent]:
        return [item for item in self.items if isinstance(item, RecordedEvent)]

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return [item for item in self.items if isinstance(item, Checkpoint)]

    @property
    def caught_up(self) -> bool:
        return any(isinstance(item, CaughtUp) for item in self.items)

    def deliveries(self, event_id: UUID) -> list[RecordedEvent]:
        return [event for event in self.events if event.id == event_id]

    def received(self, event_id: UUID) -> bool:
        return any(event.id == event_id for event in self.events)

    async def close(self) -> bool:
        """Close the subscription (once) and wait for the drain to end; return whether it ended by
        itself within a few seconds (it is cancelled otherwise, so a hanging store cannot hang the suite)."""
        if not self._closed:
            self._closed = True
            with suppress(EventStoreError):
                await self.subscription.close()
        finished, _ = await asyncio.wait({self._task}, timeout=5.0)
        if finished:
            return True
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        return False


#: The ``collect`` fixture: start a collector on a subscription (closed when the test ends).
Collect = Callable[..., Collector]
