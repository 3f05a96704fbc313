"""The single writer of the embedded store, with group commit.

One OS thread owns the write connection. Callers on the event loop enqueue requests; the thread takes
every request waiting (up to ``max_group``), decides each against the stream state it caches, writes the
accepted ones in one transaction, commits (one fsync for the whole group) and only then hands the results
back to the loop in one callback. An acknowledgement therefore never runs ahead of its commit; ``stats``
counts both sides so a test can check it.

Every request gets an answer, whatever happens in the thread: a group that fails before its COMMIT is
answered with OperationalError; one that committed is acknowledged even if what follows the commit fails;
and an exception that escapes the thread (a bug, a connection gone bad) fails everything waiting and leaves
the writer *failed*, so new requests are refused at once and ``check`` (the store's ping) reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from orchestrator import failpoints
from orchestrator.eventstore.errors import (
    EventStoreError,
    OperationalError,
    StoreClosed,
    StreamDeleted,
    WrongExpectedRevision,
)
from orchestrator.eventstore.types import (
    AppendResult,
    Expected,
    NewEvent,
    Position,
    RecordedEvent,
    StreamState,
)

#: how far back an ANY / EXISTS retry is recognised as idempotent (EventStoreDB keeps a bounded cache too)
_IDEMPOTENCY_WINDOW = 256
_JSON = "application/json"

log = structlog.get_logger("orchestrator.eventstore")


@dataclass(slots=True)
class _Stream:
    id: int | None  # None until its row is inserted in the current transaction
    last_revision: int  # -1: no events
    deleted: bool
    meta_revision: int | None


@dataclass(slots=True)
class WriterStats:
    commits: int = 0
    #: commit sequence number of the newest commit the loop has acknowledged appends for
    acked_commit: int = 0
    acked_groups: int = 0
    #: acknowledgements handed out for a commit that had not finished (must stay 0)
    ack_ahead_of_commit: int = 0
    appends: int = 0
    events: int = 0
    fsync_groups: int = 0
    wal_bytes: int = 0
    wal_checkpoints: int = 0
    #: SQLite errors after a commit (a WAL checkpoint refused, e.g. SQLITE_FULL); the commit stood, the
    #: checkpoint is retried after the next commit
    after_commit_errors: int = 0
    #: requests written over all commits (mean group size = grouped_requests / commits)
    grouped_requests: int = 0


@dataclass(slots=True)
class _Append:
    stream: str
    events: Sequence[NewEvent]
    expected: Expected


@dataclass(slots=True)
class _SetMetadata:
    stream: str
    values: Mapping[str, Any]
    expected: Expected


@dataclass(slots=True)
class _Tombstone:
    stream: str
    expected: Expected


@dataclass(slots=True)
class _Call:
    """Arbitrary write (persistent-subscription checkpoints, parked lists) inside the group transaction."""

    fn: Callable[[sqlite3.Connection], Any]


Request = _Append | _SetMetadata | _Tombstone | _Call
#: (new head, streams touched, the events committed in position order) — called on the loop, in commit order
Published = Callable[[int, frozenset[str], list[RecordedEvent]], None]


class Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        publish: Published,
        *,
        max_group: int = 1024,
        wal_checkpoint_bytes: int = 64 * 1024 * 1024,
        stream_cache_size: int = 100_000,
    ) -> None:
        self._conn = conn
        self._loop = loop
        self._publish = publish
        self._max_group = max_group
        self._wal_limit = wal_checkpoint_bytes
        self._cache: OrderedDict[str, _Stream] = OrderedDict()
        self._cache_size = stream_cache_size
        self._queue: queue.SimpleQueue[tuple[Request, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        row = conn.execute("SELECT max(position) FROM events").fetchone()
        self.head: int = row[0] or 0
        self._last_time_us = 0
        self.stats = WriterStats()
        self._closed = False
        #: what killed the writer thread; set under ``_failing`` so no request slips into the queue after
        #: the thread drained it for the last time
        self._failed: BaseException | None = None
        self._failing = threading.Lock()
        #: streams changed by the group being written (the cache may evict, this may not)
        self._touched: dict[str, _Stream] = {}
        self._group_appends = self._group_events = self._group_bytes = 0
        self._group_recorded: list[RecordedEvent] = []
        self._group_time = datetime.now(UTC)
        self._wal_pending = 0
        self._page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self._thread = threading.Thread(target=self._run, name="eventstore-writer", daemon=True)
        self._thread.start()

    # --- loop side ----------------------------------------------------------------------------------
    def submit(self, request: Request) -> asyncio.Future[Any]:
        if self._closed:
            raise StoreClosed("event store is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        with self._failing:
            self.check()
            self._queue.put((request, fut))
        return fut

    def check(self) -> None:
        """Raise OperationalError (naming the cause) once the writer thread has failed."""
        if self._failed is not None:
            raise self._failure()

    def _failure(self) -> OperationalError:
        cause = self._failed
        error = OperationalError(
            f"event store writer failed ({type(cause).__name__}: {cause}); writes are refused until restart"
        )
        error.__cause__ = cause
        return error

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    # --- writer thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        group: list[tuple[Request, asyncio.Future[Any]]] = []
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = [first]
                stop = False
                while len(group) < self._max_group:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    group.append(item)
                self._commit_group(group)
                group = []
                if stop:
                    return
        except BaseException as e:  # the thread's last word: nothing may escape unanswered
            # Whatever escaped the per-group handling leaves this thread's state (stream cache, head,
            # transaction) untrustworthy, so the writer stops for good instead of guessing: a restart
            # rebuilds that state from the database. Not re-raised: it is reported here and by `check`.
            log.exception("writer_failed", error=f"{type(e).__name__}: {e}")
            with self._failing:
                self._failed = e
            # A group whose commit went through was already acknowledged (that callback runs first, and a
            # settled future is left alone); the rest of the group in hand is failed here.
            self._resolve_later([(fut, self._failure()) for _, fut in group], None, frozenset())
        finally:
            self._fail_pending()
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                error = self._failure() if self._failed is not None else StoreClosed("event store is closed")
                self._resolve_later([(item[1], error)], None, frozenset())

    def _commit_group(self, group: list[tuple[Request, asyncio.Future[Any]]]) -> None:
        conn = self._conn
        results: list[tuple[asyncio.Future[Any], Any]] = []
        touched = self._touched = {}
        self._group_appends = self._group_events = self._group_bytes = 0
        self._group_recorded = []
        head_before = self.head
        now_us = max(time.time_ns() // 1000, self._last_time_us)
        self._group_time = datetime.fromtimestamp(now_us / 1_000_000, UTC)
        rows: list[tuple[Any, ...]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request, fut in group:
                try:
                    results.append((fut, self._apply(request, rows, now_us)))
                except EventStoreError as e:
                    results.append((fut, e))
            self._flush(rows)
            conn.execute("COMMIT")
        except Exception as e:
            # A ROLLBACK that fails too escapes to `_run`: the connection can no longer be trusted.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for name in touched:
                self._cache.pop(name, None)
            self.head = head_before
            error = OperationalError(f"embedded store write failed: {e}")
            error.__cause__ = e
            self._resolve_later([(fut, error) for _, fut in group], None, frozenset())
            self._group_recorded = []
            return
        # Committed: the group's answers are due whatever fails from here on.
        self._last_time_us = now_us
        self.stats.commits += 1
        self.stats.fsync_groups += 1
        self.stats.appends += self._group_appends
        self.stats.events += self._group_events
        self.stats.grouped_requests += len(group)
        committed, self._group_recorded = self._group_recorded, []
        try:
            failpoints.hit("writer.after_commit")
            self._maybe_checkpoint(self._group_bytes)
        except sqlite3.Error as e:
            # SQLite refused housekeeping after a durable commit (a WAL checkpoint: SQLITE_FULL, IOERR,
            # BUSY). The writer's state still matches the database, so it keeps serving rather than
            # failing: the checkpoint is retried after the next commit, and while the disk stays full the
            # commits themselves fail, each group answered with its own OperationalError.
            self.stats.after_commit_errors += 1
            log.warning("wal_checkpoint_failed", error=str(e), wal_bytes=self._wal_pending)
        finally:
            self._resolve_later(
                results,
                self.head if self.head != head_before else None,
                frozenset(touched),
                self.stats.commits,
                committed,
            )

    def _resolve_later(
        self,
        results: list[tuple[asyncio.Future[Any], Any]],
        new_head: int | None,
        streams: frozenset[str],
        commit_seq: int | None = None,
        committed: list[RecordedEvent] | None = None,
    ) -> None:
        def resolve() -> None:
            if commit_seq is not None:
                # Counted on the loop, compared with what the writer thread has committed.
                if commit_seq > self.stats.commits:
                    self.stats.ack_ahead_of_commit += 1
                self.stats.acked_commit = commit_seq
                self.stats.acked_groups += 1
            try:
                if new_head is not None:
                    self._publish(new_head, streams, committed or [])
            finally:  # a subscriber's failure must not leave the appenders waiting
                for fut, value in results:
                    if fut.done():
                        continue
                    if isinstance(value, BaseException):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            self._loop.call_soon_threadsafe(resolve)

    def _maybe_checkpoint(self, written: int) -> None:
        # The WAL file does not shrink when SQLite restarts it from the top, so its size on disk says
        # nothing about what awaits a checkpoint. Count what we wrote instead, and let SQLite tell us after
        # each checkpoint how many frames are still pending (readers can hold some back).
        self._wal_pending += written
        self.stats.wal_bytes = self._wal_pending
        if self._wal_pending <= self._wal_limit:
            return
        # Raises on failure with `_wal_pending` still above the limit: the next commit tries again.
        busy, frames, done = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.stats.wal_checkpoints += 1
        self._wal_pending = max(0, frames - done) * self._page_size if busy == 0 else self._wal_pending // 2
        self.stats.wal_bytes = self._wal_pending

    # --- deciding one request -------------------------------------------------------------------------
    def _stream(self, name: str) -> _Stream | None:
        if name in self._touched:
            return self._touched[name]
        cached = self._cache.get(name)
        if cached is not None:
            self._cache.move_to_end(name)
            return cached
        row = self._conn.execute(
            "SELECT id, last_revision, deleted, meta_revision FROM streams WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        stream = _Stream(row[0], row[1], bool(row[2]), row[3])
        self._remember(name, stream)
        return stream

    def _remember(self, name: str, stream: _Stream) -> None:
        self._cache[name] = stream
        self._cache.move_to_end(name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _touch(self, name: str, stream: _Stream) -> None:
        self._touched[name] = stream
        self._remember(name, stream)

    def _apply(self, request: Request, rows: list[tuple[Any, ...]], now_us: int) -> Any:
        match request:
            case _Append():
                return self._append(request, rows, now_us)
            case _SetMetadata():
                return self._set_metadata(request, rows)
            case _Tombstone():
                return self._tombstone(request, rows)
            case _Call():
                self._flush(rows)
                self._conn.execute("SAVEPOINT call")
                try:
                    result = request.fn(self._conn)
                except Exception as e:
                    self._conn.execute("ROLLBACK TO call")
                    self._conn.execute("RELEASE call")
                    raise OperationalError(f"embedded store write failed: {e}") from e
                self._conn.execute("RELEASE call")
                return result

    def _append(self, req: _Append, rows: list[tuple[Any, ...]], now_us: int) -> AppendResult:
        stream = self._stream(req.stream)
        if stream is not None and stream.deleted:
            raise StreamDeleted(req.stream)
        current = stream.last_revision if stream is not None else -1
        actual = current if current >= 0 else None
        expected = req.expected
        if isinstance(expected, int) or expected is StreamState.NO_STREAM:
            exact = -1 if expected is StreamState.NO_STREAM else int(expected)
            if current != exact:
                if current > exact and req.events:
                    done = self._idempotent(req, stream, rows, exact + 1)
                    if done is not None:
                        return done
                raise WrongExpectedRevision(req.stream, expected, actual)
        else:
            if expected is StreamState.EXISTS and current < 0:
                raise WrongExpectedRevision(req.stream, expected, actual)
            if req.events and stream is not None and current >= 0:
                done = self._idempotent_anywhere(req, stream, rows, current)
                if done is not None:
                    return done
        if not req.events:
            return AppendResult(Position(self.head), actual)
        if stream is None:
            stream = _Stream(None, -1, False, None)
        first_revision = stream.last_revision + 1
        for i, event in enumerate(req.events):
            self.head += 1
            # Handed to in-process subscribers after the commit, so they need not read it back.
            self._group_recorded.append(
                RecordedEvent(
                    event.id,
                    event.type,
                    event.data,
                    event.metadata,
                    req.stream,
                    first_revision + i,
                    Position(self.head),
                    self._group_time,
                    event.content_type,
                )
            )
            rows.append(
                (
                    self.head,
                    req.stream,
                    first_revision + i,
                    event.id.bytes,
                    event.type,
                    event.data,
                    event.metadata,
                    None if event.content_type == _JSON else event.content_type,
                    now_us,
                )
            )
        stream.last_revision = first_revision + len(req.events) - 1
        self._touch(req.stream, stream)
        self._group_appends += 1
        self._group_events += len(req.events)
        # WAL growth estimate: payload plus per-row and index overhead.
        self._group_bytes += sum(e.size for e in req.events) + 64 * len(req.events)
        return AppendResult(Position(self.head), stream.last_revision)

    def _existing_ids(
        self, stream: _Stream | None, rows: list[tuple[Any, ...]], first: int, count: int
    ) -> list[tuple[int, bytes]]:
        """(position, id) of revisions ``first .. first+count-1``, including this group's rows."""
        self._flush(rows)
        if stream is None or stream.id is None:
            return []
        return [
            (r[0], r[1])
            for r in self._conn.execute(
                "SELECT position, id FROM events WHERE stream_id = ? AND revision >= ? AND revision < ?"
                " ORDER BY revision",
                (stream.id, first, first + count),
            )
        ]

    def _idempotent(
        self, req: _Append, stream: _Stream | None, rows: list[tuple[Any, ...]], first: int
    ) -> AppendResult | None:
        existing = self._existing_ids(stream, rows, first, len(req.events))
        if not existing or existing[0][1] != req.events[0].id.bytes:
            return None
        if len(existing) == len(req.events) and all(
            e[1] == n.id.bytes for e, n in zip(existing, req.events, strict=True)
        ):
            return AppendResult(Position(existing[-1][0]), first + len(req.events) - 1)
        # The first event matches but the rest does not: a partial overlap is a conflict.
        raise WrongExpectedRevision(req.stream, req.expected, stream.last_revision if stream else None)

    def _idempotent_anywhere(
        self, req: _Append, stream: _Stream, rows: list[tuple[Any, ...]], current: int
    ) -> AppendResult | None:
        self._flush(rows)
        found = self._conn.execute(
            "SELECT revision FROM events WHERE stream_id = ? AND revision > ? AND id = ?",
            (stream.id, current - _IDEMPOTENCY_WINDOW, req.events[0].id.bytes),
        ).fetchone()
        if found is None:
            return None
        return self._idempotent(req, stream, rows, found[0])

    def _flush(self, rows: list[tuple[Any, ...]]) -> None:
        """Write buffered event rows (creating stream rows first) and the streams' new revisions."""
        if not rows:
            return
        ids: dict[str, int] = {}
        last: dict[int, int] = {}
        for row in rows:
            name = row[1]
            if name not in ids:
                stream = self._touched[name]
                if stream.id is None:
                    cur = self._conn.execute(
                        "INSERT INTO streams (name, last_revision) VALUES (?, -1)", (name,)
                    )
                    assert cur.lastrowid is not None
                    stream.id = cur.lastrowid
                ids[name] = stream.id
            last[ids[name]] = row[2]
        self._conn.executemany(
            "INSERT INTO events (position, stream_id, revision, id, type, data, metadata,"
            " content_type, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r[0], ids[r[1]], *r[2:]) for r in rows],
        )
        self._conn.executemany(
            "UPDATE streams SET last_revision = ? WHERE id = ?", [(rev, sid) for sid, rev in last.items()]
        )
        rows.clear()

    def _set_metadata(self, req: _SetMetadata, rows: list[tuple[Any, ...]]) -> None:
        self._flush(rows)
        stream = self._stream(req.stream)
        if stream is not None and stream.deleted:
            raise StreamDeleted(req.stream)
        current = stream.meta_revision if stream is not None else None
        _check_expected(req.stream, req.expected, current)
        new_revision = 0 if current is None else current + 1
        body = json.dumps(dict(req.values), separators=(",", ":"), sort_keys=True).encode()
        if stream is None or stream.id is None:
            cur = self._conn.execute(
                "INSERT INTO streams (name, last_revision, meta, meta_revision) VALUES (?, -1, ?, ?)",
                (req.stream, body, new_revision),
            )
            assert cur.lastrowid is not None
            stream = _Stream(cur.lastrowid, -1, False, new_revision)
        else:
            self._conn.execute(
                "UPDATE streams SET meta = ?, meta_revision = ? WHERE id = ?",
                (body, new_revision, stream.id),
            )
            stream.meta_revision = new_revision
        self._touch(req.stream, stream)

    def _tombstone(self, req: _Tombstone, rows: list[tuple[Any, ...]]) -> None:
        self._flush(rows)
        stream = self._stream(req.stream)
        if stream is not None and stream.deleted:
            raise StreamDeleted(req.stream)
        current = stream.last_revision if stream is not None and stream.last_revision >= 0 else None
        _check_expected(req.stream, req.expected, current)
        if stream is None or stream.id is None:
            cur = self._conn.execute(
                "INSERT INTO streams (name, last_revision, deleted) VALUES (?, -1, 1)", (req.stream,)
            )
            assert cur.lastrowid is not None
            stream = _Stream(cur.lastrowid, -1, True, None)
        else:
            self._conn.execute("UPDATE streams SET deleted = 1 WHERE id = ?", (stream.id,))
            stream.deleted = True
        self._touch(req.stream, stream)


def _check_expected(stream: str, expected: Expected, current: int | None) -> None:
    ok = (
        expected is StreamState.ANY
        or (expected is StreamState.NO_STREAM and current is None)
        or (expected is StreamState.EXISTS and current is not None)
        or (isinstance(expected, int) and expected == current)
    )
    if not ok:
        raise WrongExpectedRevision(stream, expected, current)
