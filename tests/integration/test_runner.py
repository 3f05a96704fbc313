"""The projection runner against the embedded event store and a real Redis: exact counts (exactly once),
progress on markers under a selective filter, the lease and the compare-and-set fence, SIGKILL safety."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from orchestrator.eventstore import EventFilter, Position, RecordedEvent
from orchestrator.eventstore.embedded import EmbeddedEventStore
from projections.redis_store import RedisViewStore
from projections.runner import ProjectionMetrics, ProjectorError, Runner, RunnerSettings
from projections.updates import Update
from tests.integration._projection_support import (
    CountingProjector,
    append_streams,
    stored_counts,
    true_counts,
    wait_until_position,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = RunnerSettings(batch_events=50, linger=0.005, lease_ttl=1.0)


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


async def test_the_runner_applies_every_event_once_history_then_live(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 40, 5)
    registry = CollectorRegistry()
    runner = Runner(
        store, views, 1, [CountingProjector()], settings=FAST, metrics=ProjectionMetrics(registry)
    )
    runner.start()
    try:
        assert await runner.wait_caught_up(10)
        await wait_until_position(views, 1, await _head(store), 10)
        assert await stored_counts(views, 1) == await true_counts(store)

        # The live tail: fewer events than a batch, applied after the linger.
        await append_streams(store, "live", 3, 2)
        await wait_until_position(views, 1, await _head(store), 10)
        assert await stored_counts(views, 1) == await true_counts(store)
        assert runner.events_applied == 206
    finally:
        await runner.stop()

    assert registry.get_sample_value("projection_events_applied_total", {"generation": "1"}) == 206
    assert registry.get_sample_value("projection_batch_events_count", {"generation": "1"})
    assert registry.get_sample_value("projection_apply_seconds_count", {"generation": "1"})
    assert registry.get_sample_value("projection_lag_positions", {"generation": "1"}) is not None
    assert registry.get_sample_value("projection_lag_seconds", {"generation": "1"}) is not None
    assert not await views.client.exists(views.key(1, "lease"))  # released on stop


async def test_markers_advance_the_position_past_a_filtered_out_tail(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 5, 3)
    await append_streams(store, "other", 300, 2)  # the filter drops all of these
    runner = Runner(store, views, 1, [CountingProjector()], filter=EventFilter(("acc-",)), settings=FAST)
    runner.start()
    try:
        assert await runner.wait_caught_up(10)
        head = await _head(store)
        await wait_until_position(views, 1, head, 10)
        assert await views.position(1) == head
        assert await stored_counts(views, 1) == await true_counts(store, prefix="acc-")

        await append_streams(store, "other-live", 2, 2)  # a filtered live tail moves it too
        await wait_until_position(views, 1, await _head(store), 10)
    finally:
        await runner.stop()


async def test_a_second_runner_on_the_same_generation_stands_by(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 20, 4)
    first = Runner(store, views, 1, [CountingProjector()], settings=FAST, owner="first")
    second = Runner(store, views, 1, [CountingProjector()], settings=FAST, owner="second")
    first.start()
    assert await first.wait_caught_up(10)
    second.start()
    try:
        await append_streams(store, "more", 10, 3)
        await wait_until_position(views, 1, await _head(store), 10)
        assert second.events_applied == 0
        assert await views.client.get(views.key(1, "lease")) == "first"

        await first.stop()  # releases the lease: the standby takes over from the stored position
        await append_streams(store, "after", 10, 3)
        await wait_until_position(views, 1, await _head(store), 10)
        assert second.events_applied == 30
        assert await stored_counts(views, 1) == await true_counts(store)
    finally:
        await first.stop()
        await second.stop()


async def test_without_a_lease_the_compare_and_set_alone_prevents_double_application(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 150, 4)
    registry = CollectorRegistry()
    metrics = ProjectionMetrics(registry)  # one per process, shared by its runners
    settings = RunnerSettings(batch_events=3, linger=0.001)
    runners = [
        Runner(store, views, 1, [CountingProjector()], settings=settings, use_lease=False, metrics=metrics)
        for _ in range(3)
    ]
    for runner in runners:
        runner.start()
    try:
        await wait_until_position(views, 1, await _head(store), 20)
        assert await stored_counts(views, 1) == await true_counts(store)
        assert sum(r.events_applied for r in runners) == 600
    finally:
        for runner in runners:
            await runner.stop()


async def test_a_runner_that_lost_its_lease_applies_nothing_until_it_has_it_again(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    await append_streams(store, "acc", 5, 2)
    settings = RunnerSettings(batch_events=50, linger=0.005, lease_ttl=0.3)
    runner = Runner(store, views, 1, [CountingProjector()], settings=settings, owner="runner")
    runner.start()
    try:
        await wait_until_position(views, 1, await _head(store), 10)
        applied = runner.events_applied
        # Someone else holds the lease (as if ours had expired while we were paused).
        await views.client.set(views.key(1, "lease"), "intruder", px=60_000)
        before = await views.position(1)
        with capture_logs() as logs:
            await append_streams(store, "more", 5, 2)
            deadline = time.monotonic() + 10
            while not any(e["event"] == "projection lease lost at apply" for e in logs):
                assert time.monotonic() < deadline, "the runner never tried to apply the new events"
                await asyncio.sleep(0.01)
        assert runner.events_applied == applied
        assert await views.position(1) == before

        await views.client.delete(views.key(1, "lease"))
        await wait_until_position(views, 1, await _head(store), 10)
        assert await stored_counts(views, 1) == await true_counts(store)
    finally:
        await runner.stop()


class _Broken:
    def project(self, event: RecordedEvent) -> list[Update]:
        raise KeyError(event.type)


async def test_a_failing_projector_stops_the_runner(store: EmbeddedEventStore, views: RedisViewStore) -> None:
    await append_streams(store, "acc", 1, 2)
    runner = Runner(store, views, 1, [_Broken()], settings=FAST)
    with pytest.raises(ProjectorError, match="Opened"):
        await asyncio.wait_for(runner.run(), 10)
    assert await views.position(1) is None


def _kill_mid_stream(directory: Path, url: str, prefix: str, views_position: Position | None) -> None:
    """Run the child runner and SIGKILL it once it has applied a few batches beyond where it started."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration._project_until_killed", str(directory), url, prefix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"

        async def progressed() -> None:
            views = RedisViewStore.connect(url, prefix)  # this thread's own loop, so its own client
            try:
                deadline = time.monotonic() + 20
                start = views_position.commit if views_position else 0
                while True:
                    current = await views.position(1)
                    if current is not None and current.commit >= start + 300:
                        return
                    assert time.monotonic() < deadline, "the child runner made no progress"
                    await asyncio.sleep(0.005)
            finally:
                await views.close()

        asyncio.run(progressed())
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.slow
async def test_a_runner_killed_mid_batch_double_counts_nothing(
    tmp_path: Path, store: EmbeddedEventStore, views: RedisViewStore, redis_url: str
) -> None:
    await append_streams(store, "acc", 400, 6)
    head = await _head(store)
    directory = tmp_path / "store"
    for _ in range(2):
        before = await views.position(1)
        await asyncio.to_thread(_kill_mid_stream, directory, redis_url, views.prefix, before)
        at_kill = await views.position(1)
        assert at_kill is not None
        assert at_kill < head, "killed too late: it finished the stream"
        # Whatever the kill interrupted, the view is exactly the events up to the stored position.
        assert await stored_counts(views, 1) == await true_counts(store, upto=at_kill)

    # Restart in process: it waits for the dead child's lease to expire, then resumes from the position.
    runner = Runner(store, views, 1, [CountingProjector()], settings=FAST, owner="restarted")
    runner.start()
    try:
        await wait_until_position(views, 1, head, 20)
        assert await stored_counts(views, 1) == await true_counts(store)
    finally:
        await runner.stop()
