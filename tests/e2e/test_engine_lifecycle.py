"""Engine behaviour around the calls: dead letters, unreadable histories, backpressure, graceful stop."""

from __future__ import annotations

import asyncio
import json

from orchestrator.domain.vocabulary import SagaStatus
from orchestrator.eventstore import new_events
from orchestrator.records.streams import saga_stream
from tests.e2e.conftest import Harness


async def test_a_compensation_that_cannot_compensate_dead_letters(harness: Harness) -> None:
    harness.participants.script[("payment-service", "charge")] = [422]
    harness.participants.script[("inventory-service", "release-reservation")] = [422]
    await harness.engine()
    saga_id = await harness.start()
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.DEAD_LETTERED
    # It stopped where a person must look: the validation was not compensated behind its back.
    assert harness.participants.calls("order-service", "cancel-validation") == []


async def test_an_unreadable_history_is_acked_counted_and_left_alone(harness: Harness) -> None:
    engine = await harness.engine()
    saga_id = await harness.start()
    await harness.wait_for(saga_id)
    stream = saga_stream(saga_id)
    # A newer release wrote an event type this node cannot read.
    history = await harness.history(saga_id)
    await harness.store.append(
        stream,
        new_events(stream, history[-1].revision, [("SagaTeleported", b"{}", b'{"schema":"1"}')]),
        expected=history[-1].revision,
    )
    await engine.wake(stream)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not engine.metrics.registry.get_sample_value("saga_engine_unreadable_sagas_total"):
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    info = await harness.store.get_subscription_info("orchestrator")
    assert info.parked == 0
    assert (await harness.history(saga_id))[-1].type == "SagaTeleported"


async def test_backpressure_bounds_the_sagas_in_flight(harness: Harness) -> None:
    harness.participants.script[("inventory-service", "reserve")] = ["slow:0.1"]
    engine = await harness.engine(max_in_flight=2)
    seen: list[int] = []
    harness.participants.observer = lambda _: seen.append(engine.active_actors)
    saga_ids = [await harness.start({"n": i}) for i in range(8)]
    for saga_id in saga_ids:
        assert (await harness.wait_for(saga_id)).status is SagaStatus.COMPLETED
    assert seen
    assert max(seen) <= 2


async def test_stop_lets_calls_in_flight_finish_and_records_them(harness: Harness) -> None:
    harness.participants.script[("order-service", "validate")] = ["slow:0.5"]
    engine = await harness.engine()
    saga_id = await harness.start()
    await asyncio.wait_for(harness.participants.changed.wait(), 10)  # the call is in flight
    await engine.stop(grace=5)
    history = await harness.history(saga_id)
    succeeded = [json.loads(e.data) for e in history if e.type == "StepSucceeded"]
    assert [s["step"] for s in succeeded] == ["validate-order"]
    # No new call was started after the stop began: the next intent may be recorded, never sent.
    assert len(harness.participants.received) == 1
