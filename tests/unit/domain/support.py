"""Given/when/then helpers for the domain tests: a fixed clock, the seed definition, folded histories."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.domain import (
    Event,
    Message,
    OutcomeKind,
    Phase,
    Plan,
    SagaDefinition,
    SagaState,
    StepOutcome,
    advance,
    apply,
    begin,
    parse_definition,
    start,
)
from tests.seed import SEED_DEFINITION

T0 = datetime(2025, 1, 1, tzinfo=UTC)

# The user's brief (seed.md), byte for byte.
SEED_JSON = SEED_DEFINITION

CONTEXT = {"order_id": "order-123", "customer_id": "customer-456", "amount": 99.99}
V, R, P = "validate-order", "reserve-inventory", "process-payment"


def seed() -> SagaDefinition:
    return parse_definition(SEED_JSON)


def step(name: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "service": "svc",
        "action": f"do-{name}",
        "compensation": f"undo-{name}",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def definition(*steps: dict[str, Any], **extra: Any) -> SagaDefinition:
    return parse_definition({"name": "d", "version": "1.0.0", "steps": list(copy.deepcopy(steps)), **extra})


def pivot_saga() -> SagaDefinition:
    """reserve (compensatable) -> charge (pivot) -> ship (retriable)."""
    return definition(
        step("reserve", retries=1),
        step("charge", kind="pivot", compensation=None, retries=1),
        step("ship", kind="retriable", compensation=None),
    )


class Saga:
    """A saga under test: keeps the history with recorded times and a clock."""

    def __init__(self, d: SagaDefinition, *, saga_id: str = "saga-1", context: dict[str, Any] | None = None):
        self.now = T0
        first = begin(tenant="t1", saga_id=saga_id, client_id=None, definition=d, context=context or CONTEXT)
        self.history: list[tuple[Event, datetime]] = [(first, self.now)]
        self.state: SagaState = start(first, self.now)

    def tick(self, ms: int) -> None:
        self.now += timedelta(milliseconds=ms)

    def run(self, message: Message | None = None) -> Plan:
        plan = advance(self.state, self.now, message)
        self.record(plan.events)
        return plan

    def record(self, events: Sequence[Event]) -> None:
        self.state = apply(self.state, events, self.now)
        self.history.extend((e, self.now) for e in events)

    def outcome(
        self,
        name: str,
        kind: OutcomeKind,
        *,
        phase: Phase = Phase.ACTION,
        attempt: int | None = None,
        **kw: Any,
    ) -> Plan:
        call = self.state.steps[name].action if phase is Phase.ACTION else self.state.steps[name].compensation
        return self.run(StepOutcome(name, attempt or call.attempt, phase, kind, **kw))

    def ok(self, name: str, output: Any = None, **kw: Any) -> Plan:
        return self.outcome(
            name, OutcomeKind.SUCCEEDED, output=output if output is not None else {"ok": name}, **kw
        )

    def undo(self, name: str, **kw: Any) -> Plan:
        return self.outcome(name, OutcomeKind.SUCCEEDED, phase=Phase.COMPENSATION, **kw)

    def fire_due(self) -> Plan:
        """Advance the clock to the earliest pending timer and let the actor react."""
        due = min(t.due_at for t in self.state.timers.values())
        self.now = max(self.now, due)
        return self.run()


def names(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]
