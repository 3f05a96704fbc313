"""The embedded event store: SQLite (WAL, synchronous=FULL) behind the EventStore port.

Single process by contract: opening for writing takes an exclusive lock on the data directory. Tools open
it read-only (no lock, no writer; live subscriptions then follow the head by polling, since no writer in
this process can wake them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from orchestrator.eventstore.embedded.lock import DirectoryLock
from orchestrator.eventstore.embedded.persistent import PersistentSubscriptions
from orchestrator.eventstore.embedded.reader import Reader
from orchestrator.eventstore.embedded.schema import DB_FILE, connect_writer
from orchestrator.eventstore.embedded.subscriptions import (
    AllSubscription,
    Notifier,
    StreamSubscriptionImpl,
)
from orchestrator.eventstore.embedded.writer import (
    Writer,
    WriterStats,
    _Append,
    _Call,
    _SetMetadata,
    _Tombstone,
)
from orchestrator.eventstore.errors import (
    AppendTooLarge,
    OperationalError,
    ReadOnlyStore,
    StoreClosed,
    SubscriptionNotFound,
)
from orchestrator.eventstore.port import DEFAULT_BUFFER_SIZE
from orchestrator.eventstore.retention import expired, lowest_readable
from orchestrator.eventstore.types import (
    MAX_APPEND_SIZE,
    AppendResult,
    EventFilter,
    Expected,
    NewEvent,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    StreamMetadata,
    StreamState,
    SubscriptionInfo,
)


@dataclass(frozen=True, slots=True)
class EmbeddedSettings:
    #: most requests written in one transaction (one fsync)
    max_group: int = 1024
    #: the writer checkpoints the WAL once it grows past this
    wal_checkpoint_bytes: int = 64 * 1024 * 1024
    read_page_size: int = 500
    reader_threads: int = 2
    stream_cache_size: int = 100_000
    #: read-only stores only: how often live subscriptions look for new commits
    read_only_poll_interval: float = 0.2


class EmbeddedEventStore:
    def __init__(
        self,
        directory: Path,
        settings: EmbeddedSettings,
        reader: Reader,
        notifier: Notifier,
        writer: Writer | None,
        lock: DirectoryLock | None,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.reader = reader
        self.notifier = notifier
        self._writer = writer
        self._lock = lock
        self._closed = False
        self._closing = False
        self._poller: asyncio.Task[None] | None = None
        self.persistent = PersistentSubscriptions(self)

    @classmethod
    async def open(
        cls, directory: Path | str, *, read_only: bool = False, settings: EmbeddedSettings | None = None
    ) -> EmbeddedEventStore:
        directory = Path(directory)
        settings = settings or EmbeddedSettings()
        db_path = directory / DB_FILE
        loop = asyncio.get_running_loop()
        # Whatever fails (or is cancelled) part-way through opening undoes what was opened so far, in
        # reverse: otherwise a leaked lock would refuse this directory to the process until it exits.
        async with contextlib.AsyncExitStack() as undo:
            if read_only:
                if not db_path.exists():
                    raise OperationalError(f"no event store at {directory}")
                reader = Reader(db_path, read_only_file=True, threads=settings.reader_threads)
                undo.push_async_callback(asyncio.to_thread, reader.close)
                head = await reader.run(Reader.head)
                store = cls(directory, settings, reader, Notifier(head), None, None)
                # Groups and their durable state (checkpoint, parked) are readable; in-flight counts live
                # only in the process that serves them.
                await store.persistent.load()
                store._poller = asyncio.create_task(store._poll_head(), name="eventstore-head-poller")
                undo.pop_all()
                return store
            directory.mkdir(parents=True, exist_ok=True)
            lock = DirectoryLock(directory)
            lock.acquire()
            undo.callback(lock.release)
            conn = await asyncio.to_thread(connect_writer, db_path)
            # The writer thread closes it when it ends; this covers a Writer that never started.
            undo.callback(conn.close)
            notifier = Notifier(0)
            writer = Writer(
                conn,
                loop,
                notifier.publish,
                max_group=settings.max_group,
                wal_checkpoint_bytes=settings.wal_checkpoint_bytes,
                stream_cache_size=settings.stream_cache_size,
            )
            undo.push_async_callback(writer.close)
            notifier.head = writer.head
            reader = Reader(db_path, read_only_file=False, threads=settings.reader_threads)
            undo.push_async_callback(asyncio.to_thread, reader.close)
            store = cls(directory, settings, reader, notifier, writer, lock)
            await store.persistent.load()
            undo.pop_all()
            return store

    @property
    def read_only(self) -> bool:
        return self._writer is None

    @property
    def stats(self) -> WriterStats:
        if self._writer is None:
            raise ReadOnlyStore("a read-only store has no writer")
        return self._writer.stats

    def _writer_or_raise(self) -> Writer:
        if self._closed:
            raise StoreClosed("event store is closed")
        if self._writer is None:
            raise ReadOnlyStore(f"event store at {self.directory} is open read-only")
        return self._writer

    async def write_call(self, fn: Any) -> Any:
        """Run ``fn(connection)`` inside the writer's next group transaction (internal)."""
        return await self._writer_or_raise().submit(_Call(fn))

    # --- streams -------------------------------------------------------------------------------------
    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> AppendResult:
        writer = self._writer_or_raise()
        _check_expected_arg(expected)
        size = sum(e.size for e in events)
        if size > MAX_APPEND_SIZE:
            raise AppendTooLarge(size, MAX_APPEND_SIZE)
        result: AppendResult = await writer.submit(_Append(stream, tuple(events), expected))
        return result

    async def read_stream(
        self,
        stream: str,
        *,
        from_revision: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Sequence[RecordedEvent]:
        self._check_open()
        n = limit if limit is not None else -1

        def read(conn: Any) -> list[RecordedEvent]:
            # What the stream's metadata hides ($maxCount, $tb, $maxAge), as on the server.
            row = conn.execute("SELECT meta, last_revision FROM streams WHERE name = ?", (stream,)).fetchone()
            metadata = json.loads(row[0]) if row is not None and row[0] else {}
            if not metadata:
                return Reader.read_stream(conn, stream, from_revision, backwards, n)
            low = lowest_readable(row[1], metadata)
            start = from_revision if backwards else max(from_revision, low)
            events = Reader.read_stream(conn, stream, start, backwards, n)
            too_old = expired(metadata, datetime.now(UTC))
            return [e for e in events if e.revision >= low and not too_old(e)]

        return await self.reader.run(read)

    async def read_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        batch_size: int = 500,
        limit: int | None = None,
    ) -> AsyncIterator[Sequence[RecordedEvent]]:
        self._check_open()
        cursor = after.commit if after is not None else 0
        remaining = limit if limit is not None else -1
        head = self.notifier.head if not self.read_only else await self.reader.run(Reader.head)
        while remaining != 0 and cursor < head:
            page = batch_size if remaining < 0 else min(batch_size, remaining)
            events, cursor = await self.reader.run(
                functools.partial(Reader.read_all_page, after=cursor, upto=head, flt=filter, limit=page)
            )
            if events:
                if remaining > 0:
                    remaining -= len(events)
                yield events

    async def head_position(self) -> Position | None:
        self._check_open()
        head = self.notifier.head if not self.read_only else await self.reader.run(Reader.head)
        return Position(head) if head else None

    async def subscribe_stream(
        self, stream: str, *, after_revision: int | None = None
    ) -> StreamSubscriptionImpl:
        self._check_open()
        return StreamSubscriptionImpl(self, stream, after_revision, self.settings.read_page_size)

    async def subscribe_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        checkpoint_interval: int = 32,
    ) -> AllSubscription:
        self._check_open()
        return AllSubscription(self, after, filter, checkpoint_interval, self.settings.read_page_size)

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        self._check_open()

        def read(conn: Any) -> StreamMetadata:
            row = conn.execute("SELECT meta, meta_revision FROM streams WHERE name = ?", (stream,)).fetchone()
            if row is None or row[1] is None:
                return StreamMetadata({}, None)
            return StreamMetadata(json.loads(row[0]), row[1])

        return await self.reader.run(read)

    async def set_stream_metadata(
        self, stream: str, metadata: Mapping[str, Any], *, expected: Expected = StreamState.ANY
    ) -> None:
        _check_expected_arg(expected)
        body = dict(metadata)
        json.dumps(body)  # refuse what cannot be stored before it reaches the writer
        await self._writer_or_raise().submit(_SetMetadata(stream, body, expected))

    async def tombstone_stream(self, stream: str, *, expected: Expected = StreamState.ANY) -> None:
        _check_expected_arg(expected)
        await self._writer_or_raise().submit(_Tombstone(stream, expected))

    # --- persistent subscriptions ----------------------------------------------------------------------
    async def create_subscription(
        self,
        group: str,
        *,
        filter: EventFilter | None = None,
        settings: PersistentSubscriptionSettings | None = None,
        after: Position | None = None,
        from_end: bool = False,
        system_events: bool = False,
    ) -> None:
        """The port's ``create_subscription``; ``system_events`` (not in the port, for the local server)
        makes the group deliver system events too, where its filter selects them."""
        self._writer_or_raise()
        await self.persistent.create(
            group,
            filter or EventFilter(),
            settings or PersistentSubscriptionSettings(),
            after,
            from_end,
            system_events,
        )

    async def update_subscription(self, group: str, settings: PersistentSubscriptionSettings) -> None:
        self._writer_or_raise()
        await self.persistent.update(group, settings)

    async def delete_subscription(self, group: str) -> None:
        self._writer_or_raise()
        await self.persistent.delete(group)

    async def read_subscription(self, group: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Any:
        self._writer_or_raise()
        return await self.persistent.connect(group, buffer_size)

    async def replay_parked(self, group: str) -> None:
        self._writer_or_raise()
        await self.persistent.replay_parked(group)

    async def get_subscription_info(self, group: str) -> SubscriptionInfo:
        self._check_open()
        return await self.persistent.info(group)

    async def list_subscriptions(self) -> Sequence[SubscriptionInfo]:
        self._check_open()
        return await self.persistent.list()

    async def parked_events(self, group: str, *, limit: int = 100) -> Sequence[RecordedEvent]:
        """The group's parked events, oldest first (embedded store only; for tools)."""
        self._check_open()
        if group not in self.persistent.groups:
            raise SubscriptionNotFound(group)

        def read(conn: Any) -> list[RecordedEvent]:
            rows = conn.execute(
                "SELECT position FROM ps_parked WHERE grp = ? ORDER BY position LIMIT ?", (group, limit)
            ).fetchall()
            return Reader.events_at(conn, [r[0] for r in rows])

        return await self.reader.run(read)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("event store is closed")

    async def ping(self) -> None:
        self._check_open()
        if self._writer is not None:
            self._writer.check()  # a failed writer makes the store unhealthy, however well it reads
        await self.reader.run(lambda c: c.execute("SELECT 1").fetchone())

    async def _poll_head(self) -> None:
        while True:
            await asyncio.sleep(self.settings.read_only_poll_interval)
            with contextlib.suppress(OperationalError):
                head = await self.reader.run(Reader.head)
                if head > self.notifier.head:
                    self.notifier.publish(head, frozenset())

    async def close(self) -> None:
        if self._closed or self._closing:
            return
        # Persistent subscriptions write their last parked changes and checkpoint first, while the
        # writer still takes writes (a graceful stop then redelivers nothing already done).
        self._closing = True
        await self.persistent.close()
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._writer is not None:
            await self._writer.close()
        self.notifier.close()
        await asyncio.to_thread(self.reader.close)
        if self._lock is not None:
            self._lock.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _check_expected_arg(expected: Expected) -> None:
    if isinstance(expected, bool) or not isinstance(expected, StreamState | int):
        raise TypeError(f"expected must be a StreamState or a revision, not {expected!r}")
    if isinstance(expected, int) and expected < 0:
        raise ValueError("an expected revision is >= 0; use NO_STREAM for a stream that must not exist")
