"""Persistent subscriptions on the local server beyond the contract suite: what the client reads of the
server's rules (errors, stream groups, filters, start positions, info), the drop of consumers on update,
and groups that survive a restart (their configuration in ``$persistentSubscriptionConfig``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from kurrentdbclient import AsyncKurrentDBClient, NewEvent, RecordedEvent, StreamState
from kurrentdbclient.exceptions import (
    AlreadyExistsError,
    InternalError,
    KurrentDBClientError,
    MaximumSubscriptionsReachedError,
    NotFoundError,
)

from orchestrator.eventstore.embedded import EmbeddedEventStore
from tests.contract.harness import LocalServer
from tests.contract.support import eventually

pytestmark = pytest.mark.timeout(60)


def _events(count: int, kind: str = "Happened") -> list[NewEvent]:
    return [NewEvent(type=kind, data=json.dumps({"n": i}).encode()) for i in range(count)]


def _name(prefix: str = "ps") -> str:
    return f"{prefix}-{uuid4().hex}"


async def _take(subscription: AsyncIterator[RecordedEvent], count: int) -> list[RecordedEvent]:
    async def take() -> list[RecordedEvent]:
        return [await anext(subscription) for _ in range(count)]

    return await asyncio.wait_for(take(), timeout=10)


async def test_errors_read_as_the_client_expects(client: AsyncKurrentDBClient) -> None:
    group = _name()
    with pytest.raises(NotFoundError):
        await client.get_subscription_info(group)
    with pytest.raises(NotFoundError):
        await client.delete_subscription(group)
    # PersistentSubscriptionService: an unknown strategy, and ReadBatchSize >= BufferSize, fail.
    with pytest.raises(InternalError):
        await client.create_subscription_to_all(group, consumer_strategy="Nope")  # type: ignore[arg-type]
    with pytest.raises(InternalError):
        await client.create_subscription_to_all(group, history_buffer_size=100)
    await client.create_subscription_to_all(group, from_end=True, max_subscriber_count=1)
    with pytest.raises(AlreadyExistsError):
        await client.create_subscription_to_all(group)
    first = await client.read_subscription_to_all(group)
    try:
        with pytest.raises(MaximumSubscriptionsReachedError):
            await client.read_subscription_to_all(group)
    finally:
        await first.stop()
    await client.delete_subscription(group)


async def test_a_stream_group_delivers_its_stream_from_a_revision(client: AsyncKurrentDBClient) -> None:
    stream, other, group = _name("s"), _name("s"), _name()
    await client.append_to_stream(stream, events=_events(4), current_version=StreamState.NO_STREAM)
    await client.append_to_stream(other, events=_events(2), current_version=StreamState.NO_STREAM)
    await client.create_subscription_to_stream(group, stream, stream_position=2, min_checkpoint_count=1)
    subscription = await client.read_subscription_to_stream(group, stream)
    try:
        events = await _take(subscription, 2)
        assert [(e.stream_name, e.stream_position) for e in events] == [(stream, 2), (stream, 3)]
        for event in events:
            await subscription.ack(event)
        info = await client.get_subscription_info(group, stream)
        assert (info.event_source, info.start_from) == (stream, "2")

        async def checkpointed() -> bool:
            info = await client.get_subscription_info(group, stream)
            return info.last_checkpointed_event_position == "3"

        await eventually(checkpointed, 10.0, what="a checkpoint at revision 3")
    finally:
        await subscription.stop()
    assert [i.group_name for i in await client.list_subscriptions_to_stream(stream)] == [group]
    await client.delete_subscription(group, stream)
    assert await client.list_subscriptions_to_stream(stream) == []


async def test_an_all_group_starts_at_its_position_and_applies_a_stream_regex(
    client: AsyncKurrentDBClient,
) -> None:
    wanted, unwanted, group = _name("keep"), _name("drop"), _name()
    first = await client.append_to_stream(wanted, events=_events(1), current_version=StreamState.NO_STREAM)
    await client.append_to_stream(unwanted, events=_events(1), current_version=StreamState.NO_STREAM)
    await client.append_to_stream(wanted, events=_events(1), current_version=0)
    await client.create_subscription_to_all(
        group, commit_position=first, filter_include=[f"{wanted[:6]}.*"], filter_by_stream_name=True
    )
    info = await client.get_subscription_info(group)
    assert info.start_from == f"C:{first}/P:{first}"
    subscription = await client.read_subscription_to_all(group)
    try:
        # The server delivers the event *at* the start position; the other stream is filtered out.
        events = await _take(subscription, 2)
        assert [(e.stream_name, e.stream_position) for e in events] == [(wanted, 0), (wanted, 1)]
        assert events[0].commit_position == first
    finally:
        await subscription.stop()
    await client.delete_subscription(group)


async def test_nack_unknown_retries_and_nack_stop_does_nothing(client: AsyncKurrentDBClient) -> None:
    stream, group = _name("s"), _name()
    await client.create_subscription_to_stream(group, stream, message_timeout=30)
    subscription = await client.read_subscription_to_stream(group, stream)
    try:
        await client.append_to_stream(stream, events=_events(2), current_version=StreamState.NO_STREAM)
        first, second = await _take(subscription, 2)
        await subscription.nack(first, "unknown")
        retried = await _take(subscription, 1)
        assert (retried[0].id, retried[0].retry_count) == (first.id, 1)
        # The server's NakAction.Stop is a no-op: the event stays in flight.
        await subscription.nack(second, "stop")
        await asyncio.sleep(0.5)  # a window for a redelivery or settle that must not happen
        assert (await client.get_subscription_info(group, stream)).total_in_flight_messages == 2
    finally:
        await subscription.stop()
    await client.delete_subscription(group, stream)


async def test_update_drops_consumers_and_keeps_the_filter(client: AsyncKurrentDBClient) -> None:
    stream, group = _name("upd"), _name()
    await client.create_subscription_to_all(
        group, from_end=True, filter_include=[f"{stream}.*"], filter_by_stream_name=True
    )
    subscription = await client.read_subscription_to_all(group)
    await client.update_subscription_to_all(group, message_timeout=5)
    with pytest.raises(KurrentDBClientError):
        await asyncio.wait_for(anext(subscription), timeout=10)
    assert (await client.get_subscription_info(group)).message_timeout == 5

    again = await client.read_subscription_to_all(group)
    try:
        await client.append_to_stream(
            _name("other"), events=_events(1), current_version=StreamState.NO_STREAM
        )
        await client.append_to_stream(stream, events=_events(1), current_version=StreamState.NO_STREAM)
        (event,) = await _take(again, 1)
        assert event.stream_name == stream
    finally:
        await again.stop()
    await client.delete_subscription(group)


async def test_groups_survive_a_restart_and_orphans_are_removed(server: LocalServer) -> None:
    group, orphan = _name(), _name()
    client = AsyncKurrentDBClient(server.url)
    await client.connect()
    try:
        await client.create_subscription_to_all(group, from_end=True, max_retry_count=7)
    finally:
        await client.close()
    server.stop()
    # An embedded group the configuration does not name: what a create interrupted between its two
    # writes leaves behind.
    store = await EmbeddedEventStore.open(server.data_dir)
    try:
        await store.create_subscription(f"$all::{orphan}")
    finally:
        await store.close()
    server.start(server.port)

    client = AsyncKurrentDBClient(server.url)
    await client.connect()
    try:
        assert (await client.get_subscription_info(group)).max_retry_count == 7
        with pytest.raises(NotFoundError):
            await client.get_subscription_info(orphan)
        await client.delete_subscription(group)
    finally:
        await client.close()
