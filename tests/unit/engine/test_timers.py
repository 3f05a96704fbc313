"""The timer index (derived, position in the same transaction, rebuilt when its layout changes) and the
firer (every due timer gets its turn, a timer that stays pending backs off, memory bounded by the window).

The firer's tests drive ``TimerFirer.fire_due`` (one round) with an injected clock, jumping the clock by
the delay each round returns: no real waiting."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.engine.timers import SCHEMA_VERSION, DueTimer, TimerChange, TimerFirer, TimerIndex
from orchestrator.eventstore import Position


def test_index_applies_changes_and_position_together(tmp_path: Path) -> None:
    index = TimerIndex(tmp_path / "timers.db")
    assert index.position() is None
    index.apply([TimerChange("t1", "saga-1", 10.0), TimerChange("t2", "saga-2", 20.0)], Position(5))
    index.apply([TimerChange("t1", "saga-1", None)], Position(9))
    assert index.position() == Position(9)
    assert [t.timer_id for t in index.next_to_fire(100.0, limit=10)] == ["t2"]
    index.close()
    reopened = TimerIndex(tmp_path / "timers.db")
    assert reopened.position() == Position(9)
    assert reopened.count() == 1
    reopened.close()


def test_a_failed_apply_changes_nothing(tmp_path: Path) -> None:
    index = TimerIndex(tmp_path / "timers.db")
    index.apply([TimerChange("t1", "saga-1", 10.0)], Position(1))

    class Boom(Exception):
        pass

    def changes() -> Iterator[TimerChange]:
        yield TimerChange("t2", "saga-2", 11.0)
        raise Boom

    with pytest.raises(Boom):
        index.apply(changes(), Position(2))
    assert index.position() == Position(1)
    assert [t.timer_id for t in index.next_to_fire(100.0, limit=10)] == ["t1"]
    index.close()


async def test_firer_fires_due_timers_in_order_and_refires_until_cleared(tmp_path: Path) -> None:
    now = [1000.0]
    index = TimerIndex(tmp_path / "timers.db")
    index.apply([TimerChange("late", "saga-2", 1000.5), TimerChange("early", "saga-1", 999.0)], Position(1))
    fired: list[str] = []
    got = asyncio.Event()

    async def on_due(timer: DueTimer) -> None:
        fired.append(timer.timer_id)
        got.set()

    firer = TimerFirer(index, on_due, window=60, refire_after=5, clock=lambda: now[0])
    task = asyncio.create_task(firer.run())
    await asyncio.wait_for(got.wait(), 5)
    assert fired == ["early"]
    # Clear "early" as its saga's TimerFired would; advance the clock past "late" and the refire delay.
    index.apply([TimerChange("early", "saga-1", None)], Position(2))
    firer.changed([TimerChange("early", "saga-1", None)])
    got.clear()
    now[0] = 1006.0
    firer.changed([TimerChange("new", "saga-3", 1005.0)])
    index.apply([TimerChange("new", "saga-3", 1005.0)], Position(3))
    await asyncio.wait_for(got.wait(), 5)
    while len(fired) < 3:
        got.clear()
        await asyncio.wait_for(got.wait(), 5)
    task.cancel()
    index.close()
    assert fired[0] == "early"
    assert sorted(fired[1:]) == ["late", "new"]


class Recorder:
    """An ``on_due`` that records (timer id, clock time) and never clears anything: every saga it is
    handed stays pending, as one this node cannot read or whose appends keep failing."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.fired: list[tuple[str, float]] = []

    async def __call__(self, timer: DueTimer) -> None:
        self.fired.append((timer.timer_id, self.now[0]))

    def times(self, timer_id: str) -> list[float]:
        return [at for tid, at in self.fired if tid == timer_id]


async def advance(firer: TimerFirer, now: list[float], until: float, max_rounds: int = 10_000) -> None:
    """Run rounds, moving the clock to each next round's time, until the clock passes ``until``."""
    for _ in range(max_rounds):
        if now[0] > until:
            return
        # A round that asks for no delay is followed at once, without moving the clock.
        now[0] += await firer.fire_due()
    raise AssertionError(f"no progress after {max_rounds} rounds (clock at {now[0]}, until {until})")


async def test_due_timers_that_stay_pending_do_not_starve_a_later_one(tmp_path: Path) -> None:
    """Regression: a full window of due timers that stay pending used to keep every later one out."""
    now = [1000.0]
    index = TimerIndex(tmp_path / "timers.db")
    stuck = [TimerChange(f"stuck-{i:03}", f"saga-{i}", 900.0 + i) for i in range(50)]
    index.apply([*stuck, TimerChange("later", "saga-later", 1010.0)], Position(1))
    on_due = Recorder(now)
    firer = TimerFirer(index, on_due, window=60, limit=50, refire_after=5, clock=lambda: now[0])
    await advance(firer, now, until=1030.0)
    index.close()
    assert on_due.times("later"), "the later timer was never handed out"
    assert on_due.times("later")[0] <= 1010.0 + 5
    assert all(on_due.times(c.timer_id) for c in stuck)


async def test_a_timer_that_stays_pending_backs_off_to_the_cap_and_is_gone_once_cleared(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    index = TimerIndex(tmp_path / "timers.db")
    index.apply([TimerChange("t", "saga-1", 1000.0)], Position(1))
    on_due = Recorder(now)
    firer = TimerFirer(
        index, on_due, window=60, limit=100, refire_after=5, refire_cap=60, clock=lambda: now[0]
    )
    await advance(firer, now, until=1000.0 + 5 + 10 + 20 + 40 + 60 + 60 + 60)
    times = on_due.times("t")
    assert [b - a for a, b in itertools.pairwise(times)] == [5, 10, 20, 40, 60, 60, 60]
    # The schedule lives in the index, not in the firer.
    [row] = index.next_to_fire(float("inf"), limit=10)
    assert (row.attempts, row.fire_at, row.due_at) == (8, times[-1] + 60, 1000.0)

    index.apply([TimerChange("t", "saga-1", None)], Position(2))
    firer.changed([TimerChange("t", "saga-1", None)])
    await advance(firer, now, until=now[0] + 300)
    assert len(on_due.times("t")) == len(times)
    assert index.count() == 0
    assert firer.held == 0
    index.close()


async def test_re_arming_a_timer_restarts_its_schedule(tmp_path: Path) -> None:
    now = [1000.0]
    index = TimerIndex(tmp_path / "timers.db")
    index.apply([TimerChange("t", "saga-1", 1000.0)], Position(1))
    on_due = Recorder(now)
    firer = TimerFirer(index, on_due, window=60, limit=100, refire_after=5, clock=lambda: now[0])
    await advance(firer, now, until=1000.0 + 5 + 10 + 20)
    assert len(on_due.times("t")) == 4
    # Re-armed (a new deadline for the same id): due at once, then 5 s again, not 80 s.
    rearm = [TimerChange("t", "saga-1", now[0] + 1)]
    index.apply(rearm, Position(2))
    firer.changed(rearm)
    armed_at = now[0]
    await advance(firer, now, until=armed_at + 1 + 5)
    assert on_due.times("t")[4:] == [armed_at + 1, armed_at + 1 + 5]
    index.close()


async def test_memory_is_bounded_by_the_limit_and_the_window_not_by_history(tmp_path: Path) -> None:
    now = [1000.0]
    limit = 20
    index = TimerIndex(tmp_path / "timers.db")
    stuck = [TimerChange(f"stuck-{i:03}", f"saga-{i}", 900.0 + i / 10) for i in range(300)]
    far = [TimerChange(f"far-{i:03}", f"saga-far-{i}", 1_000_000.0 + i) for i in range(300)]
    index.apply([*stuck, *far], Position(1))
    on_due = Recorder(now)
    firer = TimerFirer(index, on_due, window=60, limit=limit, refire_after=5, clock=lambda: now[0])
    high_water = 0
    burst: list[TimerChange] = []
    for _ in range(2_000):
        if now[0] > 1600.0:
            break
        now[0] += await firer.fire_due()
        high_water = max(high_water, firer.held)
        if now[0] >= 1300.0 and not burst:
            # A burst of new timers inside the window (a projection catching up) is not held whole.
            burst = [TimerChange(f"burst-{i:04}", f"saga-b-{i}", now[0] - 1) for i in range(1_000)]
            index.apply(burst, Position(2))
            firer.changed(burst)
            high_water = max(high_water, firer.held)
    assert burst
    assert high_water <= 2 * limit
    assert all(on_due.times(c.timer_id) for c in [*stuck, *burst]), "a due timer never got its turn"
    assert not any(tid.startswith("far-") for tid, _ in on_due.fired)

    cleared = [TimerChange(c.timer_id, c.stream, None) for c in stuck]
    cleared += [TimerChange(f"burst-{i:04}", f"saga-b-{i}", None) for i in range(1_000)]
    index.apply(cleared, Position(3))
    firer.changed(cleared)
    fired_before = len(on_due.fired)
    await advance(firer, now, until=now[0] + 120)
    assert len(on_due.fired) == fired_before
    assert firer.held == 0  # nothing kept for a cleared timer, nor for one beyond the window
    assert index.count() == len(far)
    index.close()


_OLD_SCHEMA = """
CREATE TABLE timers (timer_id TEXT PRIMARY KEY, stream TEXT NOT NULL, due_at REAL NOT NULL);
CREATE INDEX timers_by_due ON timers (due_at);
CREATE TABLE position (id INTEGER PRIMARY KEY CHECK (id = 0), commit_position INTEGER);
INSERT INTO timers VALUES ('t1', 'saga-1', 10.0), ('t2', 'saga-2', 20.0);
INSERT INTO position VALUES (0, 42);
"""


def test_an_index_in_the_previous_layout_is_dropped_so_it_is_derived_again_from_the_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "timers.db"
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.close()

    index = TimerIndex(path)
    # No position: the projection subscribes to $all from the start and arms every pending timer again.
    assert index.position() is None
    assert index.count() == 0
    index.apply([TimerChange("t2", "saga-2", 20.0)], Position(7))
    index.close()

    reopened = TimerIndex(path)  # the current layout is kept as it is
    assert reopened.position() == Position(7)
    assert [(t.timer_id, t.fire_at, t.attempts) for t in reopened.next_to_fire(100.0, 10)] == [
        ("t2", 20.0, 0)
    ]
    reopened.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
