"""What the local server does beyond the contract suite: the server's own rules (metadata enforcement,
metastreams, soft deletion), its error statuses as the client reads them, filtered-subscription
checkpoints, and the accounting of requests it does not implement."""

from __future__ import annotations

import asyncio
import json
from uuid import uuid4

import grpc
import pytest
from kurrentdbclient import AsyncKurrentDBClient, NewEvent, StreamState
from kurrentdbclient.events import Checkpoint
from kurrentdbclient.exceptions import (
    GrpcError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

from tests.contract.harness import LocalServer
from tests.contract.support import eventually

pytestmark = pytest.mark.timeout(60)


def _events(count: int, kind: str = "Happened") -> list[NewEvent]:
    return [NewEvent(type=kind, data=json.dumps({"n": i}).encode()) for i in range(count)]


def _stream() -> str:
    return f"check-{uuid4().hex}"


async def _revisions(client: AsyncKurrentDBClient, stream: str, **kwargs: object) -> list[int]:
    return [e.stream_position for e in await client.get_stream(stream, **kwargs)]  # type: ignore[arg-type]


async def test_max_count_hides_all_but_the_last_events(client: AsyncKurrentDBClient) -> None:
    stream = _stream()
    await client.append_to_stream(stream, events=_events(5), current_version=StreamState.NO_STREAM)
    await client.set_stream_metadata(stream, metadata={"$maxCount": 2})
    assert await _revisions(client, stream) == [3, 4]
    assert await _revisions(client, stream, backwards=True) == [4, 3]
    # A read from an earlier revision starts at the first one still readable.
    assert await _revisions(client, stream, stream_position=1, limit=1) == [3]


async def test_truncate_before_hides_earlier_revisions(client: AsyncKurrentDBClient) -> None:
    stream = _stream()
    await client.append_to_stream(stream, events=_events(5), current_version=StreamState.NO_STREAM)
    await client.set_stream_metadata(stream, metadata={"$tb": 3})
    assert await _revisions(client, stream) == [3, 4]


async def test_max_age_expires_events(client: AsyncKurrentDBClient) -> None:
    stream = _stream()
    await client.append_to_stream(stream, events=_events(2), current_version=StreamState.NO_STREAM)
    await client.set_stream_metadata(stream, metadata={"$maxAge": 1})

    async def expired() -> bool:
        return await _revisions(client, stream) == []

    await eventually(expired, 5.0, what="events older than $maxAge to be hidden", interval=0.2)


async def test_metadata_lives_in_a_metastream_that_keeps_one_event(client: AsyncKurrentDBClient) -> None:
    stream = _stream()
    await client.set_stream_metadata(stream, metadata={"v": 1})
    await client.set_stream_metadata(stream, metadata={"v": 2})
    events = await client.get_stream(f"$${stream}")
    # Metastreams have $maxCount 1 (the server's MetastreamMaxCount): only the last is readable.
    assert [(e.type, json.loads(e.data), e.stream_position) for e in events] == [("$metadata", {"v": 2}, 1)]
    assert await client.get_stream_metadata(stream) == ({"v": 2}, 1)


async def test_a_tombstone_deletes_the_metastream_too(client: AsyncKurrentDBClient) -> None:
    stream = _stream()
    await client.append_to_stream(stream, events=_events(1), current_version=StreamState.NO_STREAM)
    await client.set_stream_metadata(stream, metadata={"v": 1})
    await client.tombstone_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeletedError):
        await client.get_stream(stream)
    with pytest.raises(StreamIsDeletedError):
        await client.get_stream(f"$${stream}")
    with pytest.raises(StreamIsDeletedError):
        await client.append_to_stream(stream, events=_events(1), current_version=StreamState.ANY)


async def test_a_soft_deleted_stream_reads_as_missing_and_is_recreated_by_no_stream(
    client: AsyncKurrentDBClient,
) -> None:
    stream = _stream()
    await client.append_to_stream(stream, events=_events(2), current_version=StreamState.NO_STREAM)
    await client.delete_stream(stream, current_version=1)
    with pytest.raises(NotFoundError):
        await client.get_stream(stream)
    # The stream continues after its last revision, readable from there on.
    await client.append_to_stream(stream, events=_events(1), current_version=StreamState.NO_STREAM)
    assert await _revisions(client, stream) == [2]


async def test_wrong_expected_versions_carry_the_actual_version(client: AsyncKurrentDBClient) -> None:
    stream = _stream()
    await client.append_to_stream(stream, events=_events(2), current_version=StreamState.NO_STREAM)
    with pytest.raises(WrongCurrentVersionError) as appended:
        await client.append_to_stream(stream, events=_events(1), current_version=5)
    assert appended.value.actual_version == 1
    with pytest.raises(WrongCurrentVersionError) as deleted:
        await client.tombstone_stream(stream, current_version=0)
    assert deleted.value.actual_version == 1
    with pytest.raises(NotFoundError):  # "Actual version: -1" is how the client learns "not found"
        await client.tombstone_stream(_stream(), current_version=3)


async def test_a_filtered_subscription_sends_checkpoints_past_filtered_out_events(
    client: AsyncKurrentDBClient,
) -> None:
    prefix = f"cp-{uuid4().hex}-"
    start = await client.get_commit_position()
    subscription = await client.subscribe_to_all(
        commit_position=start,
        filter_include=(prefix,),
        filter_by_stream_name=True,
        filter_by_prefix=True,
        include_checkpoints=True,
        window_size=5,
        checkpoint_interval_multiplier=2,
    )
    try:
        other = _stream()
        await client.append_to_stream(other, events=_events(25), current_version=StreamState.NO_STREAM)
        last = await client.get_commit_position(filter_exclude=())
        seen: list[int] = []

        async def drain() -> None:
            async for item in subscription:
                if isinstance(item, Checkpoint):
                    seen.append(item.commit_position)
                    if item.commit_position >= last - 5:
                        return

        await asyncio.wait_for(drain(), 10)
        assert seen == sorted(seen)
        # Every window * multiplier (10) events considered, the last at most 5 events before the head.
        assert seen[-1] >= last - 5
    finally:
        await subscription.stop()


async def test_an_unimplemented_method_is_refused_with_unimplemented_and_reported(
    client: AsyncKurrentDBClient, server: LocalServer
) -> None:
    before = len(server.refused())
    # The client has no class of its own for UNIMPLEMENTED: its catch-all GrpcError.
    with pytest.raises(GrpcError):
        await client.get_projection_statistics("no-such-projection", timeout=5)
    refused = server.refused()[before:]
    assert refused, "the refusal was not reported"
    assert {r["kind"] for r in refused} == {"unimplemented"}
    assert all("Projections" in r["method"] for r in refused)


async def test_the_refusal_is_the_unimplemented_status(server: LocalServer) -> None:
    host_port = server.url.removeprefix("esdb://").split("?")[0]
    async with grpc.aio.insecure_channel(host_port) as channel:
        call = channel.unary_unary("/event_store.client.projections.Projections/Statistics")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
