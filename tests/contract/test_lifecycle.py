"""Store lifecycle: ping, close, the async context manager, and what a closed store does."""

from __future__ import annotations

import pytest

from orchestrator.eventstore import (
    ANY,
    EventStore,
    OperationalError,
    SubscriptionDropped,
)
from tests.contract.harness import StoreHarness
from tests.contract.support import Collect, Names, eventually, mark, read_all_events

pytestmark = pytest.mark.timeout(60)

# The tests that close a store open their own instead of using the `store` fixture (on the embedded
# store, a second open of the same directory would be refused by its lock).


async def test_ping_answers_on_an_open_store(store: EventStore) -> None:
    await store.ping()


OPERATIONS = (
    "ping",
    "append",
    "read_stream",
    "read_all",
    "head_position",
    "get_stream_metadata",
    "subscribe_stream",
    "get_subscription_info",
)


async def _call(store: EventStore, names: Names, operation: str) -> object:
    stream = names.stream("order")
    match operation:
        case "ping":
            return await store.ping()
        case "append":
            return await store.append(stream, names.events(1), expected=ANY)
        case "read_stream":
            return await store.read_stream(stream)
        case "read_all":
            return await read_all_events(store, filter=names.filter)
        case "head_position":
            return await store.head_position()
        case "get_stream_metadata":
            return await store.get_stream_metadata(stream)
        case "subscribe_stream":
            return await store.subscribe_stream(stream)
        case "get_subscription_info":
            return await store.get_subscription_info(names.group())
    raise AssertionError(operation)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_operations_on_a_closed_store_raise_an_operational_error(
    harness: StoreHarness, names: Names, operation: str
) -> None:
    store = await harness.create()
    await store.append(names.stream("order"), names.events(1), expected=ANY)
    await store.close()
    with pytest.raises(OperationalError):  # StoreClosed is one
        await _call(store, names, operation)


async def test_the_store_is_an_async_context_manager(harness: StoreHarness) -> None:
    async with await harness.create() as store:
        await store.ping()
    with pytest.raises(OperationalError):
        await store.ping()


async def test_closing_the_store_drops_its_live_subscriptions(
    harness: StoreHarness, names: Names, collect: Collect
) -> None:
    store = await harness.create()
    subscription = collect(await store.subscribe_all(after=await mark(store, names), filter=names.filter))
    await eventually(lambda: subscription.caught_up, what="CaughtUp")
    await store.close()
    await eventually(lambda: subscription.done, what="the subscription to end")
    assert isinstance(subscription.error, SubscriptionDropped), repr(subscription.error)
