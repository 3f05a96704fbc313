"""SQLite schema and connection settings of the embedded store (the benchmark's raw bound uses the same)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.eventstore.errors import OperationalError

DB_FILE = "events.db"

# `events.position` is assigned by the single writer (max + 1) and rows are never deleted (a tombstone
# marks the stream), so committed positions strictly increase and are never reused.
SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    last_revision  INTEGER NOT NULL,
    deleted        INTEGER NOT NULL DEFAULT 0,
    meta           BLOB,
    meta_revision  INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    position      INTEGER PRIMARY KEY,
    stream_id     INTEGER NOT NULL,
    revision      INTEGER NOT NULL,
    id            BLOB    NOT NULL,
    type          TEXT    NOT NULL,
    data          BLOB    NOT NULL,
    metadata      BLOB    NOT NULL,
    content_type  TEXT,
    recorded_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_id, revision);
CREATE TABLE IF NOT EXISTS ps_groups (
    name        TEXT PRIMARY KEY,
    filter      TEXT NOT NULL,
    settings    TEXT NOT NULL,
    start_after INTEGER,
    checkpoint  INTEGER
);
CREATE TABLE IF NOT EXISTS ps_parked (
    grp       TEXT    NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (grp, position)
) WITHOUT ROWID;
"""

#: FULL: a commit in WAL mode is fsynced before it returns, so an acknowledged append survives power loss.
SYNCHRONOUS_FULL = 2

WRITER_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    # The writer checkpoints the WAL itself above a size limit (see writer.py), not every 1000 pages.
    "PRAGMA wal_autocheckpoint=0",
    # When SQLite restarts the WAL after a checkpoint it truncates the file to this size.
    "PRAGMA journal_size_limit=16777216",
    "PRAGMA temp_store=MEMORY",
    # Bounded page caches (KiB): the OS page cache holds the file anyway; these only keep hot pages
    # (the tail of `events`, the stream index) in-process without growing RSS with the database.
    "PRAGMA cache_size=-16384",
    "PRAGMA busy_timeout=5000",
)

READER_PRAGMAS = (
    "PRAGMA query_only=1",
    "PRAGMA cache_size=-8192",
    "PRAGMA busy_timeout=5000",
)


def connect_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in WRITER_PRAGMAS:
        conn.execute(pragma)
    assert_durable(conn)
    conn.executescript(SCHEMA)
    return conn


def connect_reader(path: Path, *, read_only_file: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if read_only_file else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    for pragma in READER_PRAGMAS:
        conn.execute(pragma)
    return conn


def assert_durable(conn: sqlite3.Connection) -> None:
    """Refuse to run unless commits are durable: WAL with synchronous=FULL."""
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    if str(mode).lower() != "wal" or sync != SYNCHRONOUS_FULL:
        raise OperationalError(
            f"embedded store needs journal_mode=wal and synchronous=FULL, got {mode} and {sync}"
        )
