"""The brief's saga run by the real engine against the demo services: each failure switch, set in the start
context alone, leads the saga where the README says it does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from orchestrator.app.commands import SagaCommands
from orchestrator.demo import DemoState, create_demo_app
from orchestrator.demo.services import TASKS
from orchestrator.domain.vocabulary import ManualCommand, SagaStatus
from orchestrator.eventstore.embedded import EmbeddedEventStore
from tests.e2e.conftest import TUNING, Harness, seed_definition

CONTEXT = {"order_id": "order-123", "customer_id": "customer-456", "amount": 99.99}


class DemoServer:
    """The demo app on a loopback port, shaped like the harness's participants. A "slow" call waits on
    ``release`` instead of the clock, so the test decides when the late answer comes."""

    def __init__(self) -> None:
        self.state = DemoState()
        self.release = asyncio.Event()
        self.server = TestServer(create_demo_app(self.state, sleep=self._sleep))

    async def _sleep(self, seconds: float) -> None:
        await self.release.wait()

    def url(self, service: str) -> str:
        return str(self.server.make_url(f"/{service}"))

    def calls(self, saga_id: str, operation: str) -> list[dict[str, Any]]:
        return [c for c in self.state.snapshot(saga_id)["calls"]["recent"] if c["operation"] == operation]

    async def close(self) -> None:
        self.release.set()
        await self.server.close()


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[tuple[Harness, DemoServer]]:
    server = DemoServer()
    await server.server.start_server()
    store = await EmbeddedEventStore.open(tmp_path / "store")
    h = Harness(store, server, SagaCommands(store, TUNING), data_dir=tmp_path)  # type: ignore[arg-type]
    try:
        await h.engine()
        yield h, server
    finally:
        for engine in h.engines:
            await engine.stop(grace=2)
        for router in h.routers:
            await router.close()
        await store.close()
        await server.close()


async def test_the_seed_saga_completes(demo: tuple[Harness, DemoServer]) -> None:
    h, server = demo
    saga_id = await h.start(CONTEXT)
    assert (await h.wait_for(saga_id)).status is SagaStatus.COMPLETED
    assert server.state.snapshot(saga_id)["totals"]["net_charged"] == 99.99


async def test_a_declined_payment_compensates(demo: tuple[Harness, DemoServer]) -> None:
    h, server = demo
    stock = server.state.stock["widget"]
    saga_id = await h.start({**CONTEXT, "demo": {"payment": "decline"}})
    assert (await h.wait_for(saga_id)).status is SagaStatus.COMPENSATED
    seen = server.state.snapshot(saga_id)
    assert [o["undone"] for o in seen["orders"] + seen["reservations"]] == [True, True]
    assert seen["payments"] == []
    assert server.state.stock["widget"] == stock


async def test_a_flaky_inventory_is_retried_to_success(demo: tuple[Harness, DemoServer]) -> None:
    h, server = demo
    saga_id = await h.start({**CONTEXT, "demo": {"inventory": "flaky"}})
    assert (await h.wait_for(saga_id)).status is SagaStatus.COMPLETED
    assert [c["status"] for c in server.calls(saga_id, "reserve")] == [503, 503, 200]


async def test_a_misconfigured_service_suspends_until_fixed_and_resumed(
    demo: tuple[Harness, DemoServer],
) -> None:
    h, server = demo
    saga_id = await h.start({**CONTEXT, "demo": {"order": "misconfigured"}})
    assert (await h.wait_for(saga_id)).status is SagaStatus.SUSPENDED
    assert server.state.fix(None) == [saga_id]
    await h.commands.intervene(
        "acme", "ops@example.com", saga_id, ManualCommand.RESUME, reason="fixed", idempotency_key="r-1"
    )
    await h.engines[0].wake(f"saga-{saga_id}")
    assert (await h.wait_for(saga_id, {"SagaCompleted"})).status is SagaStatus.COMPLETED
    assert [c["status"] for c in server.calls(saga_id, "validate")] == [401, 200]


async def test_a_slow_payment_times_out_and_its_late_answer_takes_no_effect(
    demo: tuple[Harness, DemoServer],
) -> None:
    h, server = demo
    steps = [dict(s) for s in seed_definition()["steps"]]
    steps[2]["timeout"] = 300
    saga_id = await h.start({**CONTEXT, "demo": {"payment": "slow"}}, steps=steps)
    assert (await h.wait_for(saga_id)).status is SagaStatus.COMPENSATED
    # The second attempt found the first still in flight (409); the refund found nothing and left a tombstone.
    assert [c["status"] for c in server.calls(saga_id, "charge")] == [409]
    assert [c["status"] for c in server.calls(saga_id, "refund")] == [404]
    # The first charge is still running although the engine hung up on it; let it finish now.
    server.release.set()
    await asyncio.wait_for(asyncio.gather(*server.server.app[TASKS]), 5)
    assert [c["status"] for c in server.calls(saga_id, "charge")] == [409, 422]
    assert server.state.snapshot(saga_id)["payments"] == []
