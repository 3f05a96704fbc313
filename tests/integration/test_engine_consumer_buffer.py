"""The engine connects to its group with ``max_in_flight`` as its consumer's buffer size, so the store never
has more deliveries in flight to one process than its actor slots can take."""

from __future__ import annotations

from pathlib import Path

from orchestrator.engine.engine import Engine
from orchestrator.engine.inprocess import InProcessExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.settings import EngineSettings
from tests.contract.support import eventually


async def test_the_engine_asks_for_max_in_flight_as_its_buffer_size(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path / "store")
    engine = Engine(
        store,
        ExecutorRouter(local=InProcessExecutor()),
        settings=EngineSettings(max_in_flight=7),
        data_dir=tmp_path,
    )
    try:
        await engine.start()
        group = store.persistent.groups[engine.group]
        await eventually(lambda: len(group.consumers) == 1, what="the engine's consumer")
        assert group.consumers[0].buffer_size == 7
    finally:
        await engine.stop(grace=0)
        await store.close()
