"""The timer index (derived, position in the same transaction) and the firer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.engine.timers import DueTimer, TimerChange, TimerFirer, TimerIndex
from orchestrator.eventstore import Position


def test_index_applies_changes_and_position_together(tmp_path: Path) -> None:
    index = TimerIndex(tmp_path / "timers.db")
    assert index.position() is None
    index.apply([TimerChange("t1", "saga-1", 10.0), TimerChange("t2", "saga-2", 20.0)], Position(5))
    index.apply([TimerChange("t1", "saga-1", None)], Position(9))
    assert index.position() == Position(9)
    assert [t.timer_id for t in index.due_before(100.0)] == ["t2"]
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
    assert [t.timer_id for t in index.due_before(100.0)] == ["t1"]
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
