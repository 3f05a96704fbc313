"""Reads of the embedded store: short transactions on per-thread connections, never blocking the writer.

Each page is one SELECT (its own implicit transaction in WAL mode), so a long catch-up never pins a read
snapshot and never holds the WAL from being checkpointed.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from orchestrator.eventstore.embedded.schema import connect_reader
from orchestrator.eventstore.errors import OperationalError, StoreClosed, StreamDeleted, StreamNotFound
from orchestrator.eventstore.types import EventFilter, Position, RecordedEvent

T = TypeVar("T")

_COLUMNS = "e.position, s.name, e.revision, e.id, e.type, e.data, e.metadata, e.content_type, e.recorded_at"
#: the largest code point, so `name < prefix || MAX` holds for every name that starts with `prefix`
_MAX_CHAR = "\U0010ffff"


def _regexp(pattern: str, value: str) -> bool:
    return re.match(pattern, value) is not None


def to_event(row: Sequence[Any], retry_count: int = 0) -> RecordedEvent:
    # Positional on purpose: this runs once per event on every catch-up, keywords cost ~10% more.
    return RecordedEvent(
        UUID(bytes=row[3]),
        row[4],
        row[5],
        row[6],
        row[1],
        row[2],
        Position(row[0]),
        datetime.fromtimestamp(row[8] / 1_000_000, UTC),
        row[7] or "application/json",
        retry_count,
    )


def filter_sql(flt: EventFilter | None, *, system: bool = False) -> tuple[str, list[Any]]:
    """SQL condition (on aliases e, s) and parameters that select what ``flt`` lets through; with
    ``system``, system events (``$`` streams and types) too, when the rest of ``flt`` selects them."""
    sql = "" if system else " AND substr(s.name, 1, 1) != '$' AND substr(e.type, 1, 1) != '$'"
    params: list[Any] = []
    if flt is not None and flt.stream_prefixes:
        sql += " AND (" + " OR ".join("(s.name >= ? AND s.name < ?)" for _ in flt.stream_prefixes) + ")"
        for prefix in flt.stream_prefixes:
            params += [prefix, prefix + _MAX_CHAR]
    elif flt is not None and flt.event_type_regex is not None:
        sql += " AND regexp(?, e.type)"
        params.append(flt.event_type_regex)
    return sql, params


def selects(flt: EventFilter | None, stream: str, event_type: str, *, system: bool = False) -> bool:
    """What :func:`filter_sql` selects, for an event in memory."""
    if flt is None:
        return system or not (stream.startswith("$") or event_type.startswith("$"))
    if not system:
        return flt.matches(stream, event_type)
    if flt.stream_prefixes:
        return stream.startswith(flt.stream_prefixes)
    if flt.event_type_regex is not None:
        return re.match(flt.event_type_regex, event_type) is not None
    return True


class Reader:
    def __init__(self, db_path: Path, *, read_only_file: bool, threads: int = 2) -> None:
        self._path = db_path
        self._read_only_file = read_only_file
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eventstore-reader")
        self._closed = False
        #: reads served so far (a test uses it to show that idle subscribers do not poll)
        self.calls = 0

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_reader(self._path, read_only_file=self._read_only_file)
            conn.create_function("regexp", 2, _regexp, deterministic=True)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreClosed("event store is closed")
        self.calls += 1

        def call() -> T:
            try:
                return fn(self._conn())
            except sqlite3.Error as e:
                raise OperationalError(f"embedded store read failed: {e}") from e

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # --- queries (run on a reader thread) ----------------------------------------------------------------
    @staticmethod
    def stream_row(conn: sqlite3.Connection, stream: str) -> tuple[int, int, bool] | None:
        row = conn.execute(
            "SELECT id, last_revision, deleted FROM streams WHERE name = ?", (stream,)
        ).fetchone()
        return None if row is None else (row[0], row[1], bool(row[2]))

    @classmethod
    def read_stream(
        cls,
        conn: sqlite3.Connection,
        stream: str,
        from_revision: int,
        backwards: bool,
        limit: int,
        upto_position: int | None = None,
    ) -> list[RecordedEvent]:
        info = cls.stream_row(conn, stream)
        if info is None or (info[1] < 0 and not info[2]):
            raise StreamNotFound(stream)
        if info[2]:
            raise StreamDeleted(stream)
        if backwards:
            start = info[1] if from_revision < 0 else from_revision
            cond, order = "e.revision <= ?", "DESC"
        else:
            start, cond, order = from_revision, "e.revision >= ?", "ASC"
        bound = "" if upto_position is None else f" AND e.position <= {int(upto_position)}"
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events e JOIN streams s ON s.id = e.stream_id"
            f" WHERE e.stream_id = ? AND {cond}{bound} ORDER BY e.revision {order} LIMIT ?",
            (info[0], start, limit),
        ).fetchall()
        return [to_event(r) for r in rows]

    @staticmethod
    def read_all_page(
        conn: sqlite3.Connection,
        after: int,
        upto: int,
        flt: EventFilter | None,
        limit: int,
        system: bool = False,
    ) -> tuple[list[RecordedEvent], int]:
        """Events with ``after < position <= upto`` that pass ``flt`` (at most ``limit``; system events
        too with ``system``), and how far the page scanned: the last row's position when the page is
        full, else ``upto``."""
        cond, params = filter_sql(flt, system=system)
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events e JOIN streams s ON s.id = e.stream_id"
            f" WHERE e.position > ? AND e.position <= ?{cond} ORDER BY e.position LIMIT ?",
            (after, upto, *params, limit),
        ).fetchall()
        scanned = rows[-1][0] if len(rows) == limit else upto
        return [to_event(r) for r in rows], scanned

    @staticmethod
    def head(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT max(position) FROM events").fetchone()
        return int(row[0] or 0)

    @staticmethod
    def events_at(conn: sqlite3.Connection, positions: Sequence[int]) -> list[RecordedEvent]:
        if not positions:
            return []
        marks = ",".join("?" * len(positions))
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events e JOIN streams s ON s.id = e.stream_id"
            f" WHERE e.position IN ({marks}) ORDER BY e.position",
            tuple(positions),
        ).fetchall()
        return [to_event(r) for r in rows]
