"""Persistent subscriptions to ``$all``: groups (create, info, update, delete, subscriber limit), where
delivery starts, and what ack and each nack action do."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from orchestrator.eventstore import (
    NO_STREAM,
    ConsumerStrategy,
    EventFilter,
    EventStore,
    MaxSubscribersReached,
    NackAction,
    SubscriptionExists,
    SubscriptionNotFound,
    SubscriptionSettingsError,
)
from tests.contract.harness import StoreHarness
from tests.contract.persistent_support import (
    FAST,
    PATIENT,
    connect_then_read,
    consume,
    create_group,
    redelivery_window,
)
from tests.contract.support import Collect, Names, eventually, holds_for, info_reaches, mark

pytestmark = pytest.mark.timeout(60)


async def test_a_group_is_created_once(harness: StoreHarness, store: EventStore, names: Names) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    with pytest.raises(SubscriptionExists):
        await store.create_subscription(group, filter=names.filter, settings=PATIENT)
    info = await store.get_subscription_info(group)
    assert info.group == group
    assert info.settings.strategy is ConsumerStrategy.PINNED
    assert info.settings.message_timeout == PATIENT.message_timeout
    assert (info.in_flight, info.parked, info.connections) == (0, 0, 0)
    assert group in {i.group for i in await store.list_subscriptions()}


async def test_a_group_from_the_start_delivers_matching_events_in_order(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    await store.append(names.stream("a"), names.events(3), expected=NO_STREAM)
    await store.append(names.outside("x"), names.events(2), expected=NO_STREAM)
    await store.append(names.stream("b"), names.events(2), expected=NO_STREAM)
    await store.append(names.stream("a"), names.events(1, start=3), expected=2)
    expected = [e for s in ("a", "b") for e in await store.read_stream(names.stream(s))]
    expected.sort(key=lambda e: e.position)

    group = await create_group(harness, store, names)
    consumer = await consume(store, group, collect)
    await eventually(lambda: len(consumer.events) >= 6, what="6 events")
    assert [e.id for e in consumer.events] == [e.id for e in expected]
    assert [e.retry_count for e in consumer.events] == [0] * 6
    assert {e.stream for e in consumer.events} == {names.stream("a"), names.stream("b")}
    await info_reaches(store, group, in_flight=6)
    for event in consumer.events:
        await consumer.subscription.ack(event.id)
    await info_reaches(store, group, in_flight=0)


async def test_a_group_after_a_position_starts_after_it(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    stream = names.stream("a")
    first = await store.append(stream, names.events(1), expected=NO_STREAM)
    later = names.events(2, start=1)
    await store.append(stream, later, expected=0)
    group = await create_group(harness, store, names, after=first.position)
    consumer = await consume(store, group, collect, auto_ack=True)
    await eventually(lambda: len(consumer.events) >= 2, what="2 events")
    assert [e.id for e in consumer.events] == [e.id for e in later]


async def test_a_group_from_the_end_skips_what_was_there(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    stream = names.stream("a")
    await store.append(stream, names.events(2), expected=NO_STREAM)
    group = await create_group(harness, store, names, from_end=True)
    consumer = await consume(store, group, collect, auto_ack=True)
    fresh = names.events(1, start=2)
    await store.append(stream, fresh, expected=1)
    await eventually(lambda: len(consumer.events) >= 1, what="the new event")
    assert [e.id for e in consumer.events] == [fresh[0].id]


async def test_an_acked_event_is_not_redelivered(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, settings=FAST, after=await mark(store, names))
    consumer = await consume(store, group, collect)
    events = names.events(2)
    await store.append(names.stream("a"), events, expected=NO_STREAM)
    await eventually(lambda: len(consumer.events) >= 2, what="2 events")
    for event in events:
        await consumer.subscription.ack(event.id)
    await info_reaches(store, group, in_flight=0)
    await holds_for(lambda: len(consumer.events) == 2, redelivery_window(harness, FAST), what="no redelivery")


async def test_nack_retry_redelivers_with_a_higher_retry_count(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    # PATIENT: any redelivery here comes from the nack, not from a timeout
    group = await create_group(harness, store, names, after=await mark(store, names))
    consumer = await consume(store, group, collect)
    event = names.events(1)[0]
    await store.append(names.stream("a"), [event], expected=NO_STREAM)
    for attempt in range(3):
        await eventually(lambda a=attempt: len(consumer.deliveries(event.id)) > a, what=f"delivery {attempt}")
        assert consumer.deliveries(event.id)[attempt].retry_count == attempt
        if attempt < 2:
            await consumer.subscription.nack(event.id, NackAction.RETRY)
    await consumer.subscription.ack(event.id)
    await info_reaches(store, group, in_flight=0, parked=0)
    assert len(consumer.deliveries(event.id)) == 3


async def test_nack_park_parks_the_event_until_it_is_replayed(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, settings=FAST, after=await mark(store, names))
    consumer = await consume(store, group, collect)
    parked = names.events(1)[0]
    await store.append(names.stream("a"), [parked], expected=NO_STREAM)
    await eventually(lambda: consumer.received(parked.id), what="the event")
    await consumer.subscription.nack(parked.id, NackAction.PARK)
    await info_reaches(store, group, parked=1, in_flight=0)

    # delivery goes on past the parked event, and the parked event stays parked
    sentinel = names.events(1, start=1)[0]
    await store.append(names.stream("b"), [sentinel], expected=NO_STREAM)
    await eventually(lambda: consumer.received(sentinel.id), what="the sentinel")
    await consumer.subscription.ack(sentinel.id)
    await holds_for(
        lambda: len(consumer.deliveries(parked.id)) == 1,
        redelivery_window(harness, FAST),
        what="still parked",
    )

    await store.replay_parked(group)
    await eventually(lambda: len(consumer.deliveries(parked.id)) == 2, what="the replayed event")
    assert consumer.deliveries(parked.id)[1].retry_count == 0
    await consumer.subscription.ack(parked.id)
    await info_reaches(store, group, parked=0, in_flight=0)


async def test_nack_skip_drops_the_event(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, settings=FAST, after=await mark(store, names))
    consumer = await consume(store, group, collect)
    skipped, sentinel = names.events(2)
    await store.append(names.stream("a"), [skipped], expected=NO_STREAM)
    await eventually(lambda: consumer.received(skipped.id), what="the event")
    await consumer.subscription.nack(skipped.id, NackAction.SKIP)
    await store.append(names.stream("b"), [sentinel], expected=NO_STREAM)
    await eventually(lambda: consumer.received(sentinel.id), what="the sentinel")
    await consumer.subscription.ack(sentinel.id)
    await info_reaches(store, group, in_flight=0, parked=0)
    await holds_for(
        lambda: len(consumer.deliveries(skipped.id)) == 1,
        redelivery_window(harness, FAST),
        what="no redelivery",
    )


async def test_info_counts_in_flight_parked_and_connections(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    first = await consume(store, group, collect)
    await info_reaches(store, group, connections=1, in_flight=0)
    acked, parked, held = names.events(3)
    await store.append(names.stream("a"), [acked, parked, held], expected=NO_STREAM)
    await eventually(lambda: len(first.events) >= 3, what="3 events")
    await info_reaches(store, group, in_flight=3, parked=0)
    await first.subscription.ack(acked.id)
    await first.subscription.nack(parked.id, NackAction.PARK)
    await info_reaches(store, group, in_flight=1, parked=1)

    second = await consume(store, group, collect)
    await info_reaches(store, group, connections=2)
    await second.close()
    await info_reaches(store, group, connections=1)


async def test_update_changes_settings_but_never_the_strategy(
    harness: StoreHarness, store: EventStore, names: Names
) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    await store.update_subscription(group, replace(PATIENT, message_timeout=5.0, max_retry_count=3))
    info = await store.get_subscription_info(group)
    assert (info.settings.message_timeout, info.settings.max_retry_count) == (5.0, 3)

    with pytest.raises(SubscriptionSettingsError):
        await store.update_subscription(group, replace(PATIENT, strategy=ConsumerStrategy.ROUND_ROBIN))
    assert (await store.get_subscription_info(group)).settings.strategy is ConsumerStrategy.PINNED

    with pytest.raises(SubscriptionNotFound):
        await store.update_subscription(names.group("missing"), PATIENT)


async def test_a_deleted_group_is_gone(harness: StoreHarness, store: EventStore, names: Names) -> None:
    group = await create_group(harness, store, names, after=await mark(store, names))
    await store.delete_subscription(group)
    with pytest.raises(SubscriptionNotFound):
        await store.get_subscription_info(group)
    with pytest.raises(SubscriptionNotFound):
        await connect_then_read(store, group)
    with pytest.raises(SubscriptionNotFound):
        await store.delete_subscription(group)
    assert group not in {i.group for i in await store.list_subscriptions()}


async def test_the_subscriber_limit_refuses_one_consumer_too_many(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    settings = replace(PATIENT, max_subscriber_count=1)
    group = await create_group(harness, store, names, settings=settings, after=await mark(store, names))
    first = await consume(store, group, collect, auto_ack=True)
    await info_reaches(store, group, connections=1)
    with pytest.raises(MaxSubscribersReached):
        await connect_then_read(store, group)

    # the limit counts connected consumers: once the first leaves, another may take its place
    await first.close()
    await info_reaches(store, group, connections=0)
    replacement = await consume(store, group, collect, auto_ack=True)
    event = names.events(1)[0]
    await store.append(names.stream("a"), [event], expected=NO_STREAM)
    await eventually(lambda: replacement.received(event.id), what="delivery to the replacement")


async def test_events_matching_amid_filtered_ones_are_delivered_while_appends_race(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    # Commits that land while the group reads a page (many of them filtered out) must still be seen:
    # nothing else is coming to wake the group for them.
    group = await create_group(harness, store, names, after=await mark(store, names))
    consumer = await consume(store, group, collect, auto_ack=True)

    async def writer(w: int) -> None:
        for i in range(50):
            await store.append(names.outside(f"noise-{w}-{i}"), names.events(3), expected=NO_STREAM)
            await store.append(names.stream(f"s-{w}-{i}"), names.events(1), expected=NO_STREAM)

    await asyncio.gather(*(writer(w) for w in range(8)))
    await eventually(lambda: len(consumer.events) >= 400, what="every matching event", timeout=10)
    assert len({e.id for e in consumer.events}) == 400


async def test_round_robin_starts_with_the_first_consumer_and_takes_turns(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    """As the server's RoundRobin strategy does (the first connected client first, then in turn); found by
    the client's own upstream suite run against the local server."""
    settings = replace(PATIENT, strategy=ConsumerStrategy.ROUND_ROBIN)
    group = await create_group(harness, store, names, settings=settings, after=await mark(store, names))
    first = await consume(store, group, collect)
    await info_reaches(store, group, connections=1)
    second = await consume(store, group, collect)
    await info_reaches(store, group, connections=2)
    events = names.events(4)
    await store.append(names.stream("rr"), events, expected=NO_STREAM)
    await eventually(lambda: len(first.events) + len(second.events) >= 4, what="4 deliveries")
    assert [e.id for e in first.events] == [events[0].id, events[2].id]
    assert [e.id for e in second.events] == [events[1].id, events[3].id]


async def test_system_events_a_filter_would_select_never_reach_a_consumer(
    harness: StoreHarness, store: EventStore, names: Names, collect: Collect
) -> None:
    # A server delivers system events to $all groups where their filter selects them (a metadata event
    # matches this type regex); the port never hands them out, and they do not stay in flight.
    selecting = EventFilter(event_type_regex=rf"(?:{names.type('')}|\$metadata)")
    group = await create_group(harness, store, names, filter=selecting, after=await mark(store, names))
    consumer = await consume(store, group, collect, auto_ack=True)
    stream = names.stream("a")
    await store.append(stream, names.events(1), expected=NO_STREAM)
    await store.set_stream_metadata(stream, {"tenant": "acme"})
    sentinel = names.events(1, start=1)[0]
    await store.append(stream, [sentinel], expected=0)
    await eventually(lambda: consumer.received(sentinel.id), what="the sentinel")
    assert [e.revision for e in consumer.events if e.stream == stream] == [0, 1]
    assert not [e for e in consumer.events if e.stream.startswith("$") or e.type.startswith("$")]
    await info_reaches(store, group, in_flight=0)
