"""Idempotency per stream by event id (design.md §0 invariant 5), as EventStoreDB does it: a retry of
the same ids with the same exact revision or NO_STREAM returns the original position and writes nothing;
a partial overlap is a conflict; the same ids in another stream are unrelated."""

from __future__ import annotations

import pytest

from orchestrator.eventstore import (
    NO_STREAM,
    EventStore,
    WrongExpectedRevision,
    new_events,
)
from tests.contract.support import Names, read_all_events

pytestmark = pytest.mark.timeout(60)


async def test_retrying_a_no_stream_append_returns_the_original_position(
    store: EventStore, names: Names
) -> None:
    stream = names.stream("order")
    events = names.events(3)
    first = await store.append(stream, events, expected=NO_STREAM)
    again = await store.append(stream, events, expected=NO_STREAM)
    assert again.position == first.position
    assert again.next_revision in (None, 2)
    assert [e.id for e in await store.read_stream(stream)] == [e.id for e in events]
    assert len(await read_all_events(store, filter=names.filter)) == 3


async def test_retrying_an_exact_revision_append_returns_the_original_position(
    store: EventStore, names: Names
) -> None:
    stream = names.stream("order")
    head = names.events(1)
    await store.append(stream, head, expected=NO_STREAM)
    events = names.events(2, start=1)
    first = await store.append(stream, events, expected=0)
    again = await store.append(stream, events, expected=0)
    assert again.position == first.position
    assert again.next_revision in (None, 2)
    assert [e.id for e in await store.read_stream(stream)] == [e.id for e in head + events]
    assert len(await read_all_events(store, filter=names.filter)) == 3


async def test_a_retry_after_the_stream_moved_on_is_still_idempotent(store: EventStore, names: Names) -> None:
    # The outcome of an append can be unknown (a lost connection); the writer resends it later, when
    # its own next append may already be in the stream.
    stream = names.stream("order")
    opening, follow_up = names.events(2), names.events(1, start=2)
    first = await store.append(stream, opening, expected=NO_STREAM)
    second = await store.append(stream, follow_up, expected=1)
    assert (await store.append(stream, opening, expected=NO_STREAM)).position == first.position
    assert (await store.append(stream, follow_up, expected=1)).position == second.position
    assert [e.id for e in await store.read_stream(stream)] == [e.id for e in opening + follow_up]


@pytest.mark.parametrize("shape", ["first-matches-rest-differ", "more-events-than-before"])
async def test_a_partial_overlap_is_wrong_expected_revision(
    store: EventStore, names: Names, shape: str
) -> None:
    stream = names.stream("order")
    head = names.events(1)
    await store.append(stream, head, expected=NO_STREAM)
    original = names.events(2, start=1)
    await store.append(stream, original, expected=0)
    extra = names.events(1, start=9)
    retry = [original[0], *extra] if shape == "first-matches-rest-differ" else [*original, *extra]
    with pytest.raises(WrongExpectedRevision) as caught:
        await store.append(stream, retry, expected=0)
    assert caught.value.actual == 2
    assert [e.id for e in await store.read_stream(stream)] == [e.id for e in head + original]


async def test_the_same_event_ids_in_another_stream_are_unrelated(store: EventStore, names: Names) -> None:
    events = names.events(2)
    in_a = await store.append(names.stream("a"), events, expected=NO_STREAM)
    in_b = await store.append(names.stream("b"), events, expected=NO_STREAM)
    assert in_b.position > in_a.position
    for stream in (names.stream("a"), names.stream("b")):
        recorded = await store.read_stream(stream)
        assert [(e.id, e.stream) for e in recorded] == [(e.id, stream) for e in events]
    assert len(await read_all_events(store, filter=names.filter)) == 4


async def test_deterministic_ids_repeat_a_decision_idempotently_and_refuse_a_different_one(
    store: EventStore, names: Names
) -> None:
    stream = names.stream("saga")
    started = names.type("StepStarted")
    decision = [(started, b'{"step":"reserve"}', b'{"nonce":"p1-1"}')]
    first = new_events(stream, NO_STREAM, decision)
    assert [e.id for e in new_events(stream, NO_STREAM, decision)] == [e.id for e in first]

    written = await store.append(stream, first, expected=NO_STREAM)
    resent = await store.append(stream, new_events(stream, NO_STREAM, decision), expected=NO_STREAM)
    assert resent.position == written.position

    other = new_events(stream, NO_STREAM, [(started, b'{"step":"charge"}', b'{"nonce":"p1-1"}')])
    assert other[0].id != first[0].id
    with pytest.raises(WrongExpectedRevision) as caught:
        await store.append(stream, other, expected=NO_STREAM)
    assert caught.value.actual == 0

    # the same at an exact revision
    succeeded = names.type("StepSucceeded")
    outcome = new_events(stream, 0, [(succeeded, b'{"step":"reserve"}', b'{"nonce":"p1-2"}')])
    at_one = await store.append(stream, outcome, expected=0)
    assert (await store.append(stream, outcome, expected=0)).position == at_one.position
    conflicting = new_events(stream, 0, [(succeeded, b'{"step":"reserve","late":true}', b'{"nonce":"p1-2"}')])
    with pytest.raises(WrongExpectedRevision) as caught:
        await store.append(stream, conflicting, expected=0)
    assert caught.value.actual == 1
    assert [e.id for e in await store.read_stream(stream)] == [first[0].id, outcome[0].id]
