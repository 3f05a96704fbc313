"""Reads and catch-up subscriptions of the Streams.Read call, as sequences of ReadResp messages.

A subscription reads committed rows after the last position it sent, up to the head the embedded
store's writer published, then waits for the writer to move the head. History and live are one loop,
so the switch can neither skip nor repeat an event, and a slow client never "falls behind" (this server
keeps no live buffer to overflow, so it never sends FellBehind).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator

from kurrentdbclient.protos.v1 import streams_pb2

from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.errors import StoreClosed, StreamNotFound
from orchestrator.eventstore.server import convert
from orchestrator.eventstore.server.convert import AllFilter
from orchestrator.eventstore.server.storage import PAGE, all_page, now_utc, read_stream_page, stream_info

#: Read's count when the client gives none: a read that reads everything
_FOREVER = 2**63 - 1


async def read_stream(
    store: EmbeddedEventStore, stream: str, start: int | None, backwards: bool, count: int
) -> AsyncIterator[streams_pb2.ReadResp]:
    """A stream read; a missing stream is a StreamNotFound message, not an error (Enumerator.ReadStream*)."""
    remaining = count
    cursor = start
    while remaining > 0:
        page = functools.partial(
            read_stream_page, stream=stream, start=cursor, backwards=backwards, limit=min(PAGE, remaining)
        )
        try:
            events, cursor = await store.reader.run(functools.partial(page, now=now_utc()))
        except StreamNotFound:
            yield convert.stream_not_found(stream)
            return
        for event in events:
            yield convert.read_event(event)
        remaining -= len(events)
        if cursor is None:
            return


async def read_all(
    store: EmbeddedEventStore, start: int, backwards: bool, count: int, flt: AllFilter | None
) -> AsyncIterator[streams_pb2.ReadResp]:
    """$all from ``start`` (forwards inclusive, backwards exclusive); ``count`` counts matching events."""
    remaining = count
    cursor = start
    while remaining > 0:
        events = await store.reader.run(
            functools.partial(all_page, start=cursor, backwards=backwards, limit=PAGE)
        )
        for event in events:
            if flt is None or flt.matches(event):
                yield convert.read_event(event)
                remaining -= 1
                if remaining == 0:
                    return
        if len(events) < PAGE:
            return
        cursor = events[-1].position.commit + (0 if backwards else 1)


async def subscribe_stream(
    store: EmbeddedEventStore, stream: str, after: int | None, from_end: bool
) -> AsyncIterator[streams_pb2.ReadResp]:
    """Confirmation, the stream's history after ``after``, CaughtUp, then live events."""
    yield convert.confirmation(str(uuid.uuid4()))
    notifier = store.notifier
    if from_end:
        info = await store.reader.run(lambda c: stream_info(c, stream))
        following = info.last + 1
    else:
        following = 0 if after is None else after + 1
    caught_up = False
    while True:
        head = notifier.head
        while True:
            page = functools.partial(
                read_stream_page, stream=stream, start=following, backwards=False, limit=PAGE, now=now_utc()
            )
            try:
                events, more = await store.reader.run(page)
            except StreamNotFound:
                # Not written yet (or soft-deleted): the subscription waits for it, as on the server.
                break
            for event in events:
                yield convert.read_event(event)
                following = event.revision + 1
            if more is None:
                break
            following = max(following, more)
        if not caught_up:
            caught_up = True
            yield convert.caught_up(revision=following - 1 if following > 0 else None)
        await _wait(store, head, stream)


async def subscribe_all(
    store: EmbeddedEventStore, after: int | None, from_end: bool, flt: AllFilter | None
) -> AsyncIterator[streams_pb2.ReadResp]:
    """Confirmation, $all after ``after``, CaughtUp, then live events; with a filter, a checkpoint every
    ``window * multiplier`` events considered and one when going live (Enumerator.AllSubscriptionFiltered:
    ``_checkpointInterval = checkpointIntervalMultiplier * maxSearchWindow``)."""
    yield convert.confirmation(str(uuid.uuid4()))
    notifier = store.notifier
    cursor = notifier.head if from_end else (after or 0)
    window = flt.window if flt is not None else PAGE
    interval = flt.window * flt.checkpoint_multiplier if flt is not None else 0
    considered = 0
    caught_up = False
    while True:
        head = notifier.head
        while cursor < head:
            events = await store.reader.run(
                functools.partial(all_page, start=cursor + 1, backwards=False, limit=window, upto=head)
            )
            if not events:
                cursor = head
                break
            for event in events:
                cursor = event.position.commit
                considered += 1
                if flt is None or flt.matches(event):
                    yield convert.read_event(event)
                if flt is not None and considered >= interval:
                    considered = 0
                    yield convert.checkpoint(cursor)
        if not caught_up:
            caught_up = True
            if flt is not None and cursor > 0:
                yield convert.checkpoint(cursor)
            yield convert.caught_up(position=cursor)
        await _wait(store, head, None)


async def _wait(store: EmbeddedEventStore, seen_head: int, stream: str | None) -> None:
    notifier = store.notifier
    if notifier.is_closed():
        raise StoreClosed("the event store is closing")
    await notifier.waiter(seen_head, stream)
    if notifier.is_closed():
        raise StoreClosed("the event store is closing")
