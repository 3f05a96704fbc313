"""Durable timers: a derived index plus a firer.

The truth about timers is in the saga streams (events arm timers; ``TimerFired`` and later events clear
them). Each engine process derives its own small SQLite file, ``timers.db``, from ``$all``: the pending
timers and the ``$all`` position they reflect, written in one transaction, so the index can always be
rebuilt and never disagrees with its position. The firer keeps only the next window of timers in a heap
and hands each due saga straight to a local actor, which appends ``TimerFired`` only if the timer is
still pending in the saga's folded state — so firing twice, or from several processes, is harmless.

A timer that stays pending after it was handed out (a saga this node cannot read, a store that keeps
refusing the saga's appends) must not hold its place: each row carries its own next fire time
(``fire_at``), pushed out with a per-timer exponential backoff every time it is fired, and the firer
orders and limits by that. So the due timers that stay pending rotate to the back, every other due timer
gets its turn however many of them there are, and the firer's memory is bounded by its window.
"""

from __future__ import annotations

import asyncio
import heapq
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.eventstore.types import Position

#: Bumped whenever the layout changes; a file written by another layout is dropped and rebuilt from $all.
SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE timers (
        timer_id TEXT PRIMARY KEY,
        stream   TEXT NOT NULL,
        due_at   REAL NOT NULL,
        fire_at  REAL NOT NULL,              -- next hand-out: due_at when armed, pushed out when fired
        attempts INTEGER NOT NULL DEFAULT 0  -- hand-outs since it was armed (drives the backoff)
    )""",
    "CREATE INDEX timers_by_fire ON timers (fire_at, timer_id)",
    "CREATE TABLE position (id INTEGER PRIMARY KEY CHECK (id = 0), commit_position INTEGER)",
)


@dataclass(frozen=True, slots=True)
class TimerChange:
    """Arm (``due_at`` set, epoch seconds) or clear (``due_at`` None) one timer of one saga stream."""

    timer_id: str
    stream: str
    due_at: float | None


@dataclass(frozen=True, slots=True, order=True)
class DueTimer:
    """What the firer hands out: ``due_at`` is when the timer fell due, whichever hand-out this is;
    ``handed_out`` counts this node's hand-outs of it so far, this one included (the saga's own events
    did not clear it in between)."""

    due_at: float
    timer_id: str
    stream: str
    handed_out: int = 0


@dataclass(frozen=True, slots=True, order=True)
class ScheduledTimer:
    """One row of the index as the firer holds it, ordered by its next fire time.

    ``fire_at`` and ``attempts`` also identify the row's version: a firing applies only to a row that
    still has them, so a copy made stale by a clear, a re-arm or an earlier firing is dropped."""

    fire_at: float
    timer_id: str
    stream: str = field(compare=False)
    due_at: float = field(compare=False)
    attempts: int = field(compare=False, default=0)

    @property
    def timer(self) -> DueTimer:
        return DueTimer(self.due_at, self.timer_id, self.stream, self.attempts)


class TimerIndex:
    """The per-process ``timers.db``. Blocking calls; they are small and run on the caller's thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # The index is derived: after a crash it resumes from its stored position, so NORMAL is enough.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        """Create the layout, or drop one written by another version: with no position the projection
        replays ``$all`` from the start and derives the index again."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute("DROP TABLE IF EXISTS timers")  # its indexes go with it
                conn.execute("DROP TABLE IF EXISTS position")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def position(self) -> Position | None:
        row = self._conn.execute("SELECT commit_position FROM position WHERE id = 0").fetchone()
        return None if row is None or row[0] is None else Position(row[0])

    def apply(
        self, changes: Iterable[TimerChange], position: Position, reset_streams: Iterable[str] = ()
    ) -> None:
        """Forget every timer of ``reset_streams``, apply ``changes`` and record ``position``, in one
        transaction. Arming a timer (again) starts its fire schedule afresh at its due time."""
        # Each change is absolute (armed at a time, or cleared), so the last one per timer wins; that lets
        # the batch go in as two executemany calls instead of a statement per change.
        final: dict[str, TimerChange] = {}
        for change in changes:
            final[change.timer_id] = change
        cleared = [(c.timer_id,) for c in final.values() if c.due_at is None]
        armed = [(c.timer_id, c.stream, c.due_at, c.due_at) for c in final.values() if c.due_at is not None]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM timers WHERE stream = ?", [(s,) for s in reset_streams])
            conn.executemany("DELETE FROM timers WHERE timer_id = ?", cleared)
            conn.executemany(
                "INSERT OR REPLACE INTO timers (timer_id, stream, due_at, fire_at, attempts)"
                " VALUES (?, ?, ?, ?, 0)",
                armed,
            )
            conn.execute(
                "INSERT OR REPLACE INTO position (id, commit_position) VALUES (0, ?)", (position.commit,)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def next_to_fire(self, instant: float, limit: int) -> list[ScheduledTimer]:
        """The first ``limit`` timers to hand out at or before ``instant``, by next fire time."""
        rows = self._conn.execute(
            "SELECT fire_at, timer_id, stream, due_at, attempts FROM timers WHERE fire_at <= ?"
            " ORDER BY fire_at, timer_id LIMIT ?",
            (instant, limit),
        ).fetchall()
        return [ScheduledTimer(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def mark_fired(self, fired: Sequence[tuple[ScheduledTimer, float]]) -> list[ScheduledTimer]:
        """Move each (timer, next fire time) that is still pending and unchanged to its next fire time,
        in one transaction; return the moved timers as they are now. The others (cleared, re-armed or
        already moved) are left alone and must not be handed out."""
        moved: list[ScheduledTimer] = []
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for timer, fire_at in fired:
                cursor = conn.execute(
                    "UPDATE timers SET fire_at = ?, attempts = attempts + 1"
                    " WHERE timer_id = ? AND fire_at = ? AND attempts = ?",
                    (fire_at, timer.timer_id, timer.fire_at, timer.attempts),
                )
                if cursor.rowcount == 1:
                    moved.append(
                        ScheduledTimer(
                            fire_at, timer.timer_id, timer.stream, timer.due_at, timer.attempts + 1
                        )
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return moved

    def pending(self, timer_id: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM timers WHERE timer_id = ?", (timer_id,)).fetchone()
        return row is not None

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM timers").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


OnDue = Callable[[DueTimer], Awaitable[None]]


class TimerFirer:
    """Fires due timers from the index, holding at most ``limit`` of the next ``window`` seconds of them
    in memory (plus the ones armed since the last load, up to as many again).

    A timer still pending after it was handed out is handed out again ``refire_after`` seconds later, then
    after twice that, and so on up to ``refire_cap``; the schedule lives in the index."""

    def __init__(
        self,
        index: TimerIndex,
        on_due: OnDue,
        *,
        window: float = 60.0,
        limit: int = 10_000,
        refire_after: float = 5.0,
        refire_cap: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._index = index
        self._on_due = on_due
        self._window = window
        self._limit = limit
        self._refire_after = refire_after
        self._refire_cap = refire_cap
        self._clock = clock
        self._heap: list[ScheduledTimer] = []
        #: every pending timer whose fire time is at or before this is in the heap (maybe stale copies too)
        self._horizon = float("-inf")
        self._reload_at = float("-inf")
        self._wake = asyncio.Event()
        self.fired_total = 0

    @property
    def held(self) -> int:
        """Timers held in memory; bounded by the window and ``limit``, never by history."""
        return len(self._heap)

    def changed(self, changes: Iterable[TimerChange]) -> None:
        """New or cleared timers just applied to the index (the heap may need them).

        A cleared timer's copy in the heap is dropped when it comes up (its row is gone)."""
        for change in changes:
            if change.due_at is None or change.due_at > self._horizon:
                continue
            if len(self._heap) >= 2 * self._limit:
                # A burst (the projection catching up, say): load the window afresh, from the index.
                self._reload_at = float("-inf")
            else:
                heapq.heappush(
                    self._heap, ScheduledTimer(change.due_at, change.timer_id, change.stream, change.due_at)
                )
            self._wake.set()

    def _reload(self, now: float) -> None:
        loaded = self._index.next_to_fire(now + self._window, self._limit)
        if len(loaded) < self._limit:
            self._horizon = now + self._window
            self._reload_at = now + self._window / 2
        else:
            # Cut short by the limit: beyond the last timer loaded the heap knows nothing, so load again
            # once that time comes (the due ones loaded now will have moved back by then).
            self._horizon = loaded[-1].fire_at
            self._reload_at = min(self._horizon, now + self._window / 2)
        self._heap = loaded  # sorted by fire time, so already a heap

    def _backoff(self, attempts: int) -> float:
        return float(min(self._refire_cap, self._refire_after * 2 ** min(attempts, 32)))

    async def fire_due(self) -> float:
        """One round: hand out every timer whose fire time has come; return the seconds until the next
        round is needed."""
        now = self._clock()
        if now >= self._reload_at:
            self._reload(now)
        due: list[tuple[ScheduledTimer, float]] = []
        while self._heap and self._heap[0].fire_at <= now:
            timer = heapq.heappop(self._heap)
            due.append((timer, now + self._backoff(timer.attempts)))
        # One transaction for the round; the copies that were stale are dropped here.
        fired = self._index.mark_fired(due) if due else []
        for timer in fired:
            # Until the saga's own events clear it, it comes up again later.
            if timer.fire_at <= self._horizon:
                heapq.heappush(self._heap, timer)
        for timer in fired:
            self.fired_total += 1
            await self._on_due(timer.timer)
        next_at = min(self._heap[0].fire_at, self._reload_at) if self._heap else self._reload_at
        return max(0.0, min(next_at - self._clock(), self._window / 2))

    async def run(self) -> None:
        # A restart after a failed round may have lost heap entries: start from the index.
        self._reload_at = float("-inf")
        while True:
            delay = await self.fire_due()
            self._wake.clear()
            if delay <= 0:
                await asyncio.sleep(0)  # let the others run between rounds
                continue
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
