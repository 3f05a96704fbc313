"""Stream metadata (stored with its own revision, never an event of the stream or of ``$all``) and
tombstones (a deleted stream can be neither read nor appended to, ever again)."""

from __future__ import annotations

import pytest

from orchestrator.eventstore import (
    ANY,
    EXISTS,
    NO_STREAM,
    EventStore,
    Expected,
    StreamDeleted,
    WrongExpectedRevision,
)
from tests.contract.support import Names, read_all_events

pytestmark = pytest.mark.timeout(60)


async def test_a_stream_without_metadata_has_empty_metadata(store: EventStore, names: Names) -> None:
    missing = await store.get_stream_metadata(names.stream("missing"))
    assert dict(missing.values) == {}
    assert missing.revision is None
    await store.append(names.stream("plain"), names.events(1), expected=NO_STREAM)
    plain = await store.get_stream_metadata(names.stream("plain"))
    assert dict(plain.values) == {}
    assert plain.revision is None


async def test_set_then_get_stream_metadata(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(1), expected=NO_STREAM)
    first = {"$maxCount": 1000, "tenant": "acme", "labels": {"tier": "gold", "regions": ["eu", "us"]}}
    await store.set_stream_metadata(stream, first)
    got = await store.get_stream_metadata(stream)
    assert dict(got.values) == first
    assert got.revision == 0

    # set replaces the whole document
    await store.set_stream_metadata(stream, {"tenant": "globex"})
    got = await store.get_stream_metadata(stream)
    assert dict(got.values) == {"tenant": "globex"}
    assert got.revision == 1


async def test_the_metadata_expected_revision_is_honoured(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.set_stream_metadata(stream, {"v": 1}, expected=NO_STREAM)
    with pytest.raises(WrongExpectedRevision):
        await store.set_stream_metadata(stream, {"v": 2}, expected=NO_STREAM)
    with pytest.raises(WrongExpectedRevision):
        await store.set_stream_metadata(stream, {"v": 2}, expected=3)
    assert dict((await store.get_stream_metadata(stream)).values) == {"v": 1}
    await store.set_stream_metadata(stream, {"v": 2}, expected=0)
    await store.set_stream_metadata(stream, {"v": 3}, expected=EXISTS)
    got = await store.get_stream_metadata(stream)
    assert (dict(got.values), got.revision) == ({"v": 3}, 2)


async def test_metadata_is_no_event_of_the_stream_nor_of_all(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    before = await store.append(stream, names.events(1), expected=NO_STREAM)
    await store.set_stream_metadata(stream, {"tenant": "acme"})
    after = names.events(1, start=1)
    await store.append(stream, after, expected=0)

    assert [e.revision for e in await store.read_stream(stream)] == [0, 1]
    # Unfiltered on purpose: system events must stay out of $all even without a filter.
    since = await read_all_events(store, after=before.position)
    assert not [e for e in since if e.stream.startswith("$") or e.type.startswith("$")]
    assert after[0].id in {e.id for e in since}


@pytest.mark.parametrize("expected", [ANY, NO_STREAM, EXISTS, 1], ids=repr)
async def test_a_tombstoned_stream_can_no_longer_be_read_or_appended(
    store: EventStore, names: Names, expected: Expected
) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(2), expected=NO_STREAM)
    await store.tombstone_stream(stream)
    with pytest.raises(StreamDeleted) as caught:
        await store.read_stream(stream)
    assert caught.value.stream == stream
    # NO_STREAM included: a tombstone never reopens the stream
    with pytest.raises(StreamDeleted):
        await store.append(stream, names.events(1, start=2), expected=expected)


async def test_a_tombstone_with_a_wrong_expected_revision_is_refused(store: EventStore, names: Names) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(2), expected=NO_STREAM)
    with pytest.raises(WrongExpectedRevision) as caught:
        await store.tombstone_stream(stream, expected=0)
    assert caught.value.actual == 1
    assert len(await store.read_stream(stream)) == 2
    await store.tombstone_stream(stream, expected=1)
    with pytest.raises(StreamDeleted):
        await store.read_stream(stream)


async def test_max_count_and_truncate_before_hide_older_events_from_stream_reads(
    store: EventStore, names: Names
) -> None:
    """``$maxCount`` leaves only the newest N readable, ``$tb`` nothing below it, on every store (the
    cluster's heartbeat and lease streams rely on it); ``$all`` still has every event."""
    stream = names.stream("beats")
    await store.append(stream, names.events(10), expected=NO_STREAM)
    await store.set_stream_metadata(stream, {"$maxCount": 3})
    forward = await store.read_stream(stream)
    assert [e.revision for e in forward] == [7, 8, 9]
    assert [e.revision for e in await store.read_stream(stream, from_revision=2, limit=2)] == [7, 8]
    backward = await store.read_stream(stream, from_revision=-1, backwards=True)
    assert [e.revision for e in backward] == [9, 8, 7]
    await store.append(stream, names.events(2), expected=9)
    assert [e.revision for e in await store.read_stream(stream)] == [9, 10, 11]
    await store.set_stream_metadata(stream, {"$tb": 11})
    assert [e.revision for e in await store.read_stream(stream)] == [11]
    everything = [e for e in await read_all_events(store) if e.stream == stream]
    assert len(everything) == 12
