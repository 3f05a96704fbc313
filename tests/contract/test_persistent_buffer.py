"""The per-consumer in-flight limit of persistent subscriptions (the client's ``buffer_size`` on the server):
a consumer never holds more unanswered events than its buffer size, an answer or a timeout frees a slot,
and what a full consumer cannot take goes to another consumer, or waits for its owner under Pinned."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.eventstore import NO_STREAM, ConsumerStrategy, EventStore, NackAction
from tests.contract.harness import StoreHarness
from tests.contract.persistent_support import FAST, PATIENT, consume, create_group, redelivery_window
from tests.contract.support import Collect, Collector, Names, eventually, holds_for, info_reaches, mark

pytestmark = pytest.mark.timeout(60)

#: Long enough for a store without the limit to deliver what it holds back (it would at once).
HELD_BACK = 1.0


def ids(consumer: Collector) -> list[object]:
    return [e.id for e in consumer.events]


async def test_a_consumer_never_holds_more_than_its_buffer_size(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    consumer = await consume(store, group, collect, buffer_size=3)
    events = names.events(8)
    await store.append(names.stream("a"), events, expected=NO_STREAM)
    await eventually(lambda: len(consumer.events) >= 3, what="3 events")
    await holds_for(lambda: len(consumer.events) == 3, HELD_BACK, what="no more than the buffer size")
    assert ids(consumer) == [e.id for e in events[:3]]
    await info_reaches(store, group, in_flight=3)


async def test_each_answer_frees_one_slot(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    consumer = await consume(store, group, collect, buffer_size=2)
    events = names.events(5)
    await store.append(names.stream("a"), events, expected=NO_STREAM)
    await eventually(lambda: len(consumer.events) >= 2, what="2 events")

    # an ack frees a slot: exactly one more event comes
    await consumer.subscription.ack(events[0].id)
    await eventually(lambda: len(consumer.events) >= 3, what="a third event after an ack")
    await holds_for(lambda: len(consumer.events) == 3, HELD_BACK, what="one event per freed slot")
    assert ids(consumer) == [e.id for e in events[:3]]

    # a nack frees its slot too; a retried event goes before new ones, into the slot it freed
    await consumer.subscription.nack(events[1].id, NackAction.RETRY)
    await eventually(lambda: len(consumer.events) >= 4, what="the retried event")
    await holds_for(lambda: len(consumer.events) == 4, HELD_BACK, what="one event per freed slot")
    assert (consumer.events[3].id, consumer.events[3].retry_count) == (events[1].id, 1)

    # answering each event as it comes lets the rest through
    for event in events[1:]:
        await eventually(lambda e=event: consumer.received(e.id), what="the next event")
        await consumer.subscription.ack(event.id)
    await info_reaches(store, group, in_flight=0)
    assert [len(consumer.deliveries(e.id)) for e in events] == [1, 2, 1, 1, 1]


async def test_a_timed_out_event_frees_its_slot_and_is_redelivered_first(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, settings=FAST, after=await mark(store, names))
    consumer = await consume(store, group, collect, buffer_size=1)
    first, second = names.events(2)
    await store.append(names.stream("a"), [first, second], expected=NO_STREAM)
    await eventually(lambda: consumer.received(first.id), what="the first event")
    # unanswered, it times out: its slot is free again and the retry takes it, ahead of the second event
    await eventually(
        lambda: len(consumer.deliveries(first.id)) >= 2,
        redelivery_window(harness, FAST),
        what="the timed-out event again",
    )
    assert consumer.deliveries(first.id)[1].retry_count == 1
    assert not consumer.received(second.id)
    await consumer.subscription.ack(first.id)
    await eventually(lambda: consumer.received(second.id), what="the second event after the ack")
    await consumer.subscription.ack(second.id)


@pytest.mark.parametrize(
    ("strategy", "first_takes"),
    [
        # DispatchToSingle: the first consumer takes all it has room for, then the next one takes over
        (ConsumerStrategy.DISPATCH_TO_SINGLE, [0, 1]),
        # RoundRobin: turns, skipping a full consumer
        (ConsumerStrategy.ROUND_ROBIN, [0]),
    ],
    ids=["dispatch-to-single", "round-robin"],
)
async def test_a_second_consumer_receives_what_a_full_one_cannot_take(
    harness: StoreHarness,
    store: EventStore,
    names: Names,
    collect: Collect,
    strategy: ConsumerStrategy,
    first_takes: list[int],
) -> None:
    settings = replace(PATIENT, strategy=strategy)
    group = await create_group(harness, store, names, settings=settings, after=await mark(store, names))
    small = await consume(store, group, collect, buffer_size=len(first_takes))
    await info_reaches(store, group, connections=1)
    large = await consume(store, group, collect, buffer_size=10)
    await info_reaches(store, group, connections=2)
    events = names.events(5)
    await store.append(names.stream("a"), events, expected=NO_STREAM)

    await eventually(lambda: len(small.events) + len(large.events) >= 5, what="5 deliveries")
    assert ids(small) == [events[i].id for i in first_takes]
    assert ids(large) == [e.id for i, e in enumerate(events) if i not in first_takes]
    await holds_for(lambda: len(small.events) == len(first_takes), HELD_BACK, what="the full one stays full")
    await info_reaches(store, group, in_flight=5)


async def test_under_pinned_a_full_consumers_stream_waits_for_it(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    # PATIENT is Pinned: one stream belongs to one consumer, which stores choose differently; whichever
    # it is, the other consumer never takes that stream's events while its owner is full.
    group = await create_group(harness, store, names, after=await mark(store, names))
    one = await consume(store, group, collect, buffer_size=1)
    await info_reaches(store, group, connections=1)
    other = await consume(store, group, collect, buffer_size=1)
    await info_reaches(store, group, connections=2)
    events = names.events(3)
    await store.append(names.stream("pinned"), events, expected=NO_STREAM)

    await eventually(lambda: len(one.events) + len(other.events) >= 1, what="a first delivery")
    owner, idle = (one, other) if one.events else (other, one)
    await holds_for(
        lambda: ids(owner) == [events[0].id] and not idle.events,
        HELD_BACK,
        what="the stream waits for its owner",
    )
    await owner.subscription.ack(events[0].id)
    await eventually(lambda: owner.received(events[1].id), what="the next event, to the owner")
    assert not idle.events


@pytest.mark.parametrize("size", [0, -1])
async def test_a_buffer_size_below_one_is_refused(
    harness: StoreHarness, store: EventStore, names: Names, size: int
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    with pytest.raises(ValueError, match="buffer size"):
        await store.read_subscription(group, buffer_size=size)
