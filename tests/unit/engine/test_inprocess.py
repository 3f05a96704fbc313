"""The in-process executor follows the same rules as HTTP participants: outcome classes, the send
deadline, and the step timeout."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from orchestrator.engine.calls import OutcomeKind, Phase, StepCall
from orchestrator.engine.inprocess import InProcessExecutor, InProcessRequest, StepRejected, StepTransient


def _call(action: str, *, timeout: float = 2.0, send_deadline: float | None = None) -> StepCall:
    return StepCall(
        tenant="acme",
        saga_id="s-1",
        step="reserve",
        service="inventory",
        action=action,
        phase=Phase.ACTION,
        attempt=1,
        idempotency_key="key-1",
        body=json.dumps({"saga_id": "s-1", "step": "reserve", "input": {"n": 1}}).encode(),
        timeout=timeout,
        send_deadline=time.monotonic() + timeout if send_deadline is None else send_deadline,
    )


def executor(seen: list[InProcessRequest]) -> InProcessExecutor:
    async def ok(request: InProcessRequest) -> Any:
        seen.append(request)
        return {"n": request.body["input"]["n"]}

    async def reject(request: InProcessRequest) -> Any:
        raise StepRejected("declined")

    async def busy(request: InProcessRequest) -> Any:
        raise StepTransient("busy", retry_after=1.5)

    async def hang(request: InProcessRequest) -> Any:
        seen.append(request)
        await asyncio.Event().wait()

    async def bug(request: InProcessRequest) -> Any:
        raise ZeroDivisionError

    ex = InProcessExecutor()
    for name, handler in {"ok": ok, "reject": reject, "busy": busy, "hang": hang, "bug": bug}.items():
        ex.register("inventory", name, handler)
    return ex


async def test_outcome_classes() -> None:
    seen: list[InProcessRequest] = []
    ex = executor(seen)
    ok = await ex.call(_call("ok"))
    assert (ok.kind, ok.output) == (OutcomeKind.SUCCEEDED, {"n": 1})
    assert seen[0].idempotency_key == "key-1"
    reject = await ex.call(_call("reject"))
    assert (reject.kind, reject.maybe_effective) == (OutcomeKind.REJECTED, False)
    busy = await ex.call(_call("busy"))
    # The step itself said "not now": nothing was done, so a rollback has nothing to undo.
    assert (busy.kind, busy.retry_after, busy.maybe_effective) == (OutcomeKind.TRANSIENT, 1.5, False)
    bug = await ex.call(_call("bug"))
    assert (bug.kind, bug.maybe_effective) == (OutcomeKind.CRASHED, True)


async def test_never_starts_past_the_send_deadline() -> None:
    seen: list[InProcessRequest] = []
    result = await executor(seen).call(_call("ok", send_deadline=time.monotonic() - 1))
    assert (result.kind, result.not_sent, result.withheld) == (OutcomeKind.TRANSIENT, True, True)
    assert seen == []


async def test_a_step_slower_than_its_timeout_is_abandoned_with_its_effect_unknown() -> None:
    seen: list[InProcessRequest] = []
    started = time.monotonic()
    result = await asyncio.wait_for(executor(seen).call(_call("hang", timeout=0.2)), 5)
    assert time.monotonic() - started < 2
    assert (result.kind, result.error, result.maybe_effective) == (OutcomeKind.TRANSIENT, "timeout", True)
    assert len(seen) == 1
