"""Regressions for the engine under store faults: an observed outcome survives a store that refuses
appends for a while (and the engine takes no new work meanwhile), and a slow intent append does not use
up a step that has no retries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.domain.vocabulary import SagaStatus
from orchestrator.eventstore.errors import OperationalError
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import AppendResult, Expected, NewEvent
from tests.e2e.conftest import Harness, seed_definition
from tests.e2e.participants import Received

Match = Callable[[str, Sequence[NewEvent]], bool]


class GatedStore:
    """The harness's store, except that appends matching ``refuse`` fail with ``OperationalError`` (as
    during a KurrentDB leader election) and appends matching ``delay`` wait ``delay_s`` first."""

    def __init__(self, inner: EventStore) -> None:
        self._inner = inner
        self.refuse: Match | None = None
        self.delay: Match | None = None
        self.delay_s = 0.0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> AppendResult:
        if self.refuse is not None and self.refuse(stream, events):
            self.refused += 1
            raise OperationalError("injected: the store refuses appends")
        if self.delay is not None and self.delay(stream, events):
            self.delay = None
            await asyncio.sleep(self.delay_s)
        return await self._inner.append(stream, events, expected=expected)


def one_payment_attempt(timeout_ms: int = 1_000) -> list[dict[str, Any]]:
    steps = [dict(s) for s in seed_definition()["steps"]]
    steps[2].update(retries=0, timeout=timeout_ms)
    return steps


def types(events: Sequence[Any]) -> list[str]:
    return [e.type for e in events]


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_an_outcome_observed_while_the_store_refuses_appends_is_recorded(harness: Harness) -> None:
    """Regression (design.md §0.3): the store refused the outcome's append longer than the resends, the
    outcome was dropped, the deadline then recorded the attempt as unknown and the saga compensated a
    charge that had succeeded. The outcome must stay with the actor until the store takes it."""
    gate = GatedStore(harness.store)
    outage = asyncio.Event()

    def close_the_store(call: Received) -> None:
        if call.action == "charge":
            gate.refuse = lambda stream, events: True
            outage.set()

    harness.participants.observer = close_the_store
    engine = await harness.engine(store=gate)
    saga_id = await harness.start(steps=one_payment_attempt())
    await asyncio.wait_for(outage.wait(), 10)
    # The outage outlasts the actor's resends and the attempt's deadline (1 s timeout + 0.5 s slack).
    await until(lambda: gate.refused > 5)
    await asyncio.sleep(2.0)
    assert engine.metrics.sagas_waiting_for_store._value.get() == 1
    gate.refuse = None
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    assert state.steps["process-payment"].output == {
        "done": "charge",
        "key": state.steps["process-payment"].action.idempotency_key,
    }
    history = await harness.history(saga_id)
    assert "CompensationStarted" not in types(history)
    succeeded = [json.loads(e.data) for e in history if e.type == "StepSucceeded"]
    assert [s["late"] for s in succeeded] == [False, False, False]
    assert len(harness.participants.calls("payment-service", "charge")) == 1
    assert engine.metrics.sagas_waiting_for_store._value.get() == 0


async def test_no_new_saga_is_taken_on_while_outcomes_wait_for_the_store(harness: Harness) -> None:
    """Backpressure: while an outcome waits for the store, deliveries for other sagas wait too (they would
    only pile up more outcomes); once the store takes the outcome, they go on."""
    gate = GatedStore(harness.store)
    first: list[str] = []
    refused_stream = asyncio.Event()

    def refuse_the_first_saga(call: Received) -> None:
        if call.action == "charge" and not refused_stream.is_set():
            stream = f"saga-{call.json['saga_id']}"
            first.append(stream)
            gate.refuse = lambda s, events: s == stream
            refused_stream.set()

    harness.participants.observer = refuse_the_first_saga
    engine = await harness.engine(store=gate)
    a = await harness.start(steps=one_payment_attempt(5_000))
    await asyncio.wait_for(refused_stream.wait(), 10)
    await until(lambda: engine.metrics.sagas_waiting_for_store._value.get() == 1)
    deliveries = engine.metrics.deliveries._value.get()
    b = await harness.start(context={"order_id": "o-2"}, steps=one_payment_attempt(5_000))
    await until(lambda: engine.metrics.deliveries._value.get() > deliveries)
    await asyncio.sleep(0.3)  # a window in which the engine must not take b on (a negative: nothing to poll)
    assert types(await harness.history(b)) == ["SagaStarted"]
    assert harness.participants.calls("order-service", "validate")[-1].json["saga_id"] == a
    gate.refuse = None
    assert (await harness.wait_for(a)).status is SagaStatus.COMPLETED
    assert (await harness.wait_for(b)).status is SagaStatus.COMPLETED


async def test_a_slow_intent_append_does_not_use_up_a_step_without_retries(harness: Harness) -> None:
    """Regression: the send window was counted from before the intent's append, so an append slower than
    the window withheld the call and, with ``retries: 0``, rolled back a step that was never sent."""
    gate = GatedStore(harness.store)
    gate.delay = lambda stream, events: any(
        e.type == "StepStarted" and json.loads(e.data)["step"] == "process-payment" for e in events
    )
    gate.delay_s = 1.0  # longer than the window: 300 ms timeout + 200 ms pool-acquire cap
    await harness.engine(store=gate)
    saga_id = await harness.start(steps=one_payment_attempt(300))
    state = await harness.wait_for(saga_id)
    assert state.status is SagaStatus.COMPLETED
    history = await harness.history(saga_id)
    failed = [json.loads(e.data) for e in history if e.type == "StepAttemptFailed"]
    assert [(f["step"], f["error_class"], f["withheld"]) for f in failed] == [
        ("process-payment", "not_sent", True)
    ]
    assert len(harness.participants.calls("payment-service", "charge")) == 1
