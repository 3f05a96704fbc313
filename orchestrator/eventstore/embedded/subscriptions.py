"""Catch-up subscriptions of the embedded store, woken by the writer (no polling timer).

A subscription always reads committed rows from the database after the last position it delivered, in
pages bounded by the head the writer published. History and live are the same loop, so there is nothing
to switch between: no event can be missed or repeated when the subscriber catches up.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Self

from orchestrator.eventstore.embedded.reader import Reader, selects
from orchestrator.eventstore.errors import SubscriptionDropped
from orchestrator.eventstore.types import (
    CaughtUp,
    Checkpoint,
    EventFilter,
    Position,
    RecordedEvent,
    SubscriptionItem,
)

if TYPE_CHECKING:
    from orchestrator.eventstore.embedded.store import EmbeddedEventStore


#: the most recent committed events kept in memory for in-process subscribers
RECENT_EVENTS = 8192
_NO_FILTER = EventFilter()


class Notifier:
    """The committed head, published by the writer on the loop, the subscribers waiting for it, and the
    most recent committed events (so live subscribers need not read back what was just written)."""

    def __init__(self, head: int) -> None:
        self.head = head
        self._all: set[asyncio.Future[None]] = set()
        self._streams: dict[str, set[asyncio.Future[None]]] = {}
        self.closed = False
        # Contiguous positions, oldest first: every committed position is published, in commit order.
        self._recent: deque[RecordedEvent] = deque(maxlen=RECENT_EVENTS)

    def recent(
        self, after: int, upto: int, flt: EventFilter | None, limit: int, system: bool = False
    ) -> tuple[list[RecordedEvent], int] | None:
        """Like ``Reader.read_all_page`` from memory, or None when ``after`` is older than what is kept."""
        recent = self._recent
        if not recent or after >= upto:
            return None
        first = recent[0].position.commit
        if after + 1 < first:
            return None
        matches: Callable[[str, str], bool] = (
            functools.partial(selects, flt, system=True) if system else (flt or _NO_FILTER).matches
        )
        out: list[RecordedEvent] = []
        scanned = after
        for event in itertools.islice(recent, after + 1 - first, None):
            position = event.position.commit
            if position > upto:
                break
            scanned = position
            if matches(event.stream, event.type):
                out.append(event)
                if len(out) == limit:
                    break
        return out, scanned

    def publish(self, head: int, streams: frozenset[str], events: list[RecordedEvent] | None = None) -> None:
        if events:
            self._recent.extend(events)
        self.head = max(self.head, head)
        waiters, self._all = self._all, set()
        for name in streams:
            waiters |= self._streams.pop(name, set())
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        waiters = set(self._all)
        for group in self._streams.values():
            waiters |= group
        self._all.clear()
        self._streams.clear()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def waiter(self, seen_head: int, stream: str | None = None) -> asyncio.Future[None]:
        """A future done once the head moves past ``seen_head`` (for ``stream``: once a commit touches it
        — or at once if the head already moved, since that commit may have touched it)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed or self.head > seen_head:
            fut.set_result(None)
        elif stream is None:
            self._all.add(fut)
        else:
            self._streams.setdefault(stream, set()).add(fut)
        return fut


class _Base:
    def __init__(self, store: EmbeddedEventStore) -> None:
        self._store = store
        self._closed = False
        self._waiting: asyncio.Future[None] | None = None

    async def close(self) -> None:
        self._closed = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def _wait(self, seen_head: int, stream: str | None = None) -> None:
        notifier = self._store.notifier
        if notifier.is_closed():
            raise SubscriptionDropped("event store closed")
        self._waiting = notifier.waiter(seen_head, stream)
        try:
            await self._waiting
        finally:
            self._waiting = None
        if notifier.is_closed() and not self._closed:
            raise SubscriptionDropped("event store closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AllSubscription(_Base):
    def __init__(
        self,
        store: EmbeddedEventStore,
        after: Position | None,
        flt: EventFilter | None,
        checkpoint_interval: int,
        page_size: int,
    ) -> None:
        super().__init__(store)
        self._cursor = after.commit if after is not None else 0
        self._filter = flt
        self._page = page_size
        self._checkpoint_every = checkpoint_interval * page_size
        self._buffer: deque[SubscriptionItem] = deque()
        self._caught_up = False
        #: the last position the consumer was told about (event or checkpoint)
        self._reported = self._cursor

    def __aiter__(self) -> AsyncIterator[SubscriptionItem]:
        return self

    async def __anext__(self) -> SubscriptionItem:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._fill()
        return self._buffer.popleft()

    async def _fill(self) -> None:
        head = self._store.notifier.head
        if self._cursor < head:
            cursor, flt, page = self._cursor, self._filter, self._page
            hit = self._store.notifier.recent(cursor, head, flt, page)
            if hit is None:
                hit = await self._store.reader.run(lambda c: Reader.read_all_page(c, cursor, head, flt, page))
            events, scanned = hit
            self._cursor = scanned
            self._buffer.extend(events)
            if events:
                self._reported = events[-1].position.commit
            if scanned - self._reported >= self._checkpoint_every or (
                scanned == head and scanned > self._reported and self._caught_up
            ):
                self._buffer.append(Checkpoint(Position(scanned)))
                self._reported = scanned
            return
        if not self._caught_up:
            self._caught_up = True
            if self._cursor > self._reported:
                self._buffer.append(Checkpoint(Position(self._cursor)))
                self._reported = self._cursor
            self._buffer.append(CaughtUp(Position(self._cursor)))
            return
        await self._wait(self._cursor)


class StreamSubscriptionImpl(_Base):
    def __init__(
        self, store: EmbeddedEventStore, stream: str, after_revision: int | None, page_size: int
    ) -> None:
        super().__init__(store)
        self._stream = stream
        self._next = 0 if after_revision is None else after_revision + 1
        self._page = page_size
        self._buffer: deque[RecordedEvent | CaughtUp] = deque()
        self._caught_up = False
        self._seen_head = -1

    def __aiter__(self) -> AsyncIterator[RecordedEvent | CaughtUp]:
        return self

    async def __anext__(self) -> RecordedEvent | CaughtUp:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._fill()
        return self._buffer.popleft()

    async def _fill(self) -> None:
        head = self._store.notifier.head
        if head > self._seen_head:
            stream, start, page = self._stream, self._next, self._page
            events = await self._store.reader.run(lambda c: _stream_page(c, stream, start, page, head))
            if events:
                self._buffer.extend(events)
                self._next = events[-1].revision + 1
                if len(events) == page:
                    return  # more may be there below `head`: read again before declaring anything
            self._seen_head = head
            if not self._caught_up:
                self._caught_up = True
                self._buffer.append(CaughtUp(Position(head)))
            return
        await self._wait(self._seen_head, self._stream)


def _stream_page(
    conn: sqlite3.Connection, stream: str, start: int, page: int, head: int
) -> list[RecordedEvent]:
    info = Reader.stream_row(conn, stream)
    if info is None or info[1] < start:
        return []  # a stream that does not exist yet is subscribed to as empty, as on the server
    return Reader.read_stream(conn, stream, start, False, page, upto_position=head)
