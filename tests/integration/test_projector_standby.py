"""The projector runs active/standby on the projector lease (projections.service, projections.lease): a
standby applies nothing, takes over within ``lease_ttl * 1.1`` (+ slack) of a SIGKILL of the active
process and resumes from the stored position (no replay, no gap); an owner that stopped renewing is
refused by Redis when it writes; a rebuild whose owner dies is resumed by the new owner from its target's
stored position and ends identical to a fresh rebuild, readers seeing one complete generation throughout.

The active process is a child (``_projector_child``) so that its death is a real SIGKILL; the standby
runs in this process, on the same embedded store (the child opens it read-only) and Redis prefix.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.eventstore import Position
from orchestrator.eventstore.embedded import EmbeddedEventStore
from projections.metrics import ProjectionMetrics
from projections.redis_store import RedisViewStore
from projections.runner import RunnerSettings
from projections.service import NotActive, ProjectorService, SagaGauges
from tests.integration._projection_support import (
    CountingProjector,
    append_streams,
    dump_generation,
    stored_counts,
    true_counts,
    wait_until_position,
)

ROOT = Path(__file__).resolve().parents[2]
TTL = 1.0
#: the bound a standby takes over within, after the holder's last renewal (it polls at TTL / 10)
BOUND = TTL * 1.1
#: scheduling slack on a loaded 2-core machine
SLACK = 1.5
SETTINGS = RunnerSettings(batch_events=50, linger=0.005, lease_ttl=TTL)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedEventStore]:
    store = await EmbeddedEventStore.open(tmp_path / "store")
    try:
        yield store
    finally:
        await store.close()


def service(store: EmbeddedEventStore, views: RedisViewStore, owner: str) -> ProjectorService:
    return ProjectorService(
        store,
        views,
        [CountingProjector()],
        metrics=ProjectionMetrics(CollectorRegistry()),
        gauges=SagaGauges(),
        settings=SETTINGS,
        owner=owner,
    )


def sample(svc: ProjectorService, name: str, **labels: str) -> float:
    return svc.metrics.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def child(directory: Path, url: str, prefix: str, *mode: str) -> Iterator[subprocess.Popen[str]]:
    """The active projector as a process of its own (its first line says whether it is active)."""
    argv = [sys.executable, "-m", "tests.integration._projector_child", str(directory), url, prefix, str(TTL)]
    process = subprocess.Popen([*argv, *mode], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def line(process: subprocess.Popen[str]) -> str:
    """The child's next ``child: …`` line, past its log lines."""
    stdout = process.stdout
    assert stdout is not None

    def read() -> str:
        while text := stdout.readline():
            if text.startswith("child: "):
                return text.removeprefix("child: ").strip()
        return ""

    return await asyncio.wait_for(asyncio.to_thread(read), 30)


async def until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll an async predicate, bounded by ``within`` seconds."""
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < within, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.01)


async def head(store: EmbeddedEventStore) -> Position:
    position = await store.head_position()
    assert position is not None
    return position


@pytest.mark.slow
async def test_the_standby_takes_over_a_killed_projector_from_the_stored_position(
    tmp_path: Path, store: EmbeddedEventStore, views: RedisViewStore, redis_url: str
) -> None:
    await append_streams(store, "before", 30, 4)
    with child(tmp_path / "store", redis_url, views.prefix) as active:
        assert await line(active) == "active"
        standby = service(store, views, "standby")
        await standby.start()
        try:
            assert not standby.active
            assert sample(standby, "projection_lease_held") == 0
            with pytest.raises(NotActive):
                await standby.rebuild()
            await wait_until_position(views, 1, await head(store), 20)
            await append_streams(store, "live", 10, 3)
            await wait_until_position(views, 1, await head(store), 20)
            assert sample(standby, "projection_events_applied_total", generation="1") == 0

            active.send_signal(signal.SIGKILL)
            active.wait(timeout=10)
            killed = time.monotonic()
            at_kill = await views.position(1)
            assert at_kill is not None
            await append_streams(store, "gap", 10, 3)  # written while nobody projects

            async def took_over() -> bool:
                return standby.active

            await until(took_over, BOUND + SLACK, "the standby's take-over")
            took = time.monotonic() - killed
            print(f"standby took over {took:.2f} s after the SIGKILL (bound {BOUND:.2f} s + slack)")
            assert sample(standby, "projection_lease_held") == 1
            assert sample(standby, "projection_lease_takeovers_total") == 1
            assert sample(standby, "projection_handover_seconds_count") == 1
            assert sample(standby, "projection_handover_seconds_sum") <= BOUND + SLACK

            await wait_until_position(views, 1, await head(store), 20)
            assert await stored_counts(views, 1) == await true_counts(store)
            # Resumed from the stored position: it applied exactly what the dead one had not.
            missing = (await true_counts(store))["__total"] - (await true_counts(store, at_kill))["__total"]
            assert sample(standby, "projection_events_applied_total", generation="1") == missing
        finally:
            await standby.stop()


async def test_an_owner_that_stopped_renewing_is_refused_by_redis(
    store: EmbeddedEventStore, views: RedisViewStore
) -> None:
    """What a paused owner is, seen from Redis: it believes it holds the lease (it never heard otherwise),
    the lease has expired and another process took it; its next batch is refused by the apply script."""
    await append_streams(store, "acc", 20, 3)
    old, new = service(store, views, "old"), service(store, views, "new")
    await old.start()
    await new.start()
    try:
        assert old.active
        assert not new.active
        await wait_until_position(views, 1, await head(store), 10)
        keeper = old._keeper
        assert keeper is not None
        keeper.cancel()  # it renews no more, and nothing tells it so

        async def new_active() -> bool:
            return new.active

        await until(new_active, BOUND + SLACK, "the take-over")
        assert old.lease.held  # it still believes it is the owner: only the fence stands in its way
        await append_streams(store, "after", 10, 3)

        async def refused() -> bool:
            return sample(old, "projection_fenced_batches_total", generation="1") >= 1

        await until(refused, 10, "the stale owner's refused batch")

        async def stood_down() -> bool:
            return not old.active

        await until(stood_down, 10, "the stale owner standing by")
        assert sample(old, "projection_conflicts_total", generation="1") == 0  # the lease, not the position
        await wait_until_position(views, 1, await head(store), 10)
        assert await stored_counts(views, 1) == await true_counts(store)
        assert await views.lease_holder() == ("new", pytest.approx(TTL, abs=TTL))

        # The stale owner is a standby now: it takes over again when the new one goes.
        await new.stop()

        async def old_active() -> bool:
            return old.active

        await until(old_active, BOUND + SLACK, "the old owner's second take-over")
        await append_streams(store, "last", 5, 3)
        await wait_until_position(views, 1, await head(store), 10)
        assert await stored_counts(views, 1) == await true_counts(store)
    finally:
        await old.stop()
        await new.stop()


@pytest.mark.slow
async def test_a_rebuild_whose_owner_dies_is_resumed_by_the_new_owner(
    tmp_path: Path, store: EmbeddedEventStore, views: RedisViewStore, redis_url: str
) -> None:
    await append_streams(store, "acc", 120, 5)
    with child(tmp_path / "store", redis_url, views.prefix, "rebuild") as active:
        assert await line(active) == "active"
        standby = service(store, views, "standby")
        await standby.start()
        try:
            assert await line(active) == "rebuilding"

            async def well_under_way() -> bool:
                target = await views.rebuild_target()
                position = await views.position(target) if target is not None else None
                return position is not None and position.commit >= 150

            await until(well_under_way, 30, "the child's rebuild making progress")
            active.send_signal(signal.SIGKILL)
            active.wait(timeout=10)
            target = await views.rebuild_target()
            assert target == 2
            at_kill = await views.position(target)
            assert at_kill is not None
            assert at_kill < await head(store), "the rebuild finished before the kill"
            assert await views.active_generation() == 1  # not switched: readers see generation 1 whole
            await append_streams(store, "more", 10, 3)

            async def switched() -> bool:
                return await views.active_generation() == target and await views.rebuild_target() is None

            await until(switched, BOUND + SLACK + 30, "the resumed rebuild's switch")
            assert sample(standby, "projection_rebuilds_resumed_total") == 1
            everything = (await true_counts(store))["__total"]
            done = (await true_counts(store, at_kill))["__total"]
            # Resumed, not restarted: the new owner applied only what the dead one had not.
            assert sample(standby, "projection_events_applied_total", generation="2") == everything - done
            assert standby.progress is not None
            assert standby.progress.phase == "done"
            assert await views.generations() == [target]
            assert not await views.has_views(1)
            await wait_until_position(views, target, await head(store), 10)
            assert await stored_counts(views, target) == await true_counts(store)

            # Identical to a rebuild from scratch.
            resumed, _ = await dump_generation(views, target)
            progress = await standby.rebuild()
            assert progress.generation == target + 1
            fresh, _ = await dump_generation(views, progress.generation)
            assert fresh == resumed
        finally:
            await standby.stop()
