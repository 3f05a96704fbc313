"""Reading the end of a bounded stream, and giving it its bound."""

from __future__ import annotations

from orchestrator.eventstore.errors import StreamNotFound
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import RecordedEvent


async def read_after(store: EventStore, stream: str, after: int | None, window: int) -> list[RecordedEvent]:
    """The events of ``stream`` after revision ``after`` (None: none seen yet), oldest first, but never
    more than the newest ``window``: a reader that fell further behind skips to the end. A missing stream
    has no events."""
    try:
        if after is not None:
            # The usual case, one request: the few events since the last read (none, mostly).
            events = list(await store.read_stream(stream, from_revision=after + 1, limit=window))
            if len(events) < window:
                return events
        newest = list(await store.read_stream(stream, from_revision=-1, backwards=True, limit=window))
    except StreamNotFound:
        return []
    newest.reverse()
    return [e for e in newest if after is None or e.revision > after]


async def bound(store: EventStore, stream: str, max_count: int) -> None:
    """Give ``stream`` a ``$maxCount`` (keeping its other metadata), unless it has that one already."""
    current = await store.get_stream_metadata(stream)
    if current.values.get("$maxCount") == max_count:
        return
    await store.set_stream_metadata(stream, {**current.values, "$maxCount": max_count})
