"""System events and persistent subscriptions on the local server, as on KurrentDB: a group on ``$all``
gets every event its filter selects, system events included, except the streams ``$all`` never yields
(EventFilter.DefaultAllFilterStrategy: ``$epoch-information`` and the ``$persistentsubscription-$all::``
checkpoint and parked streams); a group on a ``$`` stream gets that stream."""

from __future__ import annotations

import asyncio
import json
from uuid import uuid4

import pytest
from kurrentdbclient import AsyncKurrentDBClient, NewEvent, RecordedEvent, StreamState

from orchestrator.eventstore.server.psconfig import CONFIG_STREAM

ANY = StreamState.ANY

pytestmark = pytest.mark.timeout(60)


def _event(kind: str = "Happened") -> NewEvent:
    return NewEvent(type=kind, data=json.dumps({"kind": kind}).encode())


async def _until(client: AsyncKurrentDBClient, group: str, last: str, stream: str | None = None) -> list[str]:
    """Read (and ack) the group's events up to the one of type ``last``; their "stream type" pairs."""
    if stream is None:
        subscription = await client.read_subscription_to_all(group)
    else:
        subscription = await client.read_subscription_to_stream(group, stream)
    seen: list[RecordedEvent] = []

    async def read() -> None:
        async for event in subscription:
            seen.append(event)
            await subscription.ack(event)
            if event.type == last:
                return

    try:
        await asyncio.wait_for(read(), timeout=10)
    finally:
        await subscription.stop()
    return [f"{e.stream_name} {e.type}" for e in seen]


async def test_an_all_group_gets_system_events_but_those_all_never_yields(
    client: AsyncKurrentDBClient,
) -> None:
    uid = uuid4().hex
    stream, group, end = f"s-{uid}", f"g-{uid}", f"End{uid}"
    start = await client.append_to_stream(stream, events=[_event()], current_version=StreamState.NO_STREAM)
    # filter_exclude=(): no filter at all (the client's default excludes "$" types)
    await client.create_subscription_to_all(group, commit_position=start, filter_exclude=())
    await client.set_stream_metadata(stream, metadata={"$maxCount": 10})
    for system_stream in (
        f"$persistentsubscription-$all::{group}-checkpoint",
        f"$persistentsubscription-$all::{group}-parked",
        "$epoch-information",
        f"$persistentsubscription-{stream}::{group}-checkpoint",
        f"$custom-{uid}",
    ):
        await client.append_to_stream(system_stream, events=[_event("$Custom")], current_version=ANY)
    await client.append_to_stream(stream, events=[_event("$typed"), _event(end)], current_version=0)

    assert await _until(client, group, end) == [
        f"{stream} Happened",
        f"{CONFIG_STREAM} $PersistentConfig",  # the group's own creation
        f"$${stream} $metadata",
        f"$persistentsubscription-{stream}::{group}-checkpoint $Custom",
        f"$custom-{uid} $Custom",
        f"{stream} $typed",
        f"{stream} {end}",
    ]
    await client.delete_subscription(group)


async def test_filters_select_system_events_and_a_group_on_a_system_stream_reads_it(
    client: AsyncKurrentDBClient,
) -> None:
    uid = uuid4().hex
    stream, by_type, on_meta, end = f"s-{uid}", f"t-{uid}", f"m-{uid}", f"End{uid}"
    start = await client.append_to_stream(stream, events=[_event()], current_version=StreamState.NO_STREAM)
    await client.create_subscription_to_all(
        by_type, commit_position=start, filter_exclude=(), filter_include=[rf"\$metadata|{end}"]
    )
    await client.create_subscription_to_stream(on_meta, f"$${stream}", stream_position=0)
    await client.set_stream_metadata(stream, metadata={"$maxCount": 10})
    await client.set_stream_metadata(stream, metadata={"$maxCount": 20})
    await client.append_to_stream(stream, events=[_event(end)], current_version=0)

    assert await _until(client, by_type, end) == [
        f"$${stream} $metadata",
        f"$${stream} $metadata",
        f"{stream} {end}",
    ]
    metadata = await _until(client, on_meta, "$metadata", stream=f"$${stream}")
    assert metadata == [f"$${stream} $metadata"]
    await client.delete_subscription(by_type)
    await client.delete_subscription(on_meta, f"$${stream}")
