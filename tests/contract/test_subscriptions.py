"""Catch-up subscriptions: history, a CaughtUp marker, then live events, with no gap and no repeat at the
switch; checkpoints past filtered-out events; close() ends the iteration."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from orchestrator.eventstore import ANY, NO_STREAM, CaughtUp, EventStore, Position, RecordedEvent
from tests.contract.harness import StoreHarness
from tests.contract.support import Collect, Collector, Names, eventually, mark, read_all_events, within

pytestmark = pytest.mark.timeout(60)


def _shape(collector: Collector) -> list[int | str]:
    """Revisions and the CaughtUp marker, in the order they arrived (checkpoints left out)."""
    return [
        item.revision if isinstance(item, RecordedEvent) else "caught-up"
        for item in collector.items
        if isinstance(item, RecordedEvent | CaughtUp)
    ]


async def _write(
    store: EventStore,
    stream: str,
    names: Names,
    appends: int,
    per_append: int,
    after_each: Callable[[int], Awaitable[None]],
) -> None:
    """Append ``appends`` small appends to ``stream`` one after another; await ``after_each(done)``."""
    for i in range(appends):
        expected = NO_STREAM if i == 0 else i * per_append - 1
        await store.append(stream, names.events(per_append, start=i * per_append), expected=expected)
        await after_each(i + 1)


async def test_subscribe_stream_delivers_history_then_caught_up_then_live(
    store: EventStore, names: Names, collect: Collect
) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(3), expected=NO_STREAM)
    subscription = collect(await store.subscribe_stream(stream))
    await eventually(lambda: subscription.caught_up, what="CaughtUp")
    await store.append(stream, names.events(2, start=3), expected=2)
    await eventually(lambda: len(subscription.events) >= 5, what="5 events")
    assert _shape(subscription) == [0, 1, 2, "caught-up", 3, 4]
    assert [e.id for e in subscription.events] == [e.id for e in await store.read_stream(stream)]


async def test_subscribe_stream_after_a_revision(store: EventStore, names: Names, collect: Collect) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(5), expected=NO_STREAM)
    subscription = collect(await store.subscribe_stream(stream, after_revision=2))
    await eventually(lambda: subscription.caught_up, what="CaughtUp")
    await store.append(stream, names.events(1, start=5), expected=4)
    await eventually(lambda: len(subscription.events) >= 3, what="3 events")
    assert _shape(subscription) == [3, 4, "caught-up", 5]


async def test_subscribe_stream_before_the_stream_exists(
    store: EventStore, names: Names, collect: Collect
) -> None:
    stream = names.stream("later")
    subscription = collect(await store.subscribe_stream(stream))
    await eventually(lambda: subscription.caught_up, what="CaughtUp")
    await store.append(stream, names.events(2), expected=NO_STREAM)
    await eventually(lambda: len(subscription.events) >= 2, what="2 events")
    assert _shape(subscription) == ["caught-up", 0, 1]


async def test_subscribe_stream_switches_to_live_without_gap_or_repeat(
    store: EventStore, names: Names, collect: Collect
) -> None:
    stream = names.stream("busy")
    appends, per_append = 100, 2
    subscriptions: list[Collector] = []

    async def subscribe_now_and_then(done: int) -> None:
        # The writer goes on at once: each subscription catches up while the stream keeps growing.
        if done in (1, 10, 40, 70):
            subscriptions.append(collect(await store.subscribe_stream(stream)))

    await _write(store, stream, names, appends, per_append, subscribe_now_and_then)
    total = appends * per_append
    written = [e.id for e in await store.read_stream(stream)]
    assert len(written) == total
    for subscription in subscriptions:
        await eventually(lambda s=subscription: len(s.events) >= total, 10.0, what=f"{total} events")
        assert [e.revision for e in subscription.events] == list(range(total))
        assert [e.id for e in subscription.events] == written
        assert subscription.caught_up


async def test_subscribe_all_delivers_history_then_caught_up_then_live(
    store: EventStore, names: Names, collect: Collect
) -> None:
    start = await mark(store, names)
    await store.append(names.stream("a"), names.events(2), expected=NO_STREAM)
    await store.append(names.outside("x"), names.events(2), expected=NO_STREAM)
    await store.append(names.stream("b"), names.events(1), expected=NO_STREAM)
    subscription = collect(await store.subscribe_all(after=start, filter=names.filter))
    await eventually(lambda: subscription.caught_up, what="CaughtUp")
    await store.append(names.outside("x"), names.events(1), expected=1)
    await store.append(names.stream("a"), names.events(2), expected=1)
    await eventually(lambda: len(subscription.events) >= 5, what="5 events")

    expected = await read_all_events(store, after=start, filter=names.filter)
    assert [(e.id, e.position) for e in subscription.events] == [(e.id, e.position) for e in expected]
    arrived = [i for i in subscription.items if isinstance(i, RecordedEvent | CaughtUp)]
    assert isinstance(arrived[3], CaughtUp)
    assert all(isinstance(i, RecordedEvent) for i in arrived[:3] + arrived[4:])


async def test_subscribe_all_switches_to_live_without_gap_or_repeat(
    store: EventStore, names: Names, collect: Collect
) -> None:
    start = await mark(store, names)
    subscriptions: list[Collector] = []

    async def subscribe_now_and_then(done: int) -> None:
        if done in (1, 8, 16, 24):
            subscriptions.append(collect(await store.subscribe_all(after=start, filter=names.filter)))

    async def quietly(done: int) -> None:
        await asyncio.sleep(0)

    # Four writers in the prefix and one outside it race with subscriptions that start meanwhile.
    await asyncio.gather(
        _write(store, names.stream("w0"), names, 30, 2, subscribe_now_and_then),
        *(_write(store, names.stream(f"w{i}"), names, 30, 2, quietly) for i in range(1, 4)),
        _write(store, names.outside("noise"), names, 30, 2, quietly),
    )
    expected = [(e.id, e.position) for e in await read_all_events(store, after=start, filter=names.filter)]
    assert len(expected) == 4 * 30 * 2
    for subscription in subscriptions:
        await eventually(lambda s=subscription: len(s.events) >= len(expected), 10.0, what="every event")
        assert [(e.id, e.position) for e in subscription.events] == expected
        assert subscription.caught_up


async def test_subscribe_all_checkpoints_past_filtered_out_events(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    start = await mark(store, names)
    await store.append(names.stream("a"), names.events(1), expected=NO_STREAM)
    subscription = collect(await store.subscribe_all(after=start, filter=names.filter, checkpoint_interval=1))
    await eventually(lambda: subscription.caught_up and len(subscription.events) == 1, what="history")

    for i in range(5):
        last = await store.append(names.outside("noise"), names.events(20, start=20 * i), expected=ANY)

    def past_the_noise() -> bool:
        return any(cp.position >= last.position for cp in subscription.checkpoints)

    if harness.shared:
        # Other runs write to a shared server too: its checkpoint cadence is not ours to pin down, so
        # give it time and check only what every checkpoint must satisfy.
        await within(past_the_noise, 3.0)
    else:
        await eventually(past_the_noise, what=f"a checkpoint at or past {last.position}")
    positions = [cp.position for cp in subscription.checkpoints]
    assert all(isinstance(p, Position) for p in positions)
    assert positions == sorted(positions)
    assert [e.stream for e in subscription.events] == [names.stream("a")]


@pytest.mark.parametrize("kind", ["stream", "all"])
async def test_close_ends_the_iteration(store: EventStore, names: Names, collect: Collect, kind: str) -> None:
    stream = names.stream("order")
    await store.append(stream, names.events(1), expected=NO_STREAM)
    if kind == "stream":
        subscription = collect(await store.subscribe_stream(stream))
    else:
        subscription = collect(await store.subscribe_all(after=await mark(store, names), filter=names.filter))
    await eventually(lambda: subscription.caught_up, what="CaughtUp")
    assert await subscription.close(), "iteration did not end after close()"
    assert subscription.error is None
