"""Appending: expected states, revisions and positions, all or nothing, the size limit, racing writers."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from orchestrator.eventstore import (
    ANY,
    EXISTS,
    MAX_APPEND_SIZE,
    NO_STREAM,
    AppendResult,
    AppendTooLarge,
    EventStore,
    Expected,
    NewEvent,
    StreamNotFound,
    WrongExpectedRevision,
)
from tests.contract.harness import StoreHarness
from tests.contract.support import Names, increasing, read_all_events

pytestmark = pytest.mark.timeout(60)


async def test_no_stream_creates_the_stream(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    events = names.events(2)
    result = await store.append(stream, events, expected=NO_STREAM)
    assert result.next_revision in (None, 1)
    recorded = await store.read_stream(stream)
    assert [(e.id, e.revision) for e in recorded] == [(events[0].id, 0), (events[1].id, 1)]


async def test_exists_and_any_append_to_an_existing_stream(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(1), expected=NO_STREAM)
    exists = await store.append(stream, names.events(1), expected=EXISTS)
    any_ = await store.append(stream, names.events(2), expected=ANY)
    assert exists.next_revision in (None, 1)
    assert any_.next_revision in (None, 3)
    assert [e.revision for e in await store.read_stream(stream)] == [0, 1, 2, 3]


async def test_any_creates_a_missing_stream(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    result = await store.append(stream, names.events(1), expected=ANY)
    assert result.next_revision in (None, 0)
    assert len(await store.read_stream(stream)) == 1


async def test_exact_revision_appends_at_the_head(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(2), expected=NO_STREAM)
    result = await store.append(stream, names.events(3), expected=1)
    assert result.next_revision in (None, 4)
    assert [e.revision for e in await store.read_stream(stream)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("expected", [NO_STREAM, 0, 1, 3, 17], ids=repr)
async def test_wrong_expectation_on_an_existing_stream(
    store: EventStore, names: Names, expected: Expected
) -> None:
    stream = names.stream("order")
    written = names.events(3)
    await store.append(stream, written, expected=NO_STREAM)
    with pytest.raises(WrongExpectedRevision) as caught:
        await store.append(stream, names.events(2), expected=expected)
    assert caught.value.actual == 2
    assert caught.value.stream == stream
    # all or nothing: none of the refused events was written
    assert [e.id for e in await store.read_stream(stream)] == [e.id for e in written]


@pytest.mark.parametrize("expected", [EXISTS, 0, 5], ids=repr)
async def test_wrong_expectation_on_a_missing_stream(
    store: EventStore, names: Names, expected: Expected
) -> None:
    stream = names.stream("order")
    with pytest.raises(WrongExpectedRevision) as caught:
        await store.append(stream, names.events(2), expected=expected)
    assert caught.value.actual is None
    with pytest.raises(StreamNotFound):
        await store.read_stream(stream)


async def test_positions_strictly_increase_across_appends_and_streams(
    store: EventStore, names: Names
) -> None:
    streams = [names.stream("a"), names.stream("b"), names.stream("c")]
    results: list[AppendResult] = []
    for i in range(9):
        results.append(await store.append(streams[i % 3], names.events(1 + i % 2), expected=ANY))
    positions = [r.position for r in results]
    assert positions == sorted(set(positions))
    # ... and within an append: every recorded event has its own position, in append order
    assert increasing(await read_all_events(store, filter=names.filter))


async def test_append_result_is_the_position_of_the_last_event(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(1), expected=NO_STREAM)
    result = await store.append(stream, names.events(3), expected=0)
    recorded = await store.read_stream(stream)
    assert result.position == recorded[-1].position
    assert result.next_revision in (None, recorded[-1].revision)


async def test_a_failed_append_writes_none_of_its_events(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(1), expected=NO_STREAM)
    refused = names.events(4)
    with pytest.raises(WrongExpectedRevision):
        await store.append(stream, refused, expected=3)
    seen = {e.id for e in await read_all_events(store, filter=names.filter)}
    assert len(seen) == 1
    assert not seen & {e.id for e in refused}


def _events_of_total_size(names: Names, total: int, count: int) -> list[NewEvent]:
    kind = names.type("Big")
    each, rest = divmod(total, count)
    sizes = [each + (1 if i < rest else 0) for i in range(count)]
    events = [
        NewEvent(uuid4(), kind, b"x" * (size - len(kind.encode())), content_type="application/octet-stream")
        for size in sizes
    ]
    assert sum(e.size for e in events) == total
    return events


async def test_an_append_over_the_size_limit_is_refused_and_writes_nothing(
    store: EventStore, names: Names
) -> None:
    stream = names.stream("big")
    # Each event is well under the limit: only their sum is over it.
    events = _events_of_total_size(names, MAX_APPEND_SIZE + 1, count=2)
    assert all(e.size < MAX_APPEND_SIZE for e in events)
    with pytest.raises(AppendTooLarge):
        await store.append(stream, events, expected=NO_STREAM)
    with pytest.raises(StreamNotFound):
        await store.read_stream(stream)


async def test_an_append_just_under_the_size_limit_is_accepted(
    harness: StoreHarness, store: EventStore, names: Names
) -> None:
    stream = names.stream("big")
    events = _events_of_total_size(names, MAX_APPEND_SIZE - harness.append_size_slack, count=2)
    await store.append(stream, events, expected=NO_STREAM)
    recorded = await store.read_stream(stream)
    assert [len(e.data) for e in recorded] == [len(e.data) for e in events]


@pytest.mark.parametrize("head", [None, 2], ids=["new-stream", "at-revision"])
async def test_racing_appends_with_the_same_expectation_exactly_one_wins(
    store: EventStore, names: Names, head: int | None
) -> None:
    stream = names.stream("race")
    before = names.events(3) if head is not None else []
    if before:
        await store.append(stream, before, expected=NO_STREAM)
    expected: Expected = NO_STREAM if head is None else head
    contenders = [names.events(2, start=10 * i) for i in range(50)]
    outcomes = await asyncio.gather(
        *(store.append(stream, events, expected=expected) for events in contenders), return_exceptions=True
    )
    winners = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, AppendResult)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, WrongExpectedRevision)]
    assert len(winners) == 1, outcomes
    assert len(losers) == 49, outcomes
    last = (head if head is not None else -1) + 2
    assert {loser.actual for loser in losers} == {last}
    recorded = await store.read_stream(stream)
    assert [e.id for e in recorded] == [e.id for e in before + contenders[winners[0]]]


async def test_head_position_is_the_last_appended_position(
    harness: StoreHarness, store: EventStore, names: Names
) -> None:
    await store.append(names.stream("a"), names.events(2), expected=NO_STREAM)
    last = await store.append(names.stream("b"), names.events(1), expected=NO_STREAM)
    head = await store.head_position()
    assert head is not None
    if harness.shared:
        assert head >= last.position
    else:
        assert head == last.position


async def test_head_position_of_an_empty_store_is_none(harness: StoreHarness, store: EventStore) -> None:
    if harness.shared:
        pytest.skip("a shared server is never empty")
    assert await store.head_position() is None
