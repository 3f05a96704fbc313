"""What only the embedded store must show: durability settings, acknowledgement after commit, crash
safety, the directory lock, group commit, WAL checkpoints and writer-driven wake-ups."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.eventstore import (
    NO_STREAM,
    CaughtUp,
    NewEvent,
    OperationalError,
    ReadOnlyStore,
    RecordedEvent,
    StoreLocked,
    new_events,
)
from orchestrator.eventstore.embedded import EmbeddedEventStore, EmbeddedSettings, schema
from orchestrator.eventstore.embedded.schema import DB_FILE, assert_durable

ROOT = Path(__file__).resolve().parents[2]


def _batch(stream: str, n: int = 8) -> list[NewEvent]:
    return new_events(stream, NO_STREAM, [(f"E{i}", b'{"i":%d}' % i, b"{}") for i in range(n)])


async def test_open_asserts_wal_and_synchronous_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await EmbeddedEventStore.open(tmp_path / "ok")
    await store.close()
    weak = tuple(p.replace("synchronous=FULL", "synchronous=NORMAL") for p in schema.WRITER_PRAGMAS)
    monkeypatch.setattr(schema, "WRITER_PRAGMAS", weak)
    with pytest.raises(OperationalError, match="synchronous=FULL"):
        await EmbeddedEventStore.open(tmp_path / "weak")


def test_assert_durable_rejects_a_non_wal_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("PRAGMA synchronous=FULL")
    with pytest.raises(OperationalError, match="journal_mode=wal"):
        assert_durable(conn)
    conn.close()


async def test_every_acknowledged_append_is_already_committed(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    # An independent connection: what it can see is what has been committed.
    probe = sqlite3.connect(tmp_path / DB_FILE, check_same_thread=False)
    unseen: list[str] = []

    async def one(i: int) -> None:
        stream = f"ack-{i}"
        result = await store.append(stream, _batch(stream), expected=NO_STREAM)
        row = probe.execute("SELECT count(*) FROM events WHERE position = ?", (result.position.commit,))
        if row.fetchone()[0] != 1:
            unseen.append(stream)

    await asyncio.gather(*(one(i) for i in range(2000)))
    stats = store.stats
    await store.close()
    probe.close()
    assert unseen == []
    assert stats.ack_ahead_of_commit == 0
    assert stats.acked_groups == stats.commits
    assert stats.appends == 2000
    assert stats.events == 16000
    # Group commit: far fewer transactions (fsyncs) than appends.
    assert stats.commits < 2000 / 4


def _run_child_and_kill(directory: Path, kill_after: int) -> dict[str, int]:
    """Start the appending child, read ``kill_after`` acknowledgements, SIGKILL it; return them."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_append_until_killed.py")), str(directory), "64"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    acknowledged: dict[str, int] = {}
    for seen, line in enumerate(proc.stdout, start=1):
        stream, position = line.split()
        acknowledged[stream] = int(position)
        if seen >= kill_after:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    return acknowledged


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_append_and_leaves_no_partial_one(tmp_path: Path) -> None:
    acknowledged: dict[str, int] = {}
    for kill_after in (50, 400, 1500):
        acknowledged.update(await asyncio.to_thread(_run_child_and_kill, tmp_path, kill_after))

        store = await EmbeddedEventStore.open(tmp_path)
        counts: dict[str, list[RecordedEvent]] = {}
        async for batch in store.read_all():
            for event in batch:
                counts.setdefault(event.stream, []).append(event)
        await store.close()
        missing = [s for s in acknowledged if s not in counts]
        assert missing == []
        for stream, events in counts.items():
            assert [e.type for e in events] == [f"E{i}" for i in range(8)], stream
            assert [e.revision for e in events] == list(range(8))
        for stream, position in acknowledged.items():
            assert counts[stream][-1].position.commit == position


async def test_positions_increase_across_restarts(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    first = await store.append("a", _batch("a"), expected=NO_STREAM)
    await store.close()
    store = await EmbeddedEventStore.open(tmp_path)
    second = await store.append("b", _batch("b"), expected=NO_STREAM)
    await store.close()
    assert second.position.commit == first.position.commit + 8


async def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    try:
        with pytest.raises(StoreLocked, match=f"pid={os.getpid()}"):
            await EmbeddedEventStore.open(tmp_path)
        code = (
            "import asyncio, sys\n"
            "from orchestrator.eventstore.embedded import EmbeddedEventStore\n"
            "from orchestrator.eventstore import StoreLocked\n"
            "async def main():\n"
            "    try:\n"
            f"        await EmbeddedEventStore.open({str(tmp_path)!r})\n"
            "    except StoreLocked as e:\n"
            "        print(e)\n"
            "        sys.exit(3)\n"
            "asyncio.run(main())\n"
        )
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        assert out.returncode == 3, out.stderr
        assert f"pid={os.getpid()}" in out.stdout
    finally:
        await store.close()
    # Released on close: the directory can be opened again.
    again = await EmbeddedEventStore.open(tmp_path)
    await again.close()


async def test_read_only_open_reads_beside_the_writer_and_refuses_writes(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    await store.append("s", _batch("s"), expected=NO_STREAM)
    reader = await EmbeddedEventStore.open(tmp_path, read_only=True)
    try:
        assert len(await reader.read_stream("s")) == 8
        with pytest.raises(ReadOnlyStore):
            await reader.append("t", _batch("t"), expected=NO_STREAM)
        await store.append("t", _batch("t"), expected=NO_STREAM)
        assert (await reader.head_position()) == (await store.head_position())
    finally:
        await reader.close()
        await store.close()


async def test_wal_is_checkpointed_above_its_size_limit(tmp_path: Path) -> None:
    limit = 256 * 1024
    store = await EmbeddedEventStore.open(tmp_path, settings=EmbeddedSettings(wal_checkpoint_bytes=limit))
    big = b'{"pad":"' + b"x" * 4000 + b'"}'
    for i in range(200):
        stream = f"w{i}"
        await store.append(stream, new_events(stream, NO_STREAM, [("E", big, b"{}")] * 4), expected=NO_STREAM)
    stats = store.stats
    await store.close()
    assert stats.wal_checkpoints > 0
    assert stats.wal_bytes < 8 * limit


async def test_live_subscribers_are_woken_by_the_writer_not_by_polling(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    sub = await store.subscribe_all()
    assert isinstance(await asyncio.wait_for(sub.__anext__(), 5), CaughtUp)
    nxt = asyncio.ensure_future(sub.__anext__())
    await asyncio.sleep(0)  # let the subscriber park on the notifier
    calls_before = store.reader.calls
    # Observe an idle interval: a polling subscriber would query the database during it.
    await asyncio.wait({nxt}, timeout=0.3)
    assert not nxt.done()
    assert store.reader.calls == calls_before
    await store.append("live", _batch("live", 1), expected=NO_STREAM)
    event = await asyncio.wait_for(nxt, 5)
    assert isinstance(event, RecordedEvent)
    assert event.stream == "live"
    await sub.close()
    await store.close()


async def test_a_persistent_group_reads_on_when_commits_land_during_its_page_read(tmp_path: Path) -> None:
    from orchestrator.eventstore import ConsumerStrategy, EventFilter, PersistentSubscriptionSettings

    store = await EmbeddedEventStore.open(tmp_path)
    await store.create_subscription(
        "g",
        filter=EventFilter(stream_prefixes=("a-",)),
        settings=PersistentSubscriptionSettings(strategy=ConsumerStrategy.PINNED),
    )
    consumer = await store.read_subscription("g")
    first = asyncio.ensure_future(consumer.__anext__())
    original = store.reader.run
    injected = asyncio.Event()

    async def run(fn: Any) -> Any:
        result = await original(fn)
        if not injected.is_set():
            injected.set()
            # A matching commit lands after the group's page was read, before it decides to wait.
            await store.append("a-1", _batch("a-1", 1), expected=NO_STREAM)
        return result

    store.reader.run = run
    # Live pages normally come from memory, where no commit can land mid-read; the race lives on the path
    # that reads the database (a group behind the in-memory window), so take that path.
    store.notifier.recent = lambda *_: None
    await store.append("b-0", _batch("b-0", 1), expected=NO_STREAM)  # filtered out: only wakes the group
    event = await asyncio.wait_for(first, 5)
    assert event.stream == "a-1"
    await consumer.close()
    await store.close()


async def test_live_pages_come_from_the_writers_recent_events_and_match_the_database(tmp_path: Path) -> None:
    from orchestrator.eventstore import EventFilter
    from orchestrator.eventstore.embedded.reader import Reader

    store = await EmbeddedEventStore.open(tmp_path)
    for i in range(30):
        name = f"{'a' if i % 3 else 'b'}-{i}"
        await store.append(name, _batch(name, 2), expected=NO_STREAM)
    head = store.notifier.head
    flt = EventFilter(stream_prefixes=("a-",))
    for after, limit in ((0, 500), (7, 5), (40, 3), (59, 10)):
        memory = store.notifier.recent(after, head, flt, limit)
        assert memory is not None

        def page(conn: Any, after: int = after, limit: int = limit) -> Any:
            return Reader.read_all_page(conn, after, head, flt, limit)

        database = await store.reader.run(page)
        assert [e.id for e in memory[0]] == [e.id for e in database[0]]
        assert memory[0] == database[0]  # same bytes, same recorded time, same positions
        if len(memory[0]) == limit:
            assert memory[1] == database[1]
    # Older than the window: the caller must read the database.
    store.notifier._recent.popleft()
    assert store.notifier.recent(0, head, flt, 10) is None
    await store.close()
