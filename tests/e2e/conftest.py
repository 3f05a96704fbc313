from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import TracerProvider

from orchestrator.app.commands import SagaCommands
from orchestrator.domain.state import SagaState
from orchestrator.domain.timing import Tuning
from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore import RecordedEvent
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.port import EventStore
from orchestrator.observability.tracing import SagaTracer
from orchestrator.records.streams import saga_stream
from orchestrator.settings import EngineSettings, ServiceConfig
from tests.e2e.participants import Participants
from tests.seed import seed_definition

SERVICES = ("order-service", "inventory-service", "payment-service")
#: the engine's tuning for the settings the harness uses (kick 500 ms, slack 300 + 200 ms acquire cap)
TUNING = Tuning(kick_ms=500, attempt_slack_ms=500)
WAITING = {"SagaCompleted", "SagaCompensated", "SagaDeadLettered", "SagaSuspended"}


@dataclass
class Harness:
    store: EmbeddedEventStore
    participants: Participants
    commands: SagaCommands
    engines: list[Engine] = field(default_factory=list)
    routers: list[ExecutorRouter] = field(default_factory=list)
    data_dir: Path = Path()
    #: tracing on for the engines started from now on, and for the commands (see :meth:`trace`)
    tracer_provider: TracerProvider | None = None

    def trace(self, provider: TracerProvider) -> None:
        """Trace what the commands and the engines started after this do, on ``provider``."""
        self.tracer_provider = provider
        self.commands = SagaCommands(self.store, TUNING, tracer=SagaTracer(provider))

    def services(self) -> dict[str, ServiceConfig]:
        return {
            s: ServiceConfig(base_url=self.participants.url(s), pool_acquire_timeout_ms=200) for s in SERVICES
        }

    async def engine(self, store: EventStore | None = None, **settings: Any) -> Engine:
        """An engine on the harness's store, or on ``store`` (a fault-injecting wrapper around it)."""
        provider = self.tracer_provider
        router = ExecutorRouter(http=HttpExecutor(self.services(), tracer_provider=provider))
        engine = Engine(
            store or self.store,
            router,
            settings=EngineSettings(**{"kick_ms": 500, "deadline_slack_ms": 300, **settings}),
            data_dir=self.data_dir / f"engine-{len(self.engines)}",
            acquire_caps_ms={s: 200 for s in SERVICES},
            tracer=SagaTracer(provider),
        )
        await engine.start()
        self.engines.append(engine)
        self.routers.append(router)
        return engine

    async def start(self, context: dict[str, Any] | None = None, **definition: Any) -> str:
        await self.commands.register_definition("acme", "test", seed_definition(**definition))
        started = await self.commands.start(
            "acme", "test", name="order-processing", version=None, context=context or {"order_id": "o-1"}
        )
        return started.saga_id

    async def history(self, saga_id: str) -> list[RecordedEvent]:
        return list(await self.store.read_stream(saga_stream(saga_id)))

    async def wait_for(self, saga_id: str, types: set[str] = WAITING, within: float = 20.0) -> SagaState:
        """Follow the saga's stream until an event of ``types`` arrives; return the folded state."""
        sub = await self.store.subscribe_stream(saga_stream(saga_id))

        async def until() -> None:
            async for item in sub:
                if isinstance(item, RecordedEvent) and item.type in types:
                    return

        try:
            await asyncio.wait_for(until(), within)
        finally:
            await sub.close()
        state, _ = await self.commands.load("acme", saga_id)
        return state


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    participants = Participants()
    await participants.start()
    store = await EmbeddedEventStore.open(tmp_path / "store")
    h = Harness(store, participants, SagaCommands(store, TUNING), data_dir=tmp_path)
    try:
        yield h
    finally:
        for engine in h.engines:
            await engine.stop(grace=2)
        for router in h.routers:
            await router.close()
        await store.close()
        await participants.close()
