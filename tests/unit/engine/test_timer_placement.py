"""Cluster mode's timer placement as the engine applies it: a due timer of a shard this node owns, or of
a shard nobody visibly owns, wakes the saga here; another node's is left to it (counted) until its third
hand-out here, when it is fired anyway (firing is idempotent)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from orchestrator.engine.engine import OWNER_FALLBACK_HAND_OUTS, Engine
from orchestrator.engine.router import ExecutorRouter
from orchestrator.engine.timers import DueTimer
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.settings import EngineSettings

Answer = Literal["mine", "unowned", "theirs"]


class Placement:
    def __init__(self, answer: Answer) -> None:
        self.answer: Answer = answer

    def fires(self, stream: str) -> Answer:
        return self.answer


@pytest.mark.parametrize(
    ("answer", "handed_out", "woken", "left", "for_owner"),
    [
        ("mine", 1, True, 0, 0),
        ("unowned", 1, True, 0, 1),
        ("theirs", 1, False, 1, 0),
        ("theirs", OWNER_FALLBACK_HAND_OUTS - 1, False, 1, 0),
        ("theirs", OWNER_FALLBACK_HAND_OUTS, True, 0, 1),
    ],
)
async def test_a_due_timer_is_fired_by_its_owner_or_by_anyone_when_nobody_visibly_owns_it(
    tmp_path: Path, answer: Answer, handed_out: int, woken: bool, left: int, for_owner: int
) -> None:
    store = await EmbeddedEventStore.open(tmp_path / "store")
    engine = Engine(
        store, ExecutorRouter(), settings=EngineSettings(), data_dir=tmp_path, placement=Placement(answer)
    )
    posted: list[str] = []

    async def post(stream: str, message: object) -> None:
        posted.append(stream)

    engine.post = post  # type: ignore[method-assign]
    try:
        await engine._on_due(DueTimer(1.0, "t-1", "saga-1", handed_out))
    finally:
        await store.close()
    assert posted == (["saga-1"] if woken else [])
    assert engine.metrics.timers_left_to_owner._value.get() == left
    assert engine.metrics.timers_fired_for_owner._value.get() == for_owner
