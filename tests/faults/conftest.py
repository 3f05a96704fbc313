"""The fault suite's harness: definitions of three shapes, two engines on one faulty store, fault
participants, a client that persists through refusals, a simulated operator, and the end-of-run check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.app.commands import Conflict, SagaCommands
from orchestrator.domain.state import SagaState, phase, pivot_succeeded
from orchestrator.domain.timing import Tuning
from orchestrator.domain.vocabulary import CallStatus, ManualCommand, SagaStatus
from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.errors import OperationalError, StreamNotFound, WrongExpectedRevision
from orchestrator.eventstore.types import EventFilter, RecordedEvent
from orchestrator.records.streams import saga_id_for, saga_stream
from orchestrator.settings import EngineSettings, ServiceConfig
from tests.faults.checker import PAUSED, TERMINAL, check, fold_history, group_histories
from tests.faults.faulty_store import FaultyStore, StoreFault, StoreFaultRates, StoreFaults
from tests.faults.participant import FaultParticipants, ParticipantRates
from tests.seed import FAST_RETRY, seed_definition

TENANT = "acme"
SERVICES = ("order-service", "inventory-service", "payment-service", "shipping-service")
#: kick 500 ms; an attempt's durable deadline is its timeout + 200 ms pool cap + 300 ms slack
SETTINGS = {"kick_ms": 500, "deadline_slack_ms": 300, "message_timeout_s": 5.0}
ACQUIRE_CAP_MS = 200
TUNING = Tuning(kick_ms=500, attempt_slack_ms=ACQUIRE_CAP_MS + 300)
REJECTABLE = {
    ("payment-service", "charge"),
    ("payment-service", "authorize"),
    ("order-service", "confirm"),
    ("inventory-service", "reserve"),
}
T = TypeVar("T")


# --- the definitions -----------------------------------------------------------------------------------


def sequential() -> dict[str, Any]:
    """The brief's 3-step saga with short timeouts and varied retries."""
    d = seed_definition()
    for step, (timeout, retries) in zip(d["steps"], [(700, 3), (600, 2), (900, 1)], strict=True):
        step.update(timeout=timeout, retries=retries)
    return d


def parallel() -> dict[str, Any]:
    """A fan-out after one step and a join, with a saga deadline."""

    def step(
        name: str, service: str, action: str, undo: str, timeout: int, retries: int, deps: list[str]
    ) -> Any:
        return {
            "name": name,
            "service": service,
            "action": action,
            "compensation": undo,
            "timeout": timeout,
            "retries": retries,
            "depends_on": deps,
        }

    return {
        "name": "order-fanout",
        "version": "1.0.0",
        "timeout": 8000,
        "retry": dict(FAST_RETRY),
        "steps": [
            step("check-order", "order-service", "check", "uncheck", 600, 2, []),
            step("hold-stock", "inventory-service", "hold", "unhold", 500, 3, ["check-order"]),
            step("authorize", "payment-service", "authorize", "void", 700, 1, ["check-order"]),
            step("book-courier", "shipping-service", "book", "cancel-booking", 500, 2, ["check-order"]),
            step("confirm", "order-service", "confirm", "unconfirm", 600, 0,
                 ["hold-stock", "authorize", "book-courier"]),
        ],
    }  # fmt: skip


def with_pivot() -> dict[str, Any]:
    """Compensatable steps, the pivot (a capture that cannot be undone), then retriable steps."""
    return {
        "name": "order-capture",
        "version": "1.0.0",
        "retry": {"initial_interval": 20, "max_interval": 300, "multiplier": 2.0},
        "steps": [
            {"name": "validate", "service": "order-service", "action": "validate",
             "compensation": "cancel-validation", "timeout": 600, "retries": 2},
            {"name": "reserve", "service": "inventory-service", "action": "reserve",
             "compensation": "release-reservation", "timeout": 500, "retries": 2},
            {"name": "capture", "service": "payment-service", "action": "capture", "kind": "pivot",
             "timeout": 900, "retries": 2},
            {"name": "ship", "service": "shipping-service", "action": "ship", "kind": "retriable",
             "timeout": 500},
            {"name": "notify", "service": "order-service", "action": "notify", "kind": "retriable",
             "timeout": 400},
        ],
    }  # fmt: skip


DEFINITIONS = {d["name"]: d for d in (sequential(), parallel(), with_pivot())}


# --- the run -------------------------------------------------------------------------------------------


async def persist(what: Callable[[], Awaitable[T]], tries: int = 20) -> T:
    """What a client does when the store is unavailable: try again, a little later."""
    for attempt in range(tries):
        try:
            return await what()
        except (OperationalError, WrongExpectedRevision):
            if attempt == tries - 1:
                raise
            await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
    raise AssertionError("unreachable")


@dataclass
class Outcome:
    histories: dict[str, list[RecordedEvent]]
    violations: list[str]
    statuses: dict[str, str]

    def waiting(self) -> dict[str, str]:
        """Sagas left waiting for a person, with the reason they stopped for."""
        out: dict[str, str] = {}
        for saga_id, status in sorted(self.statuses.items()):
            if status in PAUSED:
                state = fold_history(self.histories[saga_id])
                out[saga_id] = f"{status}: {state.reason}"
        return out


@dataclass
class Run:
    seed: int
    store: EmbeddedEventStore
    participants: FaultParticipants
    store_rates: StoreFaultRates
    faults: StoreFaults = field(default_factory=StoreFaults)
    engines: list[Engine] = field(default_factory=list)
    routers: list[ExecutorRouter] = field(default_factory=list)
    wrappers: list[FaultyStore] = field(default_factory=list)
    #: every saga id a start was attempted for, and those whose start was acknowledged
    attempted: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    #: what the client and the operator did, for the report
    actions: Counter[str] = field(default_factory=Counter)
    _final: dict[str, str] = field(default_factory=dict)
    _commands: SagaCommands | None = None
    _closed: bool = False

    @property
    def commands(self) -> SagaCommands:
        if self._commands is None:
            self._commands = SagaCommands(self.wrap(99), TUNING)
        return self._commands

    def wrap(self, n: int) -> FaultyStore:
        """A faulty view of the store (each engine and the client get their own; the faults are shared)."""
        wrapper = FaultyStore(
            self.store, seed=self.seed * 1000 + n, rates=self.store_rates, faults=self.faults
        )
        self.wrappers.append(wrapper)
        return wrapper

    def quiet(self) -> None:
        """No more faults: what is left must now finish."""
        for wrapper in self.wrappers:
            wrapper.rates = StoreFaultRates()
        self.participants.rates = ParticipantRates(hang_s=self.participants.rates.hang_s)

    def injected(self) -> int:
        """Distinct injections that hit a saga in flight: every call fault and store fault, an outage once
        (the appends and reads it refused are counted apart, under ``outage`` and ``outage_read``)."""
        per_call = {StoreFault.OUTAGE.value, StoreFault.OUTAGE_READ.value}
        store = sum(n for k, n in self.faults.counts.items() if k not in per_call)
        return store + self.faults.outages + sum(self.participants.counts.values())

    def fault_counts(self) -> dict[str, int]:
        counts = {f"store.{k}": v for k, v in self.faults.counts.items()}
        counts |= {f"participant.{k}": v for k, v in self.participants.counts.items()}
        counts["store.outage_windows"] = self.faults.outages
        return dict(sorted(counts.items()))

    async def engine(self, data_dir: Path) -> Engine:
        services = {
            s: ServiceConfig(
                base_url=self.participants.url(s),
                pool_acquire_timeout_ms=ACQUIRE_CAP_MS,
                connect_timeout_ms=500,
            )
            for s in SERVICES
        }
        router = ExecutorRouter(http=HttpExecutor(services))
        engine = Engine(
            self.wrap(len(self.engines)),
            router,
            settings=EngineSettings(**SETTINGS),
            data_dir=data_dir / f"engine-{len(self.engines)}",
            acquire_caps_ms=dict.fromkeys(SERVICES, ACQUIRE_CAP_MS),
        )
        await engine.start()
        self.engines.append(engine)
        self.routers.append(router)
        return engine

    # --- a client --------------------------------------------------------------------------------------
    async def start(self, name: str, client_id: str, context: dict[str, Any], tries: int = 20) -> str:
        """Start a saga as a client does, trying again on refusals; the saga id once acknowledged."""
        self.attempted.add(saga_id_for(TENANT, client_id, None))
        started = await persist(
            lambda: self.commands.start(
                TENANT, "client", name=name, version=None, context=context, client_id=client_id
            ),
            tries=tries,
        )
        self.acknowledged.add(started.saga_id)
        return started.saga_id

    async def intervene(
        self, saga_id: str, command: ManualCommand, key: str, step: str | None = None
    ) -> None:
        await persist(
            lambda: self.commands.intervene(
                TENANT, "ops", saga_id, command, reason="fault suite", idempotency_key=key, step=step
            )
        )

    # --- waiting -----------------------------------------------------------------------------------------
    async def statuses(self) -> dict[str, str]:
        """The folded status of every saga a start was attempted for and whose stream exists."""
        out: dict[str, str] = {}
        for saga_id in sorted(self.attempted):
            if saga_id in self._final:
                out[saga_id] = self._final[saga_id]
                continue
            try:
                events = await self.store.read_stream(saga_stream(saga_id))
            except StreamNotFound:
                continue
            status = str(fold_history(events).status)
            if status in TERMINAL:
                self._final[saga_id] = status
            out[saga_id] = status
        return out

    async def settle(self, within: float) -> dict[str, str]:
        """Poll (bounded) until no saga is running or compensating; then until nothing is in flight
        (no participant working, no actor alive) for a few polls in a row."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            statuses = await self.statuses()
            moving = [s for s, status in statuses.items() if status not in PAUSED | TERMINAL]
            if not moving or loop.time() > deadline:
                break
            await asyncio.sleep(0.25)
        quiet_polls = 0
        while quiet_polls < 3 and loop.time() < deadline + 10:
            idle = self.participants.in_flight == 0 and all(e.active_actors == 0 for e in self.engines)
            quiet_polls = quiet_polls + 1 if idle else 0
            await asyncio.sleep(0.1)
        return await self.statuses()

    async def wait_for(self, saga_id: str, statuses: frozenset[str], within: float = 20) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            status = (await self.statuses()).get(saga_id)
            if status in statuses:
                return status
            assert loop.time() < deadline, (
                f"saga {saga_id} is {status}, not {sorted(statuses)}, after {within}s"
            )
            await asyncio.sleep(0.05)

    # --- the end -----------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for engine in self.engines:
            await engine.stop(grace=2)
        for router in self.routers:
            await router.close()
        await self.participants.close()

    async def finish(self) -> Outcome:
        """Stop everything, read every saga stream, and run the checker."""
        statuses = await self.statuses()
        await self.close()
        events: list[RecordedEvent] = []
        async for batch in self.store.read_all(filter=EventFilter(stream_prefixes=("saga-",))):
            events.extend(batch)
        histories = group_histories(events)
        participants = self.participants
        violations = check(
            histories, participants.calls, participants.effects, self.acknowledged, DEFINITIONS
        )
        return Outcome(histories, violations, statuses)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    seed: int,
    store_rates: StoreFaultRates,
    participant_rates: ParticipantRates,
    engines: int = 2,
) -> AsyncIterator[Run]:
    participants = FaultParticipants(seed, participant_rates, rejectable=REJECTABLE)
    await participants.start()
    store = await EmbeddedEventStore.open(tmp_path / "store")
    run = Run(seed, store, participants, store_rates)
    try:
        for _ in range(engines):
            await run.engine(tmp_path)
        for definition in DEFINITIONS.values():
            await run.commands.register_definition(TENANT, "test", definition)
        yield run
    finally:
        await run.close()
        await store.close()


# --- the operator --------------------------------------------------------------------------------------


async def operate(run: Run, rng: random.Random, saga_id: str, round_: int) -> None:
    """A person looks at a saga waiting for them and chooses: abort mostly, retry sometimes, resume when
    a retry would run something that may have taken effect a second time."""
    state, _ = await persist(lambda: run.commands.load(TENANT, saga_id))
    if state.status not in (SagaStatus.DEAD_LETTERED, SagaStatus.SUSPENDED):
        return
    for command, step in _choices(state, rng):
        try:
            await run.intervene(saga_id, command, f"op-{saga_id}-{round_}-{command}-{step}", step)
        except Conflict:
            continue
        run.actions[f"{command}{' (named step)' if step else ''}"] += 1
        return
    run.actions["nothing possible"] += 1


def _choices(state: SagaState, rng: random.Random) -> list[tuple[ManualCommand, str | None]]:
    resume: tuple[ManualCommand, str | None] = (ManualCommand.RESUME, None)
    retry: tuple[ManualCommand, str | None] = (ManualCommand.RETRY, None)
    abort: tuple[ManualCommand, str | None] = (ManualCommand.ABORT, None)
    if phase(state) is SagaStatus.COMPENSATING:
        return [retry, resume] if rng.random() < 0.5 else [resume, retry]
    pivot = state.definition.pivot
    if pivot is not None and not pivot_succeeded(state) and state.steps[pivot.name].possibly_effective:
        return [resume]  # the capture may have happened: ask again under its key, never charge twice
    stuck = [
        n for n, st in state.steps.items() if st.action.status in (CallStatus.FAILED, CallStatus.BLOCKED)
    ]
    # Now and then a person insists on a retry of a step by name (a new key even if it may have taken
    # effect): a compensation must then undo every generation.
    named: list[tuple[ManualCommand, str | None]] = (
        [(ManualCommand.RETRY, rng.choice(sorted(stuck)))] if stuck and rng.random() < 0.3 else []
    )
    if pivot_succeeded(state):
        return [*named, retry, resume]
    if rng.random() < 0.7:
        return [abort, resume]
    return [*named, retry, abort, resume]


# --- reporting -----------------------------------------------------------------------------------------


def summary(violations: list[str], per_rule: int = 6) -> str:
    """Violations by rule: how many, and the first few of each."""
    by_rule: dict[str, list[str]] = {}
    for v in violations:
        by_rule.setdefault(v.split(" ", 1)[0], []).append(v)
    lines = [f"by rule: {', '.join(f'{rule}: {len(vs)}' for rule, vs in sorted(by_rule.items()))}"]
    for _rule, vs in sorted(by_rule.items()):
        lines += [f"  {v}" for v in vs[:per_rule]]
    return "\n".join(lines)


def dump(path: Path, outcome: Outcome, participants: FaultParticipants) -> None:
    """Everything the checker saw, per saga, as JSON (``SAGA_FAULTS_DUMP=file``), to read a violation."""

    def entry(saga_id: str) -> dict[str, Any]:
        return sagas.setdefault(saga_id, {"status": None, "events": [], "calls": [], "effects": []})

    sagas: dict[str, Any] = {}
    for saga_id, events in outcome.histories.items():
        entry(saga_id)["status"] = outcome.statuses.get(saga_id)
        entry(saga_id)["events"] = [
            {"revision": e.revision, "type": e.type, "data": json.loads(e.data)} for e in events
        ]
    for c in participants.calls:
        entry(c.saga_id)["calls"].append(
            {
                "service": c.service,
                "action": c.action,
                "key": c.key,
                "attempt": c.attempt,
                "status": c.status,
                "fault": c.fault,
                "applied": c.applied,
                "undone": list(c.undone),
                "body": c.body.decode(errors="replace"),
            }
        )
    for e in participants.effects.values():
        entry(e.saga_id)["effects"].append({"key": e.key, "step": e.step, "undone_by": e.undone_by})
    path.write_text(json.dumps({"violations": outcome.violations, "sagas": sagas}, indent=1))
