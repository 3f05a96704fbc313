"""Crash test: engines in a child process on the embedded store are SIGKILLed again and again while
sagas of two shapes (the brief's three steps in a row, and a parallel DAG) run against participants that
answer slowly past deadlines, busy, or with rejections; then restarted cleanly, let settle, and stopped.

Each kill lands either at a named failpoint (orchestrator/failpoints.py: the child kills itself at the
N-th hit, N seeded) or at a random moment (the test kills it when the K-th further call arrives); every
other run has two engines in one process, competing for deliveries with both timer firers firing. At the
end the history checker (tests/faults/checker.py, R1 to R7) runs over every saga stream and the calls and
ledger of the participants (tests/faults/participant.py, served from this process). The only allowance a
crash needs: an answer sent to an engine that was then killed may be lost with it (crash_support's
``answered_to_the_dead``). The test's own assertions are about the crashes: each armed kill happened
(a failpoint never reached fails), landed while sagas were under way, and the run exercised what it is
for. ``SAGA_CRASH_SEED`` picks the seed; the plan and what happened are printed (``pytest -s``)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from orchestrator.app.commands import SagaCommands
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.failpoints import NAMES
from tests.e2e.conftest import TUNING
from tests.e2e.crash_support import (
    DEFINITIONS,
    FAILPOINT_HITS,
    RATES,
    REJECTABLE,
    SERVICES,
    Child,
    Kill,
    answered_to_the_dead,
    exercised,
    plan_kills,
    read_histories,
    status_of,
)
from tests.faults.checker import PAUSED, TERMINAL, Call, check
from tests.faults.participant import FaultParticipants

SEED = int(os.environ.get("SAGA_CRASH_SEED", "11"))
#: kills at each failpoint in the code, and at random moments
FAILPOINT_KILLS, RANDOM_KILLS = 2, 4
#: before each run, new sagas: at least BATCH, and enough that UNFINISHED are under way (every run must
#: have the work to reach its kill: a failpoint that is not reached fails the test)
BATCH, UNFINISHED = 20, 90
#: seconds a run may take to reach its failpoint, and the final run to settle everything
PHASE_S, SETTLE_S = 30, 60


async def start_sagas(store_dir: Path, count: int, first: int) -> list[str]:
    """Start ``count`` sagas, alternating the two shapes (the store is free: no child is running)."""
    store = await EmbeddedEventStore.open(store_dir)
    try:
        commands = SagaCommands(store, TUNING)
        for definition in DEFINITIONS.values():
            await commands.register_definition("acme", "test", definition)  # same content: a no-op
        names = sorted(DEFINITIONS)
        started = []
        for i in range(first, first + count):
            saga = await commands.start(
                "acme",
                "test",
                name=names[i % len(names)],
                version=None,
                context={"order_id": f"o-{i}", "amount": 10 + i},
                client_id=f"crash-{i}",
            )
            started.append(saga.saga_id)
        return started
    finally:
        await store.close()


async def unfinished(store_dir: Path) -> list[str]:
    return [
        saga_id
        for saga_id, history in (await read_histories(store_dir)).items()
        if status_of(history) not in TERMINAL | PAUSED
    ]


async def crash(child: Child, kill: Kill, participants: FaultParticipants) -> int | None:
    """Let the child run until its kill; its return code (None: the kill never came within PHASE_S)."""
    if kill.failpoint is not None:
        await child.ready()
        return await child.exited(PHASE_S)
    target = len(participants.calls) + kill.nth

    def kill_at_the_call(_: Call) -> None:
        # Right as the call arrives: the engine has sent it and waits for its answer.
        if len(participants.calls) >= target:
            participants.observer = None
            child.kill()

    participants.observer = kill_at_the_call
    try:
        await child.ready()  # with two engines, the first may call (and be killed) before it is said
        code = await child.exited(PHASE_S)
    finally:
        participants.observer = None
    return code


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkilled_engines_leave_a_correct_history(tmp_path: Path) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    store_dir = tmp_path / "store"
    # Every failpoint the code names is in the plan; one that is never hit leaves its child alive, which
    # fails the run (its kill must happen).
    assert set(FAILPOINT_HITS) == set(NAMES)
    failpoints = list(FAILPOINT_HITS)
    kills = plan_kills(rng, RANDOM_KILLS, failpoints * FAILPOINT_KILLS)
    participants = FaultParticipants(SEED, RATES, rejectable=REJECTABLE)
    await participants.start()
    urls = {s: participants.url(s) for s in SERVICES}
    acknowledged: list[str] = []
    report = [f"seed={SEED} (SAGA_CRASH_SEED); failpoints: {failpoints}"]
    try:
        left: list[str] = []
        for i, kill in enumerate(kills):
            count = max(BATCH, UNFINISHED - len(left))
            acknowledged += await start_sagas(store_dir, count, len(acknowledged))
            calls_before, run_began = len(participants.calls), time.monotonic()
            child = Child(
                tmp_path,
                urls,
                engines=kill.engines,
                log=tmp_path / "child.log",
                failpoints=f"{kill.failpoint}=kill@{kill.nth}" if kill.failpoint else "",
                park=kill.park,
            )
            try:
                code = await crash(child, kill, participants)
            finally:
                child.close()
            left = await unfinished(store_dir)
            report.append(
                f"kill {i + 1}: {kill.describe()}: exit {code} after {time.monotonic() - run_began:.1f}s, "
                f"{len(participants.calls) - calls_before} calls, {len(left)} sagas unfinished"
            )
            # The kill must have happened (a failpoint never reached fails here) and landed amid work.
            assert code == -9, f"{kill.describe()} did not kill the child (exit {code})\n" + "\n".join(report)
            assert left, f"{kill.describe()} landed after all work was done\n" + "\n".join(report)

        # The last kill's calls end here: answers to the engines that died may have died with them.
        killed, run_began = len(participants.calls), time.monotonic()
        child = Child(tmp_path, urls, engines=2, log=tmp_path / "child.log")
        try:
            assert await child.ready()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE_S
            while True:
                left = await unfinished(store_dir)
                if not left or loop.time() > deadline:
                    break
                await asyncio.sleep(0.5)  # polling the child's progress, bounded by the deadline
            code, out = await child.stop()
        finally:
            child.close()
        report.append(
            f"final run, 2 engines: exit {code} after {time.monotonic() - run_began:.1f}s, "
            f"{len(participants.calls) - killed} calls"
        )
        assert code == 0, "the clean stop failed\n" + "\n".join(report)
        assert "stopped" in out
        await participants.idle(within=10)  # slow answers still being worked on finish
    finally:
        await participants.close()

    histories = await read_histories(store_dir)
    statuses = [status_of(h) for h in histories.values()]
    endings = {s: statuses.count(s) for s in sorted(set(map(str, statuses)))}
    calls = answered_to_the_dead(participants.calls, killed, histories)
    excused = sum(1 for was, now in zip(participants.calls, calls, strict=True) if was is not now)
    seen = exercised(histories)
    report += [
        f"{len(histories)} sagas, {len(participants.calls)} calls, endings {endings}, "
        f"{time.monotonic() - began:.1f}s",
        f"participant faults {dict(participants.counts)}; exercised {dict(sorted(seen.items()))}",
        f"answers taken as lost with an engine that was killed (R3 excused): {excused}",
    ]
    print("\n".join(report))
    violations = check(histories, calls, participants.effects, acknowledged, DEFINITIONS)
    assert not violations, f"{len(violations)} violation(s) with seed {SEED}:\n" + "\n".join(
        [*violations[:40], *report]
    )
    assert len(histories) == len(acknowledged)
    # The run did what it is for: parallel calls, retries, deadlines, and both endings of both shapes.
    wanted = ["parallel intents (one append)", "retried attempts", "deadlines passed"]
    wanted += [f"{name}: {end}" for name in DEFINITIONS for end in ("SagaCompleted", "SagaCompensated")]
    assert all(seen[w] for w in wanted), report
