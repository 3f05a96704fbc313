"""Blue/green rebuild: a rebuilt generation is identical to the one it replaces, also after the whole key
space was flushed; a missing position in a non-empty generation forces a rebuild; progress is reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.eventstore import Position
from orchestrator.eventstore.embedded import EmbeddedEventStore
from projections.rebuild import Rebuild, RebuildProgress, ensure_active, needs_rebuild, start_serving
from projections.redis_store import RedisViewStore
from projections.runner import RunnerSettings
from tests.integration._projection_support import (
    CountingProjector,
    append_streams,
    dump_generation,
    stored_counts,
    true_counts,
    wait_until_position,
)

SETTINGS = RunnerSettings(batch_events=64, linger=0.005, lease_ttl=1.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedEventStore]:
    store = await EmbeddedEventStore.open(tmp_path / "store")
    try:
        yield store
    finally:
        await store.close()


async def _head(store: EmbeddedEventStore) -> Position:
    head = await store.head_position()
    assert head is not None
    return head


def _same_expiries(a: dict[str, int], b: dict[str, int]) -> bool:
    # Expiries are absolute (event time + retention); PTTL is read at two moments, hence the tolerance.
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 2_000 for k in a)


async def test_a_rebuild_reproduces_the_views_exactly_even_after_a_flush(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 60, 4)
    serving = await start_serving(store, views, [CountingProjector()], settings=SETTINGS)
    try:
        assert serving.generation == 1
        await wait_until_position(views, 1, await _head(store), 10)
        values, expiries = await dump_generation(views, 1)
        assert len(values) > 60
        assert len(expiries) == 60

        rebuild = Rebuild(store, views, [CountingProjector()], current=serving, settings=SETTINGS)
        serving = await rebuild.run()
        assert serving.generation == 2
        assert await views.active_generation() == 2
        assert await views.generations() == [2]
        assert not await views.has_views(1)
        rebuilt_values, rebuilt_expiries = await dump_generation(views, 2)
        assert rebuilt_values == values
        assert _same_expiries(rebuilt_expiries, expiries)
    finally:
        await serving.stop()

    # "FLUSHALL" (of this test's prefix only: the server may be shared): start-up builds it all again.
    async for key in views.client.scan_iter(match=f"{views.prefix}:*"):
        await views.client.unlink(key)
    serving = await start_serving(store, views, [CountingProjector()], settings=SETTINGS)
    try:
        generation = serving.generation
        await wait_until_position(views, generation, await _head(store), 10)
        flushed_values, flushed_expiries = await dump_generation(views, generation)
        assert flushed_values == values
        assert _same_expiries(flushed_expiries, expiries)
    finally:
        await serving.stop()


async def test_a_missing_position_in_a_non_empty_generation_forces_a_rebuild(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    assert not await needs_rebuild(views)  # nothing active yet
    assert await ensure_active(views) == 1
    assert not await needs_rebuild(views)  # active, empty, no position: a plain start from the beginning

    await append_streams(store, "acc", 10, 3)
    serving = await start_serving(store, views, [CountingProjector()], settings=SETTINGS)
    await wait_until_position(views, 1, await _head(store), 10)
    await serving.stop()
    assert not await needs_rebuild(views)

    # The AOF lost its tail, say: views are there, their position is not.
    await views.client.delete(views.key(1, "position"))
    assert await needs_rebuild(views)

    seen: list[RebuildProgress] = []
    serving = await start_serving(
        store, views, [CountingProjector()], settings=SETTINGS, on_progress=seen.append
    )
    try:
        assert serving.generation == 2
        assert not await needs_rebuild(views)
        assert await views.position(2) == await _head(store)
        assert await stored_counts(views, 2) == await true_counts(store)
        assert await views.generations() == [2]
        assert not await views.has_views(1)
        assert seen
        assert seen[-1].phase == "done"
    finally:
        await serving.stop()


async def test_rebuild_reports_progress_to_every_listener(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 100, 5)
    head = await _head(store)
    rebuild = Rebuild(store, views, [CountingProjector()], settings=SETTINGS, progress_interval=0.01)
    seen: list[RebuildProgress] = []

    async def listen() -> None:
        async for snapshot in rebuild.updates():
            seen.append(snapshot)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)  # let the listener register before the rebuild starts reporting
    runner = await rebuild.run()
    try:
        await asyncio.wait_for(listener, 5)
        phases = [s.phase for s in seen]
        assert phases[0] == "building"
        assert phases[-2:] == ["cleaning", "done"]
        assert "switching" in phases
        final = seen[-1]
        assert final.events_applied == 500
        assert final.position == head
        assert final.head == head
        assert final.events_per_second > 0
        assert final.eta_seconds == 0.0
        assert rebuild.progress == final
        assert await views.active_generation() == 1 == runner.generation
    finally:
        await runner.stop()
