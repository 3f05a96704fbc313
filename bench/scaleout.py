"""Scale-out benchmark: sagas/s with 1, 2 and 3 engine processes in cluster mode, as processes.

The production shape from ``orchestrator.dev.Deployment``: the local KurrentDB-compatible server, Redis,
one API process and N engine processes (``SAGA_CLUSTER__ENABLED=true``: one leader, timers sharded over
the engines, the persistent subscription's pinned consumers sharing the sagas). No projector: it is not on
a saga's path (starting and finishing a saga reads no read model) and runs active/standby, so it would
not scale with N but would take a constant share of the same two cores.

Steps are HTTP calls to a no-op participant served by this process (answers ``{"ok": true}`` at once),
not the demo participants, whose idempotency ledgers would be measured too. A closed loop of clients
starts sagas through the API process and waits for each saga's end, seen on a catch-up subscription of
``$all`` filtered by type (as ``bench.sagas`` does). CPU is read from ``/proc/<pid>/stat`` for every child
and from this process's rusage (the load driver, the participant and the subscription: "rig"). In the
same run: the store's bound (``bench.grpc_path.grpc_bound``: the saga's commit shape from as many
concurrent writers, no engine, on a server of its own) and the machine's (cores / CPU per saga).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import shutil
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.grpc_path import grpc_bound, process_cpu_s, server_process
from bench.sagas import END_TYPES, SEED, _pct
from orchestrator.brief_config import ENVIRONMENT as BRIEF_ENVIRONMENT
from orchestrator.dev import Deployment, LocalServer, Topology
from orchestrator.eventstore.kurrent import open_kurrent_store
from orchestrator.eventstore.port import Subscription
from orchestrator.eventstore.types import EventFilter, RecordedEvent
from orchestrator.records.streams import saga_stream
from projections.embedded_redis import EmbeddedRedis

SERVICES = ("order-service", "inventory-service", "payment-service")
STEP_CALLS = "saga_step_duration_seconds_count"
#: every role's settings beyond what the Deployment sets: cluster mode, quiet logs (a log line per saga
#: would be read by this process and cost CPU on both sides of the pipe)
ROLE_ENV = {
    "SAGA_CLUSTER__ENABLED": "true",
    "SAGA_LOG_FORMAT": "json",
    "SAGA_LOG_LEVEL": "WARNING",
}
SETTLE_S = 60.0


class Tails:
    """The Deployment's sink: the last lines of each child, shown if a level fails."""

    def __init__(self, keep: int = 30) -> None:
        self._keep = keep
        self._lines: dict[str, deque[str]] = {}

    def __call__(self, name: str, line: str) -> None:
        self._lines.setdefault(name, deque(maxlen=self._keep)).append(line)

    def dump(self) -> str:
        return "\n".join(f"--- {name}\n" + "\n".join(lines) for name, lines in self._lines.items())


def _outside_settings() -> dict[str, str]:
    """This environment without anything a role would read as a setting (the figures are the defaults')."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SAGA_") and k not in BRIEF_ENVIRONMENT}


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy so far (every process, ours or not; /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def participant() -> AsyncIterator[str]:
    """Every service's every action answered ``{"ok": true}`` at once; the base URL (``/{service}``)."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{service}/{action}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class Ends:
    """Sagas' ends seen on a catch-up subscription of ``$all`` (from its head on), by saga stream."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[str]] = {}
        #: ends seen before their client knew the saga's id (the start's answer was still on its way)
        self._early: dict[str, str] = {}

    @asynccontextmanager
    async def watching(self, store_url: str) -> AsyncIterator[Ends]:
        store = await open_kurrent_store(store_url)
        try:
            sub = await store.subscribe_all(
                after=await store.head_position(), filter=EventFilter(event_type_regex=END_TYPES)
            )
            task = asyncio.create_task(self._watch(sub))
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await sub.close()
        finally:
            await store.close()

    async def _watch(self, sub: Subscription) -> None:
        async for item in sub:
            if isinstance(item, RecordedEvent):
                fut = self._waiters.pop(item.stream, None)
                if fut is None:
                    self._early[item.stream] = item.type
                elif not fut.done():
                    fut.set_result(item.type)

    async def end_of(self, saga_id: str) -> str:
        stream = saga_stream(saga_id)
        if stream in self._early:
            return self._early.pop(stream)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[stream] = fut
        return await fut


async def closed_loop(
    http: aiohttp.ClientSession, api: str, ends: Ends, inflight: int, seconds: float
) -> dict[str, Any]:
    """``inflight`` clients, each starting a saga through the API and waiting for its end, for ``seconds``."""
    latencies: list[float] = []
    endings: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    counter = itertools.count()

    async def client() -> None:
        while True:  # at least one saga per client, however late it starts
            body = {"saga_name": SEED["name"], "context": {"order_id": f"o-{next(counter)}", "amount": 9.99}}
            begun = time.perf_counter()
            async with http.post(f"{api}/api/v1/sagas/instances", json=body) as response:
                if response.status != 201:
                    raise RuntimeError(f"start answered {response.status}: {await response.text()}")
                saga_id = str((await response.json())["saga_id"])
            ending = await ends.end_of(saga_id)
            latencies.append(time.perf_counter() - begun)
            endings[ending] = endings.get(ending, 0) + 1
            if time.perf_counter() >= stop_at:
                return

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(inflight)))
    elapsed = time.perf_counter() - t0
    return {
        "sagas": len(latencies),
        "seconds": elapsed,
        "sagas_per_s": len(latencies) / elapsed,
        "latency_p50_ms": _pct(latencies, 0.5) * 1000,
        "latency_p99_ms": _pct(latencies, 0.99) * 1000,
        "endings": endings,
    }


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """The sum of ``name``'s samples on one process's ``/metrics``."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
    )


async def _settled(http: aiohttp.ClientSession, deploy: Deployment, engines: int) -> None:
    """Until the cluster has a leader whose shard assignment covers every engine, and every engine is a
    consumer of the group (measuring before would time the hand-overs, not the steady state)."""
    url = deploy.roles[deploy.names_of("engine")[0]].url
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        async with http.get(f"{url}/health/cluster") as response:
            view = await response.json()
        assignment = view.get("assignment") or {}
        subscription = view["node"].get("subscription") or {}
        if len(assignment.get("by_node") or {}) == engines and subscription.get("connections") == engines:
            return
        await asyncio.sleep(0.2)  # polling other processes, bounded by the deadline
    raise RuntimeError(f"{engines} engines did not settle into one cluster within {SETTLE_S:.0f} s")


def _cpu(deploy: Deployment, store: LocalServer, redis: EmbeddedRedis) -> dict[str, float]:
    """CPU seconds so far, by part: the roles (summed by role), the store server, Redis, this process."""
    assert store.child is not None
    assert redis.pid is not None
    out = {"engines": 0.0, "api": 0.0}
    for name, role in deploy.roles.items():
        out["engines" if role.role == "engine" else "api"] += process_cpu_s(deploy.child(name).pid)
    out["store"] = process_cpu_s(store.child.pid)
    out["redis"] = process_cpu_s(redis.pid)
    out["rig"] = _self_cpu_s()
    out["machine"] = machine_busy_s()
    return out


@asynccontextmanager
async def deployment(
    root: Path, engines: int, participant_url: str
) -> AsyncIterator[tuple[Deployment, LocalServer, EmbeddedRedis]]:
    """One API process and ``engines`` engine processes in cluster mode, no projector, on a local server
    and a Redis of their own (started here, so that their pids are known)."""
    redis = EmbeddedRedis(root / "redis")
    redis_url = await asyncio.to_thread(redis.start)
    store = LocalServer()
    tails = Tails()
    deploy = Deployment(
        root,
        topology=Topology(apis=1, engines=engines, projectors=0),
        store=store,
        redis_url=redis_url,
        services={s: {"base_url": f"{participant_url}/{s}", "pool_limit": 256} for s in SERVICES},
        demo=False,
        environment={**ROLE_ENV, "SAGA_CLUSTER__NODES": str(engines + 1)},
        base_environment=_outside_settings(),
        sink=tails,
    )
    try:
        async with deploy:
            yield deploy, store, redis
    except BaseException:
        print(tails.dump())
        raise
    finally:
        await asyncio.to_thread(redis.stop)


async def _level(
    root: Path, engines: int, participant_url: str, inflight: int, seconds: float, warm_s: float
) -> dict[str, Any]:
    async with (
        deployment(root, engines, participant_url) as (deploy, store, redis),
        aiohttp.ClientSession() as http,
    ):
        api = deploy.api_urls[0]
        async with http.post(f"{api}/api/v1/sagas/definitions", json=SEED) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"registering: {response.status} {await response.text()}")
        await _settled(http, deploy, engines)
        engine_urls = [deploy.roles[n].url for n in deploy.names_of("engine")]
        async with Ends().watching(deploy.store_url) as ends:
            await closed_loop(http, api, ends, min(inflight, 16), warm_s)
            calls0 = [await _metric(http, u, STEP_CALLS) for u in engine_urls]
            cpu0 = _cpu(deploy, store, redis)
            figures = await closed_loop(http, api, ends, inflight, seconds)
            cpu1 = _cpu(deploy, store, redis)
            calls1 = [await _metric(http, u, STEP_CALLS) for u in engine_urls]
    n, elapsed = figures["sagas"], figures["seconds"]
    machine = cpu1.pop("machine") - cpu0.pop("machine")
    cpu = {part: (cpu1[part] - cpu0[part]) * 1000 / n for part in cpu0}
    total_ms = sum(cpu.values())
    return {
        "engines": engines,
        "inflight": inflight,
        **figures,
        "cpu_ms_per_saga": {**cpu, "total": total_ms},
        "cores_used": total_ms * n / 1000 / elapsed,
        "store_cores_used": cpu["store"] * n / 1000 / elapsed,
        # The rest of the machine's busy time meanwhile: other people's work on a shared machine.
        "other_cores_used": max(0.0, machine / elapsed - total_ms * n / 1000 / elapsed),
        "machine_bound_sagas_per_s": (os.cpu_count() or 1) * 1000 / total_ms,
        "step_calls_by_engine": [round(b - a) for a, b in zip(calls0, calls1, strict=True)],
    }


async def _bound(root: Path, writers: int, seconds: float) -> dict[str, Any]:
    with server_process(root) as server:
        cpu0, rig0, machine0 = server.cpu_s(), _self_cpu_s(), machine_busy_s()
        bound = await grpc_bound(server.url, writers, seconds)
        store, rig = server.cpu_s() - cpu0, _self_cpu_s() - rig0
        machine = machine_busy_s() - machine0
    elapsed = bound["seconds"]
    bound["store_cores_used"] = store / elapsed
    bound["writer_cores_used"] = rig / elapsed
    bound["other_cores_used"] = max(0.0, (machine - store - rig) / elapsed)
    return bound


async def _measure(root: Path, quick: bool) -> dict[str, Any]:
    counts = (1, 2) if quick else (1, 2, 3)
    inflight = 8 if quick else 64
    seconds, warm_s = (2.0, 0.5) if quick else (10.0, 2.0)
    out: dict[str, Any] = {
        "levels": [],
        "config": {"seconds_per_level": seconds, "inflight": inflight, "projector": False},
    }
    async with participant() as url:
        for engines in counts:
            level = await _level(root / f"engines-{engines}", engines, url, inflight, seconds, warm_s)
            out["levels"].append(level)
    out["bound"] = await _bound(root / "bound", inflight, seconds / 2)
    for level in out["levels"]:
        level["store_bound_ratio"] = level["sagas_per_s"] / out["bound"]["sagas_per_s"]
    return out


def run(*, quick: bool, data_root: Path) -> dict[str, Any]:
    data_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="scaleout-", dir=data_root))
    began = time.perf_counter()
    try:
        result = asyncio.run(_measure(root, quick))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = {"cores": os.cpu_count(), "disk": str(data_root.resolve())}
    result["mode"] = "quick" if quick else "full"
    result["wall_s"] = time.perf_counter() - began
    return result


def render(r: dict[str, Any]) -> str:
    cores = r["machine"]["cores"]
    b = r["bound"]
    out = [
        f"Scale-out benchmark ({r['mode']} mode): N engine processes + 1 API process in cluster mode on the "
        f"local KurrentDB-compatible server (its own process), Redis, no projector; HTTP steps to a no-op "
        f"participant in the bench process; closed loop through the API, ends seen on $all; {cores} cores",
        "",
        " engines  inflight  sagas/s  p50 ms  p99 ms  machine bound  x store bound  step calls by engine",
    ]
    out += [
        f" {t['engines']:>7} {t['inflight']:>9} {t['sagas_per_s']:>8.1f} {t['latency_p50_ms']:>7.0f} "
        f"{t['latency_p99_ms']:>7.0f} {t['machine_bound_sagas_per_s']:>14.1f} {t['store_bound_ratio']:>14.2f}"
        f"  {t['step_calls_by_engine']}"
        for t in r["levels"]
    ]
    out += [
        "",
        " engines  cpu ms/saga: engines    api  store  redis    rig  total  cores used: ours  store  others",
    ]
    for t in r["levels"]:
        c = t["cpu_ms_per_saga"]
        out.append(
            f" {t['engines']:>7} {c['engines']:>21.2f} {c['api']:>6.2f} {c['store']:>6.2f} "
            f"{c['redis']:>6.2f} {c['rig']:>6.2f} {c['total']:>6.2f} {t['cores_used']:>17.2f} "
            f"{t['store_cores_used']:>6.2f} {t['other_cores_used']:>7.2f}"
        )
    out += [
        "",
        f"store bound (the commit shape appended by {b['writers']} concurrent writers through the adapter, "
        f"no engine, a server of its own): {b['sagas_per_s']:,.1f} sagas/s, {b['appends_per_s']:,.0f} "
        f"appends/s; cores used: server {b['store_cores_used']:.2f}, writers {b['writer_cores_used']:.2f}, "
        f"others {b['other_cores_used']:.2f}",
        f"machine bound: {cores} cores / total CPU per saga (every process of ours, the rig included: the "
        f"load driver, the participant and the $all subscription); others: the machine's busy time "
        f"that is not ours",
        f"wall time {r['wall_s']:.0f} s",
    ]
    return "\n".join(out)
