"""Faults of the embedded store, each pinned by a regression test: the writer thread answers every request
whatever fails in it (and reports a failure it cannot survive), a parked message is never lost to a
checkpoint that became durable first, a reloaded and a replayed copy of one event both settle, and a failed
open releases the directory."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orchestrator import failpoints
from orchestrator.eventstore import (
    NO_STREAM,
    AppendResult,
    NackAction,
    NewEvent,
    OperationalError,
    PersistentSubscriptionSettings,
    RecordedEvent,
    new_events,
)
from orchestrator.eventstore.embedded import EmbeddedEventStore, EmbeddedSettings
from orchestrator.eventstore.embedded import persistent as persistent_module
from orchestrator.eventstore.embedded import store as store_module
from orchestrator.eventstore.embedded.persistent import PersistentSubscriptions
from orchestrator.eventstore.embedded.schema import connect_writer

ROOT = Path(__file__).resolve().parents[2]
BOUND = 5.0  # seconds: every await on the store is bounded, so a hang fails instead of stalling
GROUP = "g"
#: checkpoints due as soon as one message is done, so a checkpoint past a parked message is never late
EAGER = PersistentSubscriptionSettings(
    message_timeout=60.0, checkpoint_after=0.0, min_checkpoint_count=1, max_checkpoint_count=1
)


def _events(stream: str, n: int = 1) -> list[NewEvent]:
    return new_events(stream, NO_STREAM, [(f"E{i}", b'{"i":%d}' % i, b"{}") for i in range(n)])


async def _append(store: EmbeddedEventStore, stream: str, n: int = 1) -> AppendResult:
    return await asyncio.wait_for(store.append(stream, _events(stream, n), expected=NO_STREAM), BOUND)


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = BOUND) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


async def _durable_checkpoint(store: EmbeddedEventStore) -> int:
    """The group's checkpoint as the database holds it (what a restart would resume after)."""
    row = await store.reader.run(
        lambda c: c.execute(
            "SELECT coalesce(checkpoint, 0) FROM ps_groups WHERE name = ?", (GROUP,)
        ).fetchone()
    )
    return int(row[0])


async def _next(consumer: Any) -> RecordedEvent:
    event: RecordedEvent = await asyncio.wait_for(consumer.__anext__(), BOUND)
    return event


# --- 1. the writer thread answers every request ---------------------------------------------------------


class _FullDisk:
    """The writer's connection, refusing WAL checkpoints with SQLITE_FULL while ``full`` is set."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.full = True
        self.refused = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and "wal_checkpoint" in sql:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_a_failed_wal_checkpoint_acknowledges_the_group_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks: list[_FullDisk] = []

    def connect(path: Path) -> Any:
        disks.append(_FullDisk(connect_writer(path)))
        return disks[-1]

    monkeypatch.setattr(store_module, "connect_writer", connect)
    # A limit of one byte: every commit is followed by a checkpoint.
    store = await EmbeddedEventStore.open(tmp_path, settings=EmbeddedSettings(wal_checkpoint_bytes=1))
    try:
        # The checkpoint fails after the commit: the group committed, so it is acknowledged; the writer's
        # state still matches the database, so the store keeps accepting appends (no fail-fast here).
        results = await asyncio.wait_for(
            asyncio.gather(*(_append(store, f"s{i}", 2) for i in range(20))), BOUND
        )
        assert len({r.position for r in results}) == 20
        await _append(store, "after")
        assert disks[0].refused >= 2, "the failed checkpoint is retried after the next commits"
        assert store.stats.after_commit_errors == disks[0].refused
        assert store.stats.wal_checkpoints == 0
        await asyncio.wait_for(store.ping(), BOUND)

        disks[0].full = False  # space again: the next commit's checkpoint goes through
        await _append(store, "space")
        assert store.stats.wal_checkpoints >= 1
        assert [e.type for e in await store.read_stream("s7")] == ["E0", "E1"]
    finally:
        await store.close()


async def test_an_sqlite_error_right_after_commit_still_acknowledges_the_group(tmp_path: Path) -> None:
    def disk_full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    store = await EmbeddedEventStore.open(tmp_path)
    try:
        with failpoints.armed("writer.after_commit", disk_full):
            first = await _append(store, "a")
            second = await _append(store, "b")
        assert second.position.commit > first.position.commit
        assert store.stats.after_commit_errors == 2
        await _append(store, "c")
        assert len(await store.read_stream("a")) == 1
    finally:
        await store.close()


async def _break_the_writer(store: EmbeddedEventStore, where: str) -> tuple[Any, list[Any]]:
    """Raise an unexpected exception in the writer thread while it holds the first of six appends (before
    or after its COMMIT) and five more wait in its queue; return (the first, the queued) as futures."""
    entered, release = threading.Event(), threading.Event()

    def bug() -> None:
        entered.set()
        release.wait(BOUND)
        raise RuntimeError(f"a bug {where} commit")

    writer: Any = store._writer
    if where == "before":
        writer._commit_group = lambda group: bug()
    else:
        failpoints.arm("writer.after_commit", bug)
    try:
        first = asyncio.ensure_future(store.append("first", _events("first"), expected=NO_STREAM))
        assert await asyncio.to_thread(entered.wait, BOUND), "the writer never took the first append"
        queued = [
            asyncio.ensure_future(store.append(f"q{i}", _events(f"q{i}"), expected=NO_STREAM))
            for i in range(5)
        ]

        async def all_queued() -> bool:
            return bool(writer._queue.qsize() == 5)

        await _until(all_queued, "five appends queued behind the first")
        release.set()
        await asyncio.wait_for(asyncio.wait([first, *queued]), BOUND)
    finally:
        release.set()
        failpoints.disarm("writer.after_commit")
    return first, queued


@pytest.mark.parametrize("where", ["before", "after"])
async def test_an_unexpected_error_in_the_writer_answers_everyone_and_refuses_new_writes(
    tmp_path: Path, where: str
) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    try:
        first, queued = await _break_the_writer(store, where)
        if where == "after":
            # It committed before the bug: its acknowledgement is not lost.
            assert first.result().next_revision == 0
        else:
            assert isinstance(first.exception(), OperationalError)
        for fut in queued:
            error = fut.exception()
            assert isinstance(error, OperationalError), error
            assert f"RuntimeError: a bug {where} commit" in str(error)
        # Refused at once (on the coroutine's first step), not queued to a thread that is gone.
        late = store.append("late", _events("late"), expected=NO_STREAM)
        with pytest.raises(OperationalError, match="writer failed"):
            late.send(None)
        with pytest.raises(OperationalError, match=f"a bug {where} commit"):
            await asyncio.wait_for(store.ping(), BOUND)
    finally:
        await asyncio.wait_for(store.close(), BOUND)
    # What committed before the failure is durable, and the closed store released the directory.
    store = await EmbeddedEventStore.open(tmp_path)
    try:
        assert [e.stream for b in [x async for x in store.read_all()] for e in b] == (
            ["first"] if where == "after" else []
        )
    finally:
        await store.close()


async def test_readiness_fails_once_the_writer_has_failed(tmp_path: Path) -> None:
    from orchestrator.api.app import create_app
    from orchestrator.api.deps import ApiDeps, NodeInfo
    from orchestrator.app.commands import SagaCommands
    from orchestrator.domain.timing import Tuning
    from orchestrator.settings import Settings

    store = await EmbeddedEventStore.open(tmp_path)
    deps = ApiDeps(
        store=store,
        commands=SagaCommands(store, Tuning()),
        registry=CollectorRegistry(),
        settings=Settings(),
        node=NodeInfo("node-test", "0.1.0", ("api",)),
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(deps), host="127.0.0.1"))
    await client.start_server()
    try:
        assert (await client.get("/health/ready")).status == 200
        first, queued = await _break_the_writer(store, "before")
        assert all(isinstance(f.exception(), OperationalError) for f in [first, *queued])
        ready = await client.get("/health/ready")
        assert ready.status == 503
        body = await ready.json()
        assert body["status"] == "down"
        assert "writer failed" in body["checks"]["store"]["detail"]
        assert (await client.get("/health")).status == 503
        assert (await client.get("/health/live")).status == 200
    finally:
        await client.close()
        await store.close()


# --- 2. a parked message is durable before any checkpoint passes it ---------------------------------------


class _RefuseParked:
    """A connection on which every write of the parked list fails (an IO error on that write only)."""

    attempts = 0

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if "ps_parked" in sql:
            _RefuseParked.attempts += 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)


@pytest.mark.parametrize("how", ["park", "retry"])
async def test_a_failed_park_write_keeps_the_checkpoint_below_the_message_until_it_is_parked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(persistent_module, "PARKED_RETRY_S", 0.02)
    monkeypatch.setattr(_RefuseParked, "attempts", 0)
    store = await EmbeddedEventStore.open(tmp_path)
    await store.create_subscription(GROUP, settings=replace(EAGER, max_retry_count=0))
    await _append(store, "s", 2)
    refusing = True
    original = store.write_call

    async def write_call(fn: Any) -> Any:
        return await original(lambda conn: fn(_RefuseParked(conn) if refusing else conn))

    store.write_call = write_call  # type: ignore[method-assign]
    try:
        consumer = await store.read_subscription(GROUP)
        parked, acked = await _next(consumer), await _next(consumer)
        # Parking first (nack PARK, or a retry past max_retry_count=0), then an ack that makes a checkpoint
        # past the parked message due in the very same dispatcher round.
        await consumer.nack(parked.id, NackAction.PARK if how == "park" else NackAction.RETRY)
        await consumer.ack(acked.id)

        async def retried_or_passed() -> bool:
            # Two attempts: the round of the first one (and its checkpoint) is over.
            return _RefuseParked.attempts >= 2 or await _durable_checkpoint(store) > 0

        await _until(retried_or_passed, "the park write retried")
        assert await _durable_checkpoint(store) < parked.position.commit, (
            "checkpoint passed an unparked message"
        )

        refusing = False  # the disk recovers: the retried park goes through, then the checkpoint passes it

        async def parked_then_passed() -> bool:
            return await _durable_checkpoint(store) == acked.position.commit

        await _until(parked_then_passed, "the checkpoint past the parked message")
        assert [e.id for e in await store.parked_events(GROUP)] == [parked.id]
        assert (await store.get_subscription_info(GROUP)).parked == 1
    finally:
        await store.close()
    store = await EmbeddedEventStore.open(tmp_path)
    try:
        assert [e.id for e in await store.parked_events(GROUP)] == [parked.id]
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["park", "retry"])
async def test_a_crash_right_after_a_park_loses_no_message(tmp_path: Path, how: str) -> None:
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(Path(__file__).with_name("_store_failpoint_child.py")), str(tmp_path), how],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SAGA_FAILPOINTS": "persistent.after_park=kill@1"},
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, f"the child was not killed at the failpoint: {child}"
    parked_id, parked_position = child.stdout.split()[:2]
    store = await EmbeddedEventStore.open(tmp_path)
    try:
        # Never gone: still parked, or (the checkpoint being below it) delivered again.
        if UUID(parked_id) not in [e.id for e in await store.parked_events(GROUP)]:
            assert await _durable_checkpoint(store) < int(parked_position), "the parked message is lost"
            consumer = await store.read_subscription(GROUP)
            assert (await _next(consumer)).id == UUID(parked_id)
    finally:
        await store.close()


# --- 3. a reloaded and a replayed copy of one event ---------------------------------------------------------


@pytest.mark.parametrize("first", ["reloaded", "replayed"])
async def test_a_reloaded_and_a_replayed_copy_of_one_event_both_settle(tmp_path: Path, first: str) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    await store.create_subscription(GROUP, settings=EAGER)
    position = (await _append(store, "s")).position.commit
    # The state a crash right after a park leaves behind (the test above makes it for real): the event is
    # parked and the checkpoint is still below it, so a restart loads it again as well.
    await store.write_call(
        lambda c: c.execute("INSERT INTO ps_parked (grp, position) VALUES (?, ?)", (GROUP, position))
    )
    await store.close()

    store = await EmbeddedEventStore.open(tmp_path)
    try:
        assert (await store.get_subscription_info(GROUP)).parked == 1
        if first == "replayed":
            await store.replay_parked(GROUP)
        consumer = await store.read_subscription(GROUP)
        one = await _next(consumer)
        if first == "reloaded":
            await store.replay_parked(GROUP)
        other = await _next(consumer)
        assert one.id == other.id
        info = await store.get_subscription_info(GROUP)
        assert info.in_flight == 2, "both copies are held"

        await consumer.ack(one.id)

        async def settled() -> bool:
            info = await store.get_subscription_info(GROUP)
            return (
                info.in_flight == 0
                and info.parked == 0
                and not await store.parked_events(GROUP)
                and await _durable_checkpoint(store) == position
            )

        await _until(settled, "both copies settled: unparked, and the checkpoint past the event")
    finally:
        await store.close()


async def test_a_graceful_close_writes_the_last_checkpoint(tmp_path: Path) -> None:
    """Regression: close() marked the store closed before the groups wrote their last checkpoint, which then
    failed silently, so every graceful stop redelivered everything since the last periodic checkpoint."""
    store = await EmbeddedEventStore.open(tmp_path)
    lazy = replace(EAGER, checkpoint_after=3600.0, min_checkpoint_count=1000, max_checkpoint_count=1000)
    await store.create_subscription(GROUP, settings=lazy)
    last = (await _append(store, "s", 3)).position.commit
    consumer = await store.read_subscription(GROUP)
    for _ in range(3):
        await consumer.ack((await _next(consumer)).id)
    await _until(
        lambda: _in_flight_is(store, 0), "every delivery settled before the store closes", within=BOUND
    )
    await store.close()

    store = await EmbeddedEventStore.open(tmp_path)
    try:
        assert await _durable_checkpoint(store) == last
    finally:
        await store.close()


async def _in_flight_is(store: EmbeddedEventStore, n: int) -> bool:
    return (await store.get_subscription_info(GROUP)).in_flight == n


# --- 4. a failed open releases the directory ------------------------------------------------------------


def _writer_threads() -> int:
    return sum(t.name == "eventstore-writer" for t in threading.enumerate())


@pytest.mark.parametrize("step", ["reader", "load"])
async def test_a_failed_open_releases_the_lock_and_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    threads = _writer_threads()

    def refuse(*_: Any, **__: Any) -> Any:
        raise OperationalError(f"{step} failed")

    async def refuse_load(self: PersistentSubscriptions) -> None:
        refuse()

    with monkeypatch.context() as patch:
        if step == "reader":
            patch.setattr(store_module, "Reader", refuse)
        else:
            patch.setattr(PersistentSubscriptions, "load", refuse_load)
        with pytest.raises(OperationalError, match=f"{step} failed"):
            await EmbeddedEventStore.open(tmp_path)
    assert _writer_threads() == threads, "the writer thread of the failed open is still running"
    store = await EmbeddedEventStore.open(tmp_path)  # the same process, the same directory: not locked
    try:
        await _append(store, "s")
    finally:
        await store.close()
