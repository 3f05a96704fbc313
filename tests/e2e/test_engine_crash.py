"""Crash test: an engine in a child process is SIGKILLed at random moments while 200 sagas run against
flaky participants, then restarted. Every saga must end terminal or waiting for a person, every call must
have been preceded by its durable intent, keys and bodies must be stable, compensation ordered."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.engine.commands import SagaCommands
from orchestrator.eventstore.embedded import EmbeddedEventStore
from tests.e2e.conftest import SERVICES, TUNING, seed_definition

ROOT = Path(__file__).resolve().parents[2]
SAGAS = 200
END = {"SagaCompleted", "SagaCompensated", "SagaDeadLettered", "SagaSuspended"}
STEP_ORDER = ["validate-order", "reserve-inventory", "process-payment"]


class FlakyParticipants:
    """Contract-following participants: one result per idempotency key (a repeat gets the same answer),
    tombstones for compensations that arrive first; transient 503s and slow answers at random."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.calls: list[tuple[str, str, str, int, bytes]] = []
        self.results: dict[str, int] = {}
        self.tombstones: set[str] = set()
        self.server: TestServer | None = None
        self._waiting: tuple[int, asyncio.Event] | None = None

    async def until_calls(self, count: int) -> None:
        """Return once ``count`` calls in all have arrived."""
        reached = asyncio.Event()
        self._waiting = (count, reached)
        if len(self.calls) >= count:
            reached.set()
        await reached.wait()

    async def handle(self, request: web.Request) -> web.Response:
        service, action = request.match_info["service"], request.match_info["action"]
        key = request.headers["Idempotency-Key"]
        body = await request.read()
        self.calls.append((service, action, key, int(request.headers["X-Saga-Attempt"]), body))
        if self._waiting is not None and len(self.calls) >= self._waiting[0]:
            self._waiting[1].set()
        roll = self.random.random()
        if roll < 0.15:
            return web.json_response({"error": "busy"}, status=503)
        if roll < 0.20:
            await asyncio.sleep(0.3)
        if key in self.results:
            return web.json_response({"key": key}, status=self.results[key])
        payload = json.loads(body)
        if "action_idempotency_key" in payload:  # a compensation
            self.tombstones.add(payload["action_idempotency_key"])
            status = 200
        elif key in self.tombstones:
            status = 422  # compensated before it arrived: refuse the late action
        elif action == "charge" and self.random.random() < 0.3:
            status = 422
        else:
            status = 200
        self.results[key] = status
        return web.json_response({"key": key}, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{service}/{action}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    def urls(self) -> dict[str, str]:
        assert self.server is not None
        return {s: f"http://127.0.0.1:{self.server.port}/{s}" for s in SERVICES}


def _spawn(tmp: Path, urls: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_engine_child.py")), str(tmp), json.dumps(urls)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )


async def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.strip() == "ready"


async def _histories(tmp: Path) -> dict[str, list[Any]]:
    store = await EmbeddedEventStore.open(tmp / "store", read_only=True)
    try:
        streams: dict[str, list[Any]] = defaultdict(list)
        async for batch in store.read_all():
            for e in batch:
                if e.stream.startswith("saga-"):
                    streams[e.stream].append(e)
        return streams
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkilled_engine_recovers_every_saga(tmp_path: Path) -> None:
    participants = FlakyParticipants(seed=7)
    await participants.start()
    steps = [dict(s, timeout=1000) for s in seed_definition()["steps"]]
    store = await EmbeddedEventStore.open(tmp_path / "store")
    commands = SagaCommands(store, TUNING)
    await commands.register_definition("acme", "test", seed_definition(steps=steps))
    for i in range(SAGAS):
        await commands.start("acme", "test", name="order-processing", version=None, context={"n": i})
    await store.close()

    chaos = random.Random(11)
    finished_at_kills: list[int] = []
    for _ in range(4):
        proc = _spawn(tmp_path, participants.urls())
        await _ready(proc)
        # Kill it mid-flight: after a random number of further calls reached the participants.
        await asyncio.wait_for(participants.until_calls(len(participants.calls) + chaos.randint(20, 150)), 30)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
        assert proc.stdout is not None
        proc.stdout.close()
        finished_at_kills.append(sum(1 for h in (await _histories(tmp_path)).values() if h[-1].type in END))
    # The kills must land while work is in flight, or this test proves nothing.
    assert finished_at_kills[0] < SAGAS

    proc = _spawn(tmp_path, participants.urls())
    await _ready(proc)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        histories = await _histories(tmp_path)
        done = sum(1 for h in histories.values() if h[-1].type in END)
        if done == SAGAS or loop.time() > deadline:
            break
        await asyncio.sleep(0.5)  # polling a child process's progress, bounded by the deadline
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0
    assert proc.stdout is not None
    assert "stopped" in proc.stdout.read()
    proc.stdout.close()
    assert participants.server is not None
    await participants.server.close()

    histories = await _histories(tmp_path)
    assert len(histories) == SAGAS
    unfinished = [s for s, h in histories.items() if h[-1].type not in END]
    assert unfinished == []
    endings = {h[-1].type for h in histories.values()}
    assert {"SagaCompleted", "SagaCompensated"} <= endings

    intents: dict[str, tuple[str, str]] = {}  # idempotency key -> (stream, step)
    for stream, history in histories.items():
        keys: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        started_steps: set[str] = set()
        compensated_order: list[str] = []
        for e in history:
            data = json.loads(e.data)
            if e.type == "StepStarted":
                keys[(data["step"], "action", data["generation"])].add(data["idempotency_key"])
                started_steps.add(data["step"])
                intents[data["idempotency_key"]] = (stream, data["step"])
            elif e.type == "CompensationStepStarted":
                keys[(data["step"], "compensation", data["generation"])].add(data["idempotency_key"])
                intents[data["idempotency_key"]] = (stream, data["step"])
                # No compensation for a step that never had a recorded intent.
                assert data["step"] in started_steps, (stream, data["step"])
                if data["step"] not in compensated_order:
                    compensated_order.append(data["step"])
        assert all(len(k) == 1 for k in keys.values()), (stream, keys)
        # Sequential saga: compensations run from the last step back to the first.
        ranks = [STEP_ORDER.index(s) for s in compensated_order]
        assert ranks == sorted(ranks, reverse=True), (stream, compensated_order)

    bodies: dict[str, set[bytes]] = defaultdict(set)
    for service, action, key, _attempt, body in participants.calls:
        # Intent before effect: every call any participant saw has its durable intent in a saga stream.
        assert key in intents, (service, action, key)
        bodies[key].add(body)
    assert all(len(b) == 1 for b in bodies.values())
