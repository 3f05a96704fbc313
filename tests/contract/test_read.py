"""Reading one stream and ``$all``: order, ranges, direction, batches, filters, the recorded fields."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from orchestrator.eventstore import (
    ANY,
    NO_STREAM,
    EventFilter,
    EventStore,
    NewEvent,
    Position,
    RecordedEvent,
    StreamNotFound,
)
from tests.contract.support import Names, increasing, read_all_events

pytestmark = pytest.mark.timeout(60)


async def _stream_of(store: EventStore, names: Names, count: int) -> tuple[str, list[NewEvent]]:
    stream = names.stream("order")
    events = names.events(count)
    await store.append(stream, events, expected=NO_STREAM)
    return stream, events


async def _spread(store: EventStore, names: Names) -> list[RecordedEvent]:
    """Twelve events over three streams of the test, in six appends; returned as ``$all`` holds them."""
    streams = [names.stream("a"), names.stream("b"), names.stream("c")]
    for i in range(6):
        await store.append(streams[i % 3], names.events(1 + i % 3, start=10 * i), expected=ANY)
    recorded = await read_all_events(store, filter=names.filter)
    assert len(recorded) == 12
    return recorded


async def _revisions(store: EventStore, stream: str, **kwargs: Any) -> list[int]:
    return [e.revision for e in await store.read_stream(stream, **kwargs)]


async def test_read_stream_returns_the_events_in_revision_order(store: EventStore, names: Names) -> None:
    stream, events = await _stream_of(store, names, 5)
    recorded = list(await store.read_stream(stream))
    assert [e.id for e in recorded] == [e.id for e in events]
    assert [e.revision for e in recorded] == [0, 1, 2, 3, 4]
    assert increasing(recorded)


async def test_read_stream_from_a_revision_with_a_limit(store: EventStore, names: Names) -> None:
    stream, _ = await _stream_of(store, names, 6)
    assert await _revisions(store, stream, from_revision=2) == [2, 3, 4, 5]
    assert await _revisions(store, stream, from_revision=2, limit=2) == [2, 3]
    assert await _revisions(store, stream, limit=1) == [0]
    assert await _revisions(store, stream, from_revision=6) == []


async def test_read_stream_backwards(store: EventStore, names: Names) -> None:
    stream, _ = await _stream_of(store, names, 6)
    assert await _revisions(store, stream, from_revision=-1, backwards=True) == [5, 4, 3, 2, 1, 0]
    assert await _revisions(store, stream, from_revision=-1, backwards=True, limit=2) == [5, 4]
    assert await _revisions(store, stream, from_revision=3, backwards=True) == [3, 2, 1, 0]
    assert await _revisions(store, stream, from_revision=3, backwards=True, limit=2) == [3, 2]


async def test_read_stream_of_a_missing_stream_raises_stream_not_found(
    store: EventStore, names: Names
) -> None:
    with pytest.raises(StreamNotFound) as caught:
        await store.read_stream(names.stream("missing"))
    assert caught.value.stream == names.stream("missing")
    with pytest.raises(StreamNotFound):
        await store.read_stream(names.stream("missing"), from_revision=-1, backwards=True)


async def test_recorded_events_carry_what_was_appended(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    appended = [
        NewEvent(uuid4(), names.type("Created"), b'{"total": 12.5}', b'{"correlation":"c-1"}'),
        NewEvent(uuid4(), names.type("Scanned"), bytes(range(256)), b"", "application/octet-stream"),
    ]
    result = await store.append(stream, appended, expected=NO_STREAM)
    now = datetime.now(UTC)
    recorded = list(await store.read_stream(stream))
    for revision, (new, event) in enumerate(zip(appended, recorded, strict=True)):
        assert (event.id, event.type, event.stream, event.revision) == (new.id, new.type, stream, revision)
        assert isinstance(event.data, bytes)
        assert isinstance(event.metadata, bytes)
        assert (event.data, event.metadata, event.content_type) == (new.data, new.metadata, new.content_type)
        assert isinstance(event.position, Position)
        assert event.recorded_at.tzinfo is not None
        assert event.recorded_at.utcoffset() is not None
        assert abs(event.recorded_at - now) < timedelta(minutes=10)
        assert event.retry_count == 0
    assert recorded[-1].position == result.position
    # the same events, read from $all, are the same records
    from_all = await read_all_events(store, filter=names.filter)
    assert [(e.id, e.position) for e in from_all] == [(e.id, e.position) for e in recorded]


async def test_read_all_yields_bounded_batches_in_position_order(store: EventStore, names: Names) -> None:
    expected = await _spread(store, names)
    batches = [batch async for batch in store.read_all(filter=names.filter, batch_size=3)]
    assert all(isinstance(batch, Sequence) for batch in batches)
    assert all(0 < len(batch) <= 3 for batch in batches), [len(b) for b in batches]
    flat = [e for batch in batches for e in batch]
    assert [e.id for e in flat] == [e.id for e in expected]
    assert increasing(flat)


async def test_read_all_after_a_position_is_exclusive(store: EventStore, names: Names) -> None:
    recorded = await _spread(store, names)
    after = await read_all_events(store, after=recorded[3].position, filter=names.filter)
    assert [e.id for e in after] == [e.id for e in recorded[4:]]
    assert await read_all_events(store, after=recorded[-1].position, filter=names.filter) == []


async def test_read_all_with_a_limit(store: EventStore, names: Names) -> None:
    recorded = await _spread(store, names)
    limited = await read_all_events(store, filter=names.filter, batch_size=3, limit=4)
    assert [e.id for e in limited] == [e.id for e in recorded[:4]]


async def test_read_all_by_stream_prefix(store: EventStore, names: Names) -> None:
    for stream in ("order-1", "order-2", "invoice-1", "order-3"):
        await store.append(names.stream(stream), names.events(2), expected=NO_STREAM)
    await store.append(names.outside("order-1"), names.events(2), expected=NO_STREAM)

    orders = await read_all_events(store, filter=EventFilter(stream_prefixes=(names.stream("order-"),)))
    assert [e.stream for e in orders] == [names.stream(f"order-{n}") for n in (1, 1, 2, 2, 3, 3)]

    either = EventFilter(stream_prefixes=(names.stream("order-2"), names.stream("invoice-")))
    picked = await read_all_events(store, filter=either)
    assert [e.stream for e in picked] == [names.stream(s) for s in ("order-2",) * 2 + ("invoice-1",) * 2]


async def test_read_all_by_event_type_regex(store: EventStore, names: Names) -> None:
    for i, stream in enumerate((names.stream("a"), names.stream("b"), names.outside("c"))):
        await store.append(stream, names.events(1, "Created", start=i), expected=NO_STREAM)
        await store.append(stream, names.events(1, "Cancelled", start=i), expected=0)
        await store.append(stream, names.events(1, "Paid", start=i), expected=1)

    wanted = EventFilter(event_type_regex=f"^{names.type('')}(Created|Paid)$")
    picked = await read_all_events(store, filter=wanted)
    assert [e.type for e in picked] == [names.type(t) for t in ("Created", "Paid") * 3]
    assert {e.stream for e in picked} == {names.stream("a"), names.stream("b"), names.outside("c")}
    assert increasing(picked)


def test_an_event_filter_is_by_prefix_or_by_type_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        EventFilter(stream_prefixes=("orders-",), event_type_regex="^Order")
