"""The crash test's harness: its two saga shapes, the kill plan, the engine child process, reading the
store while the child holds it, and the one allowance a crash needs when the history checker runs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.types import EventFilter, RecordedEvent
from tests.faults.checker import DEADLINE_PASSED, Call, fold_history, group_histories
from tests.faults.participant import ParticipantRates
from tests.seed import FAST_RETRY, seed_definition

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_engine_child.py")
SERVICES = ("order-service", "inventory-service", "payment-service")
REJECTABLE = {("payment-service", "charge"), ("payment-service", "authorize"), ("order-service", "confirm")}
#: busy (503), slow past the step's deadline (then the work is done anyway: the next attempt under the key
#: meets 409 or the recorded answer), business rejections, and 502/504 from a gateway after the work
RATES = ParticipantRates(busy=0.08, hang=0.05, reject=0.08, gateway=0.03, hang_s=1.6)

#: kill the N-th hit of each failpoint, N drawn from this range: late enough to land among calls in
#: flight, early enough that the phase's work reaches it (an unreached failpoint fails the test)
FAILPOINT_HITS: dict[str, tuple[int, int]] = {
    "actor.after_intent": (30, 150),
    "actor.after_call": (30, 150),
    "actor.after_outcome": (30, 150),
    # A commit often holds several appends (group commit).
    "writer.after_commit": (20, 90),
    # Counted per durable write of the parked list (with --park, a few per second).
    "persistent.after_park": (2, 6),
}
#: a random-moment kill lands when this many more calls reached the participants
RANDOM_CALLS = (40, 200)


def sequential() -> dict[str, Any]:
    """The brief's three steps in a row, with short timeouts (a slow answer passes the deadline)."""
    d = seed_definition()
    for step, (timeout, retries) in zip(d["steps"], [(700, 3), (600, 2), (800, 1)], strict=True):
        step.update(timeout=timeout, retries=retries)
    return d


def fanout() -> dict[str, Any]:
    """A parallel DAG: check -> (hold, authorize) -> confirm; hold and authorize are called together."""

    def step(name: str, service: str, action: str, undo: str, retries: int, deps: list[str]) -> Any:
        return {"name": name, "service": service, "action": action, "compensation": undo,
                "timeout": 600, "retries": retries, "depends_on": deps}  # fmt: skip

    return {
        "name": "order-fanout",
        "version": "1.0.0",
        "retry": dict(FAST_RETRY),
        "steps": [
            step("check-order", "order-service", "check", "uncheck", 2, []),
            step("hold-stock", "inventory-service", "hold", "unhold", 3, ["check-order"]),
            step("authorize", "payment-service", "authorize", "void", 1, ["check-order"]),
            step("confirm", "order-service", "confirm", "unconfirm", 1, ["hold-stock", "authorize"]),
        ],
    }


DEFINITIONS = {d["name"]: d for d in (sequential(), fanout())}


@dataclass(frozen=True)
class Kill:
    """One run of the child, ended by SIGKILL: at the ``nth`` hit of ``failpoint`` (the child kills
    itself), or, with no failpoint, by the test when ``nth`` more calls reached the participants."""

    failpoint: str | None
    nth: int
    engines: int

    @property
    def park(self) -> bool:
        """Parking needs deliveries that time out: the child runs with --park for that failpoint."""
        return self.failpoint == "persistent.after_park"

    def describe(self) -> str:
        where = f"failpoint {self.failpoint}@{self.nth}" if self.failpoint else f"after {self.nth} calls"
        return f"{where}, {self.engines} engine(s){' --park' if self.park else ''}"


def plan_kills(rng: random.Random, random_kills: int, failpoints: Sequence[str]) -> list[Kill]:
    """A kill at each of ``failpoints`` (a name may repeat) and ``random_kills`` at random moments, in a
    seeded order; every other run has two engines competing in one process, and so does every run that
    waits for parking (one engine parks its first backlog in one write and then keeps up; two, whose
    timer firers wake the same sagas, keep deliveries waiting past their timeout all along)."""
    what: list[str | None] = [*failpoints, *([None] * random_kills)]
    rng.shuffle(what)
    kills = []
    for i, failpoint in enumerate(what):
        lo, hi = FAILPOINT_HITS[failpoint] if failpoint else RANDOM_CALLS
        engines = 2 if failpoint == "persistent.after_park" else 1 + i % 2
        kills.append(Kill(failpoint, rng.randint(lo, hi), engines))
    return kills


def exercised(histories: Mapping[str, Sequence[RecordedEvent]]) -> Counter[str]:
    """What the run put the engines through, from the histories: the crash test asserts each happened."""
    seen: Counter[str] = Counter()
    for history in histories.values():
        name = json.loads(history[0].data).get("definition_name", "?") if history else "?"
        previous = ""
        for e in history:
            data = json.loads(e.data)
            if e.type == "StepStarted" and previous == "StepStarted":
                seen["parallel intents (one append)"] += 1
            if e.type == "StepStarted" and data.get("attempt", 1) > 1:
                seen["retried attempts"] += 1
            if data.get("error_class") == DEADLINE_PASSED:
                seen["deadlines passed"] += 1
            if e.type in ("SagaCompleted", "SagaCompensated"):
                seen[f"{name}: {e.type}"] += 1
            previous = e.type
    return seen


class Child:
    """The engine child process (tests/e2e/_engine_child.py); its log goes to ``log``."""

    def __init__(
        self,
        data_dir: Path,
        urls: Mapping[str, str],
        *,
        engines: int,
        log: Path,
        failpoints: str = "",
        park: bool = False,
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("SAGA_FAILPOINTS", None)
        if failpoints:
            env["SAGA_FAILPOINTS"] = failpoints
        argv = [sys.executable, str(CHILD), str(data_dir), json.dumps(dict(urls)), f"--engines={engines}"]
        self._log: IO[bytes] = log.open("ab")
        self.proc = subprocess.Popen(
            [*argv, *(["--park"] if park else [])], stdout=subprocess.PIPE, stderr=self._log, env=env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self) -> bool:
        """True once the child says it is ready; False if it died first (a failpoint may fire early)."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        if not line:
            return False
        assert line.strip() == b"ready", line
        return True

    async def exited(self, within: float) -> int | None:
        """The return code once the child has exited, or None if it is still running after ``within``."""
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> tuple[int | None, str]:
        """SIGTERM, then the return code and what it printed."""
        self.proc.send_signal(signal.SIGTERM)
        code = await self.exited(60)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read().decode() if code is not None else ""
        return code, out

    def close(self) -> None:
        self.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


async def read_histories(store_dir: Path) -> dict[str, list[RecordedEvent]]:
    """Every saga stream by saga id, read through a read-only view (the child may hold the store)."""
    store = await EmbeddedEventStore.open(store_dir, read_only=True)
    try:
        events: list[RecordedEvent] = []
        async for batch in store.read_all(filter=EventFilter(stream_prefixes=("saga-",))):
            events.extend(batch)
        return group_histories(events)
    finally:
        await store.close()


def status_of(history: Sequence[RecordedEvent]) -> str | None:
    """The saga's folded status (None: the history cannot be folded, which the checker reports)."""
    try:
        return str(fold_history(history).status)
    except Exception:
        return None


_OUTCOMES = {
    "StepSucceeded": False,
    "StepAttemptFailed": False,
    "CompensationStepSucceeded": True,
    "CompensationStepAttemptFailed": True,
}


def answered_to_the_dead(
    calls: Sequence[Call], killed: int, histories: Mapping[str, Sequence[RecordedEvent]]
) -> list[Call]:
    """The calls as the checker should see them after crashes.

    The checker takes an answer the participant sent as observed, so it must be recorded (R3). An answer
    sent to an engine that was then SIGKILLed may have died with it: for the first ``killed`` calls (those
    that arrived before the last kill) whose attempt the history closes only by a passed deadline that
    says the outcome is unknown, the answer is marked unknown (status None), as for a client that went
    away. Nothing else is excused: an attempt with no outcome at all, or with any other outcome (a 2xx
    recorded as "no effect" included), keeps its answer, and so do the calls to the engine that was
    stopped cleanly at the end.
    """
    lost: set[tuple[str, bool, str, int]] = set()
    recorded: set[tuple[str, bool, str, int]] = set()
    for saga_id, history in histories.items():
        for e in history:
            compensation = _OUTCOMES.get(e.type)
            if compensation is None:
                continue
            data = json.loads(e.data)
            attempt = (saga_id, compensation, str(data.get("step")), int(data.get("attempt", -1)))
            if data.get("error_class") == DEADLINE_PASSED and data.get("outcome_unknown"):
                lost.add(attempt)
            else:
                recorded.add(attempt)
    out: list[Call] = []
    for i, call in enumerate(calls):
        attempt = (call.saga_id, call.compensation, str(call.step), call.attempt)
        excused = call.status is not None and i < killed and attempt in lost and attempt not in recorded
        out.append(dataclasses.replace(call, status=None) if excused else call)
    return out
