"""Helpers of the persistent-subscription tests: settings with short timeouts, creating a group that is
cleaned up, and connecting a consumer that is drained in the background."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import replace

from orchestrator.eventstore import (
    ConsumerStrategy,
    EventFilter,
    EventStore,
    EventStoreError,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
)
from tests.contract.harness import StoreHarness
from tests.contract.support import Collect, Collector, Names

#: Events are held unacked on purpose for a while: nothing may time out meanwhile.
PATIENT = PersistentSubscriptionSettings(
    strategy=ConsumerStrategy.PINNED,
    message_timeout=30.0,
    checkpoint_after=0.1,
    min_checkpoint_count=1,
    max_checkpoint_count=10,
)
#: A wrong store that forgets to settle an event redelivers it within about a second.
FAST = replace(PATIENT, message_timeout=1.0)


def redelivery_window(harness: StoreHarness, settings: PersistentSubscriptionSettings) -> float:
    """Long enough for an unsettled event to be redelivered, if the store were to redeliver it."""
    return settings.message_timeout + harness.redelivery_slack + 0.5


async def create_group(
    harness: StoreHarness,
    store: EventStore,
    names: Names,
    *,
    name: str = "group",
    settings: PersistentSubscriptionSettings = PATIENT,
    after: Position | None = None,
    from_end: bool = False,
    filter: EventFilter | None = None,
) -> str:
    group = names.group(name)
    harness.track_group(group)
    await store.create_subscription(
        group, filter=filter or names.filter, settings=settings, after=after, from_end=from_end
    )
    return group


async def consume(
    store: EventStore, group: str, collect: Collect, *, auto_ack: bool = False, buffer_size: int | None = None
) -> Collector:
    """Connect one consumer to ``group`` (with the store's default buffer size unless given); with
    ``auto_ack`` it acks every event as it arrives."""
    if buffer_size is None:
        subscription = await store.read_subscription(group)
    else:
        subscription = await store.read_subscription(group, buffer_size=buffer_size)

    async def ack(event: RecordedEvent) -> None:
        await subscription.ack(event.id)

    return collect(subscription, on_event=ack if auto_ack else None)


async def connect_then_read(store: EventStore, group: str) -> None:
    """Connect and wait for a first event: a refused connection may raise on either step."""
    subscription = await store.read_subscription(group)
    try:
        await asyncio.wait_for(anext(aiter(subscription)), timeout=5.0)
    finally:
        with suppress(EventStoreError):
            await subscription.close()
