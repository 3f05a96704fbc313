"""Persistent subscriptions when consumers fail: message timeouts, retries up to parking, consumers that
leave, restarts (checkpoints, at-least-once redelivery, durable parked list) and Pinned assignment."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from uuid import UUID

import pytest

from orchestrator.eventstore import NO_STREAM, EventStore, NackAction, NewEvent, Position
from tests.contract.harness import StoreHarness
from tests.contract.persistent_support import FAST, consume, create_group, redelivery_window
from tests.contract.support import Collect, Collector, Names, eventually, info_reaches, mark

pytestmark = pytest.mark.timeout(60)


async def test_an_unacked_event_is_redelivered_after_the_message_timeout(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, settings=FAST, after=await mark(store, names))
    consumer = await consume(store, group, collect)
    event = names.events(1)[0]
    await store.append(names.stream("a"), [event], expected=NO_STREAM)
    await eventually(lambda: consumer.received(event.id), what="first delivery")
    delivered_at = asyncio.get_running_loop().time()
    await eventually(
        lambda: len(consumer.deliveries(event.id)) >= 2,
        redelivery_window(harness, FAST) + 2.0,
        what="redelivery after the message timeout",
    )
    waited = asyncio.get_running_loop().time() - delivered_at
    assert waited >= FAST.message_timeout * 0.8, f"redelivered after {waited:.2f}s, before the timeout"
    assert consumer.deliveries(event.id)[1].retry_count == 1
    await consumer.subscription.ack(event.id)
    await info_reaches(store, group, in_flight=0)


async def test_an_event_held_by_a_consumer_that_leaves_goes_to_another(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, settings=FAST, after=await mark(store, names))
    one, two = await consume(store, group, collect), await consume(store, group, collect)
    await info_reaches(store, group, connections=2)
    event = names.events(1)[0]
    await store.append(names.stream("a"), [event], expected=NO_STREAM)
    await eventually(lambda: one.received(event.id) or two.received(event.id), what="first delivery")
    holder, other = (one, two) if one.received(event.id) else (two, one)

    await holder.close()  # without acking
    await eventually(
        lambda: other.received(event.id), redelivery_window(harness, FAST) + 2.0, what="handover"
    )
    assert other.deliveries(event.id)[0].retry_count >= 1
    await other.subscription.ack(event.id)
    await info_reaches(store, group, in_flight=0, parked=0)


@pytest.mark.parametrize("cause", ["nack", "timeout"])
async def test_an_event_retried_more_than_max_retry_count_is_parked(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect, cause: str
) -> None:
    settings = replace(FAST, max_retry_count=2)
    group = await create_group(harness, store, names, settings=settings, after=await mark(store, names))
    consumer = await consume(store, group, collect)
    event = names.events(1)[0]
    await store.append(names.stream("a"), [event], expected=NO_STREAM)
    window = redelivery_window(harness, settings) + 2.0
    for attempt in range(3):  # the first delivery and max_retry_count retries
        await eventually(
            lambda a=attempt: len(consumer.deliveries(event.id)) > a, window, what=f"delivery {attempt}"
        )
        assert consumer.deliveries(event.id)[attempt].retry_count == attempt
        if cause == "nack":
            await consumer.subscription.nack(event.id, NackAction.RETRY)
    await info_reaches(store, group, window, parked=1, in_flight=0)

    sentinel = names.events(1, start=1)[0]
    await store.append(names.stream("b"), [sentinel], expected=NO_STREAM)
    await eventually(lambda: consumer.received(sentinel.id), what="the sentinel")
    await consumer.subscription.ack(sentinel.id)
    assert len(consumer.deliveries(event.id)) == 3


async def _restart_or_disconnect(harness: StoreHarness, store: EventStore, consumer: Collector) -> EventStore:
    """Restart the store; where that is impossible (a server), the consumer leaves without acking."""
    restarted = await harness.restart(store)
    if restarted is not None:
        return restarted
    await consumer.close()
    return store


async def test_after_a_restart_checkpointed_events_are_not_redelivered_and_unacked_ones_are(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    before = await consume(store, group, collect)
    events = names.events(6)
    await store.append(names.stream("a"), events[:3], expected=NO_STREAM)
    await store.append(names.stream("b"), events[3:], expected=NO_STREAM)
    await eventually(lambda: len(before.events) >= 6, what="6 events")
    recorded = {e.id: e for e in before.events}
    acked, unacked = events[:3], events[3:]
    for event in acked:
        await before.subscription.ack(event.id)

    # the checkpoint covers the acked events and stops before the first unacked one
    last_acked, first_unacked = recorded[acked[-1].id].position, recorded[unacked[0].id].position
    await info_reaches(store, group, 10.0, in_flight=3)
    await eventually(
        lambda: _checkpoint_at_least(store, group, last_acked), 10.0, what=f"a checkpoint at {last_acked}"
    )
    info = await store.get_subscription_info(group)
    assert info.checkpoint is not None
    assert info.checkpoint < first_unacked

    store = await _restart_or_disconnect(harness, store, before)
    after = await consume(store, group, collect, auto_ack=True)
    sentinel = names.events(1, start=6)[0]
    await eventually(lambda: all(after.received(e.id) for e in unacked), 10.0, what="the unacked events")
    await store.append(names.stream("c"), [sentinel], expected=NO_STREAM)
    await eventually(lambda: after.received(sentinel.id), what="the sentinel")
    assert not [e for e in after.events if e.id in {a.id for a in acked}], "acked events came back"


async def _checkpoint_at_least(store: EventStore, group: str, position: Position) -> bool:
    checkpoint = (await store.get_subscription_info(group)).checkpoint
    return checkpoint is not None and checkpoint >= position


async def test_the_parked_list_survives_a_restart(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    if not harness.can_restart:
        pytest.skip(f"{harness.name}: a server cannot be restarted from a test; its parked list is its own")
    group = await create_group(harness, store, names, after=await mark(store, names))
    before = await consume(store, group, collect)
    parked, passed = names.events(2)
    await store.append(names.stream("a"), [parked, passed], expected=NO_STREAM)
    await eventually(lambda: len(before.events) >= 2, what="2 events")
    await before.subscription.nack(parked.id, NackAction.PARK)
    await before.subscription.ack(passed.id)
    await info_reaches(store, group, parked=1, in_flight=0)
    passed_at = before.deliveries(passed.id)[0].position
    await eventually(lambda: _checkpoint_at_least(store, group, passed_at), what="a checkpoint past both")

    restarted = await harness.restart(store)
    assert restarted is not None
    await info_reaches(restarted, group, parked=1)
    after = await consume(restarted, group, collect, auto_ack=True)
    sentinel = names.events(1, start=2)[0]
    await restarted.append(names.stream("b"), [sentinel], expected=NO_STREAM)
    await eventually(lambda: after.received(sentinel.id), what="the sentinel")
    assert [e.id for e in after.events] == [sentinel.id], "a parked event was delivered before its replay"

    await restarted.replay_parked(group)
    await eventually(lambda: after.received(parked.id), what="the replayed event")
    assert after.deliveries(parked.id)[0].retry_count == 0
    await info_reaches(restarted, group, parked=0, in_flight=0)


async def test_pinned_keeps_every_event_of_a_stream_on_one_consumer(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    consumers = [await consume(store, group, collect, auto_ack=True) for _ in range(2)]
    await info_reaches(store, group, connections=2)
    streams = [names.stream(f"s{i}") for i in range(8)]
    written: list[NewEvent] = []
    for round_ in range(4):  # interleaved: the streams' events alternate in $all
        for stream in streams:
            events = names.events(1, start=round_)
            await store.append(stream, events, expected=NO_STREAM if round_ == 0 else round_ - 1)
            written.extend(events)

    def delivered() -> set[UUID]:
        return {e.id for c in consumers for e in c.events}

    await eventually(lambda: delivered() >= {e.id for e in written}, what="every event")
    for stream in streams:
        holders = {i for i, c in enumerate(consumers) for e in c.events if e.stream == stream}
        assert len(holders) == 1, f"{stream} went to consumers {holders}"
