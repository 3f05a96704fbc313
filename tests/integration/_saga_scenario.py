"""Real sagas for the read-model tests: the engine against real HTTP participants (the e2e harness), two
tenants, and one definition per behaviour (participants answer per service and action)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.app.commands import SagaCommands
from orchestrator.eventstore.embedded import EmbeddedEventStore
from tests.e2e.conftest import TUNING, Harness, seed_definition
from tests.e2e.participants import Participants

ACME, GLOBEX = "acme", "globex"
T = TypeVar("T")


def definition(name: str, *, charge: str = "charge", release: str = "release-reservation") -> dict[str, Any]:
    d = seed_definition(name=name)
    d["steps"][1]["compensation"] = release
    d["steps"][2]["action"] = charge
    return d


DEFINITIONS = {
    "order-ok": definition("order-ok"),
    "order-rejected": definition("order-rejected", charge="charge-422"),
    "order-suspended": definition("order-suspended", charge="charge-401"),
    "order-dead": definition("order-dead", charge="charge-dead", release="release-422"),
}


@dataclass
class Scenario:
    harness: Harness
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> EmbeddedEventStore:
        return self.harness.store

    @property
    def commands(self) -> SagaCommands:
        return self.harness.commands


@asynccontextmanager
async def scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    """Sagas of every outcome, started (not waited for): 5 completed, 1 compensated, 1 suspended and
    1 dead-lettered in ``acme``; 1 completed in ``globex``."""
    participants = Participants()
    participants.script[("payment-service", "charge-422")] = [422]
    participants.script[("payment-service", "charge-401")] = [401, "ok"]  # fixed before the resume
    participants.script[("payment-service", "charge-dead")] = [422]
    participants.script[("inventory-service", "release-422")] = [422]
    await participants.start()
    store = await EmbeddedEventStore.open(tmp_path / "store")
    harness = Harness(store, participants, SagaCommands(store, TUNING), data_dir=tmp_path)
    s = Scenario(harness)
    try:
        await harness.engine()
        for tenant in (ACME, GLOBEX):
            for d in DEFINITIONS.values():
                await harness.commands.register_definition(tenant, "test", d)
        await harness.commands.register_definition(
            ACME, "test", {**DEFINITIONS["order-ok"], "version": "1.1.0"}
        )
        plan = [(ACME, f"ok-{n}", "order-ok") for n in range(5)] + [
            (ACME, "rejected", "order-rejected"),
            (ACME, "suspended", "order-suspended"),
            (ACME, "dead", "order-dead"),
            (GLOBEX, "ok-g", "order-ok"),
        ]
        for tenant, client_id, name in plan:
            started = await harness.commands.start(
                tenant, "test", name=name, version="1.0.0", context={"order": client_id}, client_id=client_id
            )
            s.ids[client_id] = started.saga_id
        yield s
    finally:
        for engine in harness.engines:
            await engine.stop(grace=2)
        for router in harness.routers:
            await router.close()
        await store.close()
        await participants.close()


async def eventually(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], within: float = 20.0) -> T:
    """Poll ``probe`` until ``ok`` holds (bounded); fail with the last value otherwise."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {within}s"
        await asyncio.sleep(0.02)
