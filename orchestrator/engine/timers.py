"""Durable timers: a derived index plus a firer.

The truth about timers is in the saga streams (events arm timers; ``TimerFired`` and later events clear
them). Each engine process derives its own small SQLite file, ``timers.db``, from ``$all``: the pending
timers and the ``$all`` position they reflect, written in one transaction, so the index can always be
rebuilt and never disagrees with its position. The firer keeps only the next window of timers in a heap
and hands each due saga straight to a local actor, which appends ``TimerFired`` only if the timer is
still pending in the saga's folded state — so firing twice, or from several processes, is harmless.
"""

from __future__ import annotations

import asyncio
import heapq
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.eventstore.types import Position

_SCHEMA = """
CREATE TABLE IF NOT EXISTS timers (
    timer_id TEXT PRIMARY KEY,
    stream   TEXT NOT NULL,
    due_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS timers_by_due ON timers (due_at);
CREATE TABLE IF NOT EXISTS position (id INTEGER PRIMARY KEY CHECK (id = 0), commit_position INTEGER);
"""


@dataclass(frozen=True, slots=True)
class TimerChange:
    """Arm (``due_at`` set, epoch seconds) or clear (``due_at`` None) one timer of one saga stream."""

    timer_id: str
    stream: str
    due_at: float | None


@dataclass(frozen=True, slots=True, order=True)
class DueTimer:
    due_at: float
    timer_id: str
    stream: str


class TimerIndex:
    """The per-process ``timers.db``. Blocking calls; they are small and run on the caller's thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # The index is derived: after a crash it resumes from its stored position, so NORMAL is enough.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def position(self) -> Position | None:
        row = self._conn.execute("SELECT commit_position FROM position WHERE id = 0").fetchone()
        return None if row is None or row[0] is None else Position(row[0])

    def apply(
        self, changes: Iterable[TimerChange], position: Position, reset_streams: Iterable[str] = ()
    ) -> None:
        """Forget every timer of ``reset_streams``, apply ``changes`` and record ``position``, in one
        transaction."""
        # Each change is absolute (armed at a time, or cleared), so the last one per timer wins; that lets
        # the batch go in as two executemany calls instead of a statement per change.
        final: dict[str, TimerChange] = {}
        for change in changes:
            final[change.timer_id] = change
        cleared = [(c.timer_id,) for c in final.values() if c.due_at is None]
        armed = [(c.timer_id, c.stream, c.due_at) for c in final.values() if c.due_at is not None]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM timers WHERE stream = ?", [(s,) for s in reset_streams])
            conn.executemany("DELETE FROM timers WHERE timer_id = ?", cleared)
            conn.executemany(
                "INSERT OR REPLACE INTO timers (timer_id, stream, due_at) VALUES (?, ?, ?)", armed
            )
            conn.execute(
                "INSERT OR REPLACE INTO position (id, commit_position) VALUES (0, ?)", (position.commit,)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def due_before(self, instant: float, limit: int = 10_000) -> list[DueTimer]:
        rows = self._conn.execute(
            "SELECT due_at, timer_id, stream FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (instant, limit),
        ).fetchall()
        return [DueTimer(r[0], r[1], r[2]) for r in rows]

    def pending(self, timer_id: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM timers WHERE timer_id = ?", (timer_id,)).fetchone()
        return row is not None

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM timers").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


OnDue = Callable[[DueTimer], Awaitable[None]]


class TimerFirer:
    """Fires due timers from the index, holding only the next ``window`` seconds of them in memory."""

    def __init__(
        self,
        index: TimerIndex,
        on_due: OnDue,
        *,
        window: float = 60.0,
        refire_after: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = index
        self._on_due = on_due
        self._window = window
        self._refire_after = refire_after
        self._clock = clock
        self._heap: list[DueTimer] = []
        self._horizon = 0.0  # everything due before this is in the heap (or fired)
        #: timer id -> when it was last handed out; a timer still pending later is handed out again
        self._fired: dict[str, float] = {}
        self._wake = asyncio.Event()
        self.fired_total = 0

    def changed(self, changes: Iterable[TimerChange]) -> None:
        """New or cleared timers just applied to the index (the heap may need them)."""
        for change in changes:
            if change.due_at is None:
                self._fired.pop(change.timer_id, None)
            elif change.due_at <= self._horizon:
                heapq.heappush(self._heap, DueTimer(change.due_at, change.timer_id, change.stream))
                self._wake.set()

    def _reload(self, now: float) -> None:
        self._horizon = now + self._window
        self._heap = self._index.due_before(self._horizon)
        heapq.heapify(self._heap)

    async def run(self) -> None:
        self._reload(self._clock())
        while True:
            now = self._clock()
            if now >= self._horizon - self._window / 2:
                self._reload(now)
            while self._heap and self._heap[0].due_at <= now:
                timer = heapq.heappop(self._heap)
                last = self._fired.get(timer.timer_id)
                if last is not None and now - last < self._refire_after:
                    continue
                if not self._index.pending(timer.timer_id):
                    continue  # cleared since it was loaded
                self._fired[timer.timer_id] = now
                # Until the saga's own events clear it, look at it again after `refire_after`.
                heapq.heappush(self._heap, DueTimer(now + self._refire_after, timer.timer_id, timer.stream))
                self.fired_total += 1
                await self._on_due(timer)
            delay = (self._heap[0].due_at - now) if self._heap else self._window / 2
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, min(delay, self._window / 2))):
                    await self._wake.wait()
            except TimeoutError:
                pass
