"""Fault injection end to end: two engines on one store that fails the way a networked store does, HTTP
participants that misbehave within (and at the edge of) their contract, and the history checker
(tests/faults/checker.py, R1 to R7) over everything recorded at the end.

- The randomized run starts sagas of three shapes (some concurrently, some aborted while they run), lets
  faults happen, then plays an operator for whatever waits for a person, until everything settles. It is
  seeded by ``SAGA_FAULT_SEED`` (default below): every choice the test makes follows the seed; timing still
  varies, so a failing seed is a strong hint, not an exact replay. ``SAGA_FAULTS_LONG=1`` runs more sagas
  for longer. The seed and fault counts are printed (``pytest -s``) and named in every failure;
  ``SAGA_FAULTS_DUMP=file.json`` writes every history, call and effect for reading a violation.
- Scripted scenarios replay, deterministically, the engine bugs this suite was built to catch.
- The injectors are tested too: a fault suite whose faults do not happen proves nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.app.errors import Conflict
from orchestrator.domain.vocabulary import ManualCommand
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.errors import (
    EventStoreError,
    OperationalError,
    StreamNotFound,
    WrongExpectedRevision,
)
from orchestrator.eventstore.ids import new_events
from orchestrator.eventstore.types import NO_STREAM
from orchestrator.records.streams import SAGA_STREAM_PREFIX
from tests.faults.checker import PAUSED, TERMINAL, Call
from tests.faults.conftest import DEFINITIONS, Run, dump, operate, running, summary
from tests.faults.faulty_store import NO_FAULTS, FaultyStore, StoreFault, StoreFaultRates
from tests.faults.participant import FaultParticipants, ParticipantFault, ParticipantRates

SEED = int(os.environ.get("SAGA_FAULT_SEED", "20260501"))
LONG = os.environ.get("SAGA_FAULTS_LONG") == "1"
STORE_RATES = StoreFaultRates(
    refuse=0.04, ambiguous=0.04, delay=0.03, conflict=0.03, outage=0.02, read_refuse=0.01
)
PARTICIPANT_RATES = ParticipantRates(
    bad_body=0.03,
    oversize=0.02,
    reset_after=0.04,
    gateway=0.04,
    hang=0.03,
    busy=0.08,
    reject=0.08,
    hang_s=1.5,
)
QUIET = ParticipantRates()


@dataclass(frozen=True)
class Profile:
    sagas: int
    #: seconds for the sagas to stop moving, per phase
    settle_s: float
    operator_rounds: int
    #: operator rounds that still see faults; later rounds run with none so that everything can finish
    faulty_rounds: int
    #: distinct injections that must hit a saga in flight, or the run proved little
    min_faults: int


CI = Profile(sagas=120, settle_s=45, operator_rounds=6, faulty_rounds=1, min_faults=200)
LONG_RUN = Profile(sagas=1000, settle_s=240, operator_rounds=10, faulty_rounds=3, min_faults=1500)


async def start_sagas(run: Run, count: int, rng: random.Random) -> None:
    """Clients start ``count`` sagas in waves of 1 to 6 at once; some get aborted while they run."""
    names = sorted(DEFINITIONS)
    plan = [(i, rng.choice(names), rng.random() < 0.08, rng.uniform(0.2, 2.5)) for i in range(count)]

    async def start(i: int, name: str, abort: bool, abort_after: float) -> None:
        context = {"order_id": f"o-{i}", "amount": 10 + i}
        try:
            # A client that gives up after some refusals leaves a start that was never acknowledged.
            saga_id = await run.start(name, f"fault-{run.seed}-{i}", context, tries=12)
        except EventStoreError as e:
            run.actions[f"start given up: {type(e).__name__}"] += 1
            return
        if abort:
            await asyncio.sleep(abort_after)  # the customer changes their mind a little later
            try:
                await run.intervene(saga_id, ManualCommand.ABORT, f"abort-{i}")
                run.actions["abort (running)"] += 1
            except (Conflict, EventStoreError) as e:
                run.actions[f"abort (running) refused: {type(e).__name__}"] += 1

    tasks: list[asyncio.Task[None]] = []
    index = 0
    while index < len(plan):
        wave = plan[index : index + rng.randint(1, 6)]
        index += len(wave)
        tasks += [asyncio.create_task(start(*item)) for item in wave]
        await asyncio.sleep(rng.uniform(0.0, 0.15))  # the clients' pace, not a wait for a result
    await asyncio.gather(*tasks)


@pytest.mark.timeout(900 if LONG else 150)
async def test_randomized_faults_leave_a_correct_history(tmp_path: Path) -> None:
    seed, profile = SEED, LONG_RUN if LONG else CI
    rng = random.Random(seed)
    began = time.monotonic()
    async with running(tmp_path, seed, STORE_RATES, PARTICIPANT_RATES) as run:
        await start_sagas(run, profile.sagas, rng)
        statuses = await run.settle(profile.settle_s)
        for round_ in range(profile.operator_rounds):
            waiting = sorted(s for s, status in statuses.items() if status in PAUSED)
            if not waiting:
                break
            if round_ >= profile.faulty_rounds:
                run.quiet()
            for saga_id in waiting:
                await operate(run, rng, saga_id, round_)
            statuses = await run.settle(profile.settle_s)
        run.quiet()
        await run.settle(profile.settle_s)
        outcome = await run.finish()
    if os.environ.get("SAGA_FAULTS_DUMP"):
        dump(Path(os.environ["SAGA_FAULTS_DUMP"]), outcome, run.participants)
    endings: dict[str, int] = {}
    for status in outcome.statuses.values():
        endings[status] = endings.get(status, 0) + 1
    report = (
        f"seed={seed} (SAGA_FAULT_SEED) long={LONG} seconds={time.monotonic() - began:.1f} "
        f"sagas={len(outcome.histories)} acknowledged={len(run.acknowledged)} "
        f"calls={len(run.participants.calls)} endings={endings}\n"
        f"distinct injections that hit a saga in flight: {run.injected()}; per kind: {run.fault_counts()}\n"
        f"client and operator: {dict(sorted(run.actions.items()))}\n"
        f"left waiting for a person: {outcome.waiting()}"
    )
    print(report)
    violations = outcome.violations
    assert not violations, (
        f"{len(violations)} violation(s) with seed {seed}:\n{summary(violations)}\n{report}"
    )
    assert run.injected() >= profile.min_faults, f"too few faults with seed {seed}: {report}"
    assert len(run.acknowledged) >= profile.sagas * 0.8, f"too few sagas started with seed {seed}: {report}"
    assert set(outcome.statuses.values()) <= TERMINAL | PAUSED, report


# --- scripted: the engine bugs this suite was built for, one each, deterministically --------------------


async def test_a_2xx_whose_body_cannot_be_read_is_undone_when_the_saga_is_aborted(tmp_path: Path) -> None:
    """The charge happened (2xx) but its body is not JSON: the saga stops for a person, who aborts it.
    The charge must be refunded, so the history must not say "no effect" (R3, R4)."""
    async with running(tmp_path, 1, NO_FAULTS, QUIET, engines=1) as run:
        run.participants.inject("payment-service", "charge", ParticipantFault.BAD_BODY)
        saga_id = await run.start("order-processing", "bad-body", {"order_id": "o-1"})
        await run.wait_for(saga_id, PAUSED)
        await run.intervene(saga_id, ManualCommand.ABORT, "abort-1")
        await run.wait_for(saga_id, TERMINAL)
        await run.settle(10)
        outcome = await run.finish()
    assert outcome.violations == [], summary(outcome.violations)
    assert outcome.statuses[saga_id] == "compensated"
    assert [c.action for c in run.participants.calls if c.undone] == [
        "refund",
        "release-reservation",
        "cancel-validation",
    ]


async def test_a_compensation_after_a_persons_retry_undoes_every_generation(tmp_path: Path) -> None:
    """Validation took effect (its answer was lost, then unreadable); a person retries it by name under a
    new key, which takes effect too; the payment is then rejected. Both validations must be undone (R4)."""
    async with running(tmp_path, 2, NO_FAULTS, QUIET, engines=1) as run:
        run.participants.inject(
            "order-service", "validate", ParticipantFault.RESET_AFTER, ParticipantFault.BAD_BODY
        )
        run.participants.inject("payment-service", "charge", ParticipantFault.REJECT)
        saga_id = await run.start("order-processing", "retried", {"order_id": "o-2"})
        await run.wait_for(saga_id, PAUSED)
        await run.intervene(saga_id, ManualCommand.RETRY, "retry-1", step="validate-order")
        await run.wait_for(saga_id, TERMINAL)
        await run.settle(10)
        outcome = await run.finish()
    assert outcome.violations == [], summary(outcome.violations)
    assert outcome.statuses[saga_id] == "compensated"
    validations = {c.key for c in run.participants.calls if c.action == "validate" and c.applied}
    assert len(validations) == 2
    undone = [c.undone for c in run.participants.calls if c.action == "cancel-validation" and c.undone]
    assert [set(u) for u in undone] == [validations]


async def test_an_outcome_observed_while_the_store_is_down_is_recorded(tmp_path: Path) -> None:
    """The store goes down (a leader election) while the charge is in flight and stays down longer than
    the outcome's resends and the attempt's deadline: the observed 2xx must still be recorded (R3)."""
    async with running(tmp_path, 3, NO_FAULTS, QUIET, engines=1) as run:

        def election_during_the_charge(call: Call) -> None:
            if call.action == "charge" and call.attempt == 1:
                run.faults.inject(StoreFault.OUTAGE, f"{SAGA_STREAM_PREFIX}{call.saga_id}", size=2.5)

        run.participants.observer = election_during_the_charge
        saga_id = await run.start("order-processing", "outage", {"order_id": "o-3"})
        await run.wait_for(saga_id, TERMINAL | PAUSED, within=30)
        await run.settle(10)
        outcome = await run.finish()
    assert outcome.violations == [], summary(outcome.violations)
    assert run.faults.outages == 1
    assert run.faults.counts["outage"] >= 5
    assert outcome.statuses[saga_id] == "completed"


# --- the injectors themselves ----------------------------------------------------------------------------


async def test_store_faults_happen_as_scripted(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path / "store")
    try:
        faulty = FaultyStore(store)
        stream = "saga-scripted"

        def event(n: int, expected: Any) -> list[Any]:
            return new_events(stream, expected, [("StepStarted", json.dumps({"n": n}).encode(), b"{}")])

        faulty.faults.inject(StoreFault.REFUSE, stream)
        with pytest.raises(OperationalError):
            await faulty.append(stream, event(0, NO_STREAM), expected=NO_STREAM)
        with pytest.raises(StreamNotFound):
            await store.read_stream(stream)  # refused: nothing written

        faulty.faults.inject(StoreFault.AMBIGUOUS, stream)
        with pytest.raises(OperationalError):
            await faulty.append(stream, event(0, NO_STREAM), expected=NO_STREAM)
        assert len(await store.read_stream(stream)) == 1  # the write landed; only the answer was lost
        await faulty.append(stream, event(0, NO_STREAM), expected=NO_STREAM)  # the same ids: idempotent

        faulty.faults.inject(StoreFault.CONFLICT, stream, size=2)
        for _ in range(2):
            with pytest.raises(WrongExpectedRevision) as conflict:
                await faulty.append(stream, event(1, 0), expected=0)
            assert conflict.value.actual == 0
        await faulty.append(stream, event(1, 0), expected=0)

        faulty.faults.inject(StoreFault.OUTAGE, stream, size=0.3)
        began = time.monotonic()
        while True:
            try:
                await faulty.append(stream, event(2, 1), expected=1)
                break
            except OperationalError:
                with pytest.raises(OperationalError):
                    await faulty.read_stream(stream)
                await asyncio.sleep(0.05)  # a client's back-off while the store is down
        assert 0.25 < time.monotonic() - began < 2

        faulty.faults.inject(StoreFault.DELAY, stream, size=0.2)
        began = time.monotonic()
        await faulty.append(stream, event(3, 2), expected=2)
        assert time.monotonic() - began >= 0.2
        assert len(await store.read_stream(stream)) == 4
        counts = faulty.faults.counts
        assert counts["refuse"] == counts["ambiguous"] == counts["delay"] == 1
        assert counts["conflict"] == 2
        assert counts["outage"] >= 2
        assert counts["outage_read"] >= 1
    finally:
        await store.close()


async def test_the_participant_keeps_its_contract_under_faults() -> None:
    participants = FaultParticipants()
    await participants.start()
    headers = {"X-Saga-Attempt": "1", "X-Saga-Id": "s1"}
    charge = {"saga_id": "s1", "step": "pay", "input": {}}
    try:
        async with aiohttp.ClientSession() as http:

            async def post(action: str, key: str, body: dict[str, Any]) -> tuple[int | None, bytes]:
                url = f"{participants.url('payment-service')}/{action}"
                try:
                    async with http.post(url, json=body, headers={**headers, "Idempotency-Key": key}) as r:
                        return r.status, await r.read()
                except aiohttp.ClientError:
                    return None, b""

            participants.inject("payment-service", "charge", ParticipantFault.GATEWAY)
            status, _ = await post("charge", "k1", charge)
            assert status in (502, 504)
            assert participants.effects["k1"].undone is False  # applied behind the gateway
            participants.inject("payment-service", "charge", ParticipantFault.BAD_BODY)
            assert await post("charge", "k1", charge) == (200, b"charge OK")  # replayed, mangled
            status, body = await post("charge", "k1", charge)
            assert (status, json.loads(body)["key"]) == (200, "k1")  # the recorded answer
            assert [c.applied for c in participants.calls] == [True, False, False]

            participants.inject("payment-service", "charge", ParticipantFault.RESET_AFTER)
            assert await post("charge", "k2", charge) == (None, b"")
            assert "k2" in participants.effects  # applied, then the connection was dropped

            refund = {**charge, "action_idempotency_key": "k3", "action_idempotency_keys": ["k1", "k2", "k3"]}
            status, _ = await post("refund", "r1", refund)
            assert status == 200
            assert participants.calls[-1].undone == ("k1", "k2")
            assert participants.effects["k1"].undone
            assert participants.effects["k2"].undone
            status, _ = await post("charge", "k3", charge)
            assert status == 422  # tombstoned: the compensation came first
            assert "k3" not in participants.effects

            participants.rates = ParticipantRates(hang_s=0.4)
            participants.inject("payment-service", "charge", ParticipantFault.HANG)
            with pytest.raises(TimeoutError):
                async with http.post(
                    f"{participants.url('payment-service')}/charge",
                    json=charge,
                    headers={**headers, "Idempotency-Key": "k6"},
                    timeout=aiohttp.ClientTimeout(total=0.1),
                ):
                    pass
            assert (await post("charge", "k6", charge))[0] == 409  # the same key is still being worked on
            await participants.idle(within=5)
            hung = next(c for c in participants.calls if c.fault == "hang")
            assert hung.applied  # the work was done after the client had left ...
            assert hung.status is None  # ... and no answer reached it
            assert "k6" in participants.effects

            participants.inject("payment-service", "charge", ParticipantFault.OVERSIZE)
            status, body = await post("charge", "k4", charge)
            assert status == 200
            assert len(body) > 256 * 1024
            participants.inject("payment-service", "charge", ParticipantFault.BUSY)
            assert (await post("charge", "k5", charge))[0] == 503
            assert "k5" not in participants.effects
            participants.rejectable.add(("payment-service", "charge"))
            participants.inject("payment-service", "charge", ParticipantFault.REJECT)
            assert (await post("charge", "k5", charge))[0] == 422
            assert "k5" not in participants.effects
        assert participants.counts == dict.fromkeys(
            ("gateway", "bad_body", "reset_after", "hang", "oversize", "busy", "reject"), 1
        )
        assert [c.status for c in participants.calls if c.fault == "reset_after"] == [None]
    finally:
        await participants.close()
