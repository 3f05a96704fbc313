"""Saga benchmark: the brief's three-step saga through the real path on the embedded defaults.

Starts go through ``SagaCommands`` (fold, append with NO_STREAM); the engine takes deliveries from the
persistent subscription, runs one actor per saga, appends intents and outcomes (synchronous=FULL), keeps
its timer index; steps are in-process no-ops (or HTTP calls to the demo services). A closed loop of N
clients each starts a saga and waits for its end (seen on a catch-up subscription), then starts the next.
Nothing of that path is switched off for speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.app.commands import SagaCommands
from orchestrator.engine.engine import Engine
from orchestrator.engine.inprocess import InProcessExecutor, InProcessRequest, StepRejected
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.embedded.schema import SCHEMA, WRITER_PRAGMAS, assert_durable
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import EventFilter, RecordedEvent
from orchestrator.observability.logging import configure_logging
from orchestrator.observability.tracing import SagaTracer
from orchestrator.settings import EngineSettings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

SEED = {
    "name": "order-processing",
    "version": "1.0.0",
    "steps": [
        {"name": "validate-order", "service": "order-service", "action": "validate",
         "compensation": "cancel-validation", "timeout": 30000, "retries": 3},
        {"name": "reserve-inventory", "service": "inventory-service", "action": "reserve",
         "compensation": "release-reservation", "timeout": 15000, "retries": 2},
        {"name": "process-payment", "service": "payment-service", "action": "charge",
         "compensation": "refund", "timeout": 45000, "retries": 1},
    ],
}  # fmt: skip
ACTIONS = [
    ("order-service", "validate"),
    ("order-service", "cancel-validation"),
    ("inventory-service", "reserve"),
    ("inventory-service", "release-reservation"),
    ("payment-service", "charge"),
    ("payment-service", "refund"),
]
END_TYPES = "^Saga(Completed|Compensated|DeadLettered|Suspended)$"
STEPS = ["validate-order", "reserve-inventory", "process-payment"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class StepClock:
    """Per-saga timestamps of step calls, for the orchestration overhead between two steps."""

    calls: dict[str, list[tuple[str, float, float]]]
    #: only the latency phase records (recording every saga of a long run would itself grow memory)
    recording: bool = False

    def handler(self, decline: bool) -> Callable[[InProcessRequest], Awaitable[Any]]:
        async def handle(request: InProcessRequest) -> Any:
            begun = time.perf_counter()
            if self.recording:
                self.calls.setdefault(request.saga_id, []).append((request.step, begun, time.perf_counter()))
            if decline and request.step == "process-payment" and "action_idempotency_key" not in request.body:
                raise StepRejected("declined")
            return {"ok": True}

        return handle

    def overheads_ms(self) -> list[float]:
        """Time from one step's return to the next step's call: append outcome + intent, fsync, launch."""
        out: list[float] = []
        for calls in self.calls.values():
            for (_, _, ended), (_, begun, _) in itertools.pairwise(calls):
                out.append((begun - ended) * 1000)
        return out


@dataclass(frozen=True)
class Counters:
    """What the store did so far. Commits (fsynced transactions) and the requests they grouped are known
    only to a store in this process; over gRPC they are the server's and stay ``None``."""

    appends: int
    events: int
    commits: int | None = None
    grouped: int | None = None


class Rig:
    """Store + engine + commands for one measurement, on a fresh data directory.

    The store is the embedded one in ``directory``, unless ``open_store`` gives another (which must then
    say what it did through ``counters``). ``tracer_provider`` is wired as the composition root wires it:
    the saga's spans (commands and engine) and the HTTP client's; None is tracing off.
    """

    def __init__(
        self,
        directory: Path,
        *,
        decline: bool,
        http: dict[str, str] | None = None,
        projections: bool = False,
        open_store: Callable[[], Awaitable[tuple[EventStore, Callable[[], Counters]]]] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.directory = directory
        self.decline = decline
        self.http = http
        self.projections = projections
        self.open_store = open_store
        self.tracer_provider = tracer_provider
        self.clock = StepClock({})
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def _open(self) -> tuple[EventStore, Callable[[], Counters]]:
        if self.open_store is not None:
            return await self.open_store()
        store = await EmbeddedEventStore.open(self.directory / "store")

        def counters() -> Counters:
            s = store.stats
            return Counters(s.appends, s.events, s.commits, s.grouped_requests)

        return store, counters

    async def __aenter__(self) -> Rig:
        configure_logging("json", "WARNING")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store, self.counters = await self._open()
        local = InProcessExecutor()
        router: ExecutorRouter
        if self.http is None:
            for service, action in ACTIONS:
                local.register(service, action, self.clock.handler(self.decline))
            router = ExecutorRouter(local=local)
        else:
            from orchestrator.engine.http_executor import HttpExecutor
            from orchestrator.settings import ServiceConfig

            router = ExecutorRouter(
                http=HttpExecutor(
                    {s: ServiceConfig(base_url=u, pool_limit=128) for s, u in self.http.items()},
                    tracer_provider=self.tracer_provider,
                )
            )
        self.router = router
        tracer = SagaTracer(self.tracer_provider)
        self.engine = Engine(
            self.store,
            router,
            settings=EngineSettings(max_in_flight=4096),
            data_dir=self.directory,
            tracer=tracer,
        )
        self.commands = SagaCommands(self.store, self.engine.tuning, tracer=tracer)
        await self.commands.register_definition("bench", "bench", SEED)
        await self.engine.start()
        if self.projections:
            from prometheus_client import CollectorRegistry

            from projections.embedded_redis import EmbeddedRedis
            from projections.service import start_projector

            redis = EmbeddedRedis(self.directory / "redis")
            url = await asyncio.to_thread(redis.start)
            assert isinstance(self.store, EmbeddedEventStore)  # the projector runs beside the embedded store
            projector = await start_projector(self.store, url, "bench", registry=CollectorRegistry())

            async def stop_redis() -> None:
                await asyncio.to_thread(redis.stop)

            self._closers += [projector.stop, stop_redis]
        self.waiters: dict[str, asyncio.Future[str]] = {}
        self.sub = await self.store.subscribe_all(
            after=await self.store.head_position(), filter=EventFilter(event_type_regex=END_TYPES)
        )
        self.watch = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        async for item in self.sub:
            if isinstance(item, RecordedEvent):
                fut = self.waiters.pop(item.stream, None)
                if fut is not None and not fut.done():
                    fut.set_result(item.type)

    async def one(self, context: dict[str, Any]) -> tuple[str, float]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        begun = time.perf_counter()
        started = await self.commands.start(
            "bench", "bench", name="order-processing", version=None, context=context
        )
        self.waiters[started.stream] = fut
        ending = await fut
        return ending, time.perf_counter() - begun

    async def __aexit__(self, *exc: object) -> None:
        self.watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.watch
        await self.sub.close()
        for close in self._closers:
            await close()
        await self.engine.stop(grace=2)
        await self.router.close()
        await self.store.close()


async def closed_loop(
    rig: Rig,
    inflight: int,
    seconds: float,
    context: dict[str, Any],
    *,
    pooled: list[float] | None = None,
) -> dict[str, Any]:
    """``inflight`` clients for ``seconds``; each saga's latency also goes to ``pooled``, for percentiles
    over several runs."""
    c0 = rig.counters()
    deliveries0 = rig.engine.metrics.registry.get_sample_value("saga_engine_deliveries_total") or 0
    latencies: list[float] = []
    endings: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        # At least one saga per client, however late the client starts (a loaded machine, --quick).
        while True:
            ending, latency = await rig.one(context)
            latencies.append(latency)
            endings[ending] = endings.get(ending, 0) + 1
            if time.perf_counter() >= stop_at:
                return

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(inflight)))
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    c = rig.counters()
    n = len(latencies)
    if pooled is not None:
        pooled += latencies
    deliveries = (
        rig.engine.metrics.registry.get_sample_value("saga_engine_deliveries_total") or 0
    ) - deliveries0
    commits = None if c.commits is None or c0.commits is None else c.commits - c0.commits
    grouped = None if c.grouped is None or c0.grouped is None else c.grouped - c0.grouped
    return {
        "inflight": inflight,
        "sagas": n,
        "seconds": elapsed,
        "sagas_per_s": n / elapsed,
        "cpu_ms_per_saga": cpu * 1000 / n,
        "events_per_s": (c.events - c0.events) / elapsed,
        "appends_per_saga": (c.appends - c0.appends) / n,
        "events_per_saga": (c.events - c0.events) / n,
        "deliveries_per_saga": deliveries / n,
        "fsyncs_per_s": None if commits is None else commits / elapsed,
        "mean_group_size": None if commits is None or grouped is None else grouped / max(1, commits),
        "latency_p50_ms": _pct(latencies, 0.5) * 1000,
        "latency_p99_ms": _pct(latencies, 0.99) * 1000,
        "endings": endings,
        "rss_mib": _rss_mib(),
    }


def store_bound(directory: Path, events_per_append: list[int], group: int, seconds: float) -> dict[str, Any]:
    """Plain sqlite3, same schema and pragmas, our commit shape: per saga one new stream and its appends
    of ``events_per_append`` events, ``group`` appends per transaction. The ceiling the store sets."""
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / "bound.db", isolation_level=None)
    for pragma in WRITER_PRAGMAS:
        conn.execute(pragma)
    assert_durable(conn)
    conn.executescript(SCHEMA)
    data, meta = (
        b'{"step":"reserve-inventory","attempt":1,"output":{"ok":true}}' * 2,
        b'{"tenant":"bench"}' * 4,
    )
    head = sagas = appends = 0
    stream_id = 0
    t0 = time.perf_counter()
    pending: list[tuple[int, int]] = []  # (stream id, events) appends of the next transaction
    plan = [(i, n) for i, n in enumerate(events_per_append)]
    while time.perf_counter() - t0 < seconds:
        for index, n in plan:
            if index == 0:
                stream_id += 1
            pending.append((stream_id, n))
        sagas += 1
        while len(pending) >= group:
            batch, pending = pending[:group], pending[group:]
            conn.execute("BEGIN IMMEDIATE")
            revisions: dict[int, int] = {}
            rows = []
            for sid, n in batch:
                if sid not in revisions:
                    if not conn.execute("SELECT 1 FROM streams WHERE id = ?", (sid,)).fetchone():
                        conn.execute("INSERT INTO streams (id, name, last_revision) VALUES (?, ?, -1)",
                                     (sid, f"saga-{sid:012d}"))  # fmt: skip
                        revisions[sid] = -1
                    else:
                        revisions[sid] = conn.execute(
                            "SELECT last_revision FROM streams WHERE id = ?", (sid,)
                        ).fetchone()[0]
                for _ in range(n):
                    head += 1
                    revisions[sid] += 1
                    rows.append(
                        (head, sid, revisions[sid], os.urandom(16), "StepSucceeded", data, meta, None, 0)
                    )
                appends += 1
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("UPDATE streams SET last_revision = ? WHERE id = ?",
                             [(r, s) for s, r in revisions.items()])  # fmt: skip
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return {"sagas_per_s": sagas / elapsed, "appends_per_s": appends / elapsed, "group": group}


async def _measure(root: Path, quick: bool) -> dict[str, Any]:
    seconds = 0.6 if quick else 8.0
    levels = (8, 32) if quick else (64, 512)
    out: dict[str, Any] = {"throughput": [], "config": {"seconds_per_level": seconds}}
    for variant, decline in (("ok", False), ("compensating", True)):
        for inflight in levels:
            async with Rig(root / f"{variant}-{inflight}", decline=decline) as rig:
                await closed_loop(rig, min(inflight, 16), 0.3, {"warm": True})
                figures = await closed_loop(rig, inflight, seconds, {"order_id": "o-1", "amount": 99.99})
            out["throughput"].append({"variant": variant, **figures})
    async with Rig(root / "latency-1", decline=False) as rig:
        rig.clock.calls.clear()
        rig.clock.recording = True
        single = await closed_loop(rig, 1, seconds / 2, {"order_id": "o-1"})
        overheads = rig.clock.overheads_ms()
    out["step_overhead"] = {
        "inflight": 1,
        "samples": len(overheads),
        "p50_ms": _pct(overheads, 0.5),
        "p99_ms": _pct(overheads, 0.99),
        "saga_p50_ms": single["latency_p50_ms"],
    }
    context = {"order_id": "o-1", "customer_id": "c-1", "amount": 99.99}
    async with Rig(root / "projections", decline=False, projections=True) as rig:
        await closed_loop(rig, min(levels[-1], 16), 0.3, context)
        figures = await closed_loop(rig, levels[-1], seconds, context)
    out["throughput"].append({"variant": "ok+projections", **figures})
    from orchestrator.demo import start_demo_services

    demo = await start_demo_services()
    try:
        async with Rig(root / "http", decline=False, http=demo.base_urls) as rig:
            await closed_loop(rig, min(levels[0], 16), 0.3, context)
            figures = await closed_loop(rig, levels[0], seconds, context)
        out["throughput"].append({"variant": "ok+http(demo)", **figures})
    finally:
        await demo.stop()
    ok_top = next(t for t in out["throughput"] if t["variant"] == "ok" and t["inflight"] == levels[-1])
    shape = [1, 1, 2, 2, 2]  # SagaStarted, StepStarted, (outcome + next intent) x2, outcome + SagaCompleted
    out["bound"] = store_bound(root / "bound", shape, max(1, round(ok_top["mean_group_size"])), seconds / 2)
    out["bound"]["ratio"] = ok_top["sagas_per_s"] / out["bound"]["sagas_per_s"]
    if not quick:
        async with Rig(root / "soak", decline=False) as rig:
            samples: dict[str, float] = {}

            async def sample() -> None:
                t0 = time.perf_counter()
                for mark in (15.0, 60.0):
                    await asyncio.sleep(max(0.0, mark - (time.perf_counter() - t0) - 0.5))
                    samples[f"rss_mib_at_{int(mark)}s"] = _rss_mib()

            sampler = asyncio.create_task(sample())
            soak = await closed_loop(rig, levels[-1], 60.0, {"order_id": "o-1"})
            await sampler
        out["soak"] = {"sagas_per_s": soak["sagas_per_s"], **samples}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(*, quick: bool, data_root: Path) -> dict[str, Any]:
    data_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sagas-", dir=data_root))
    try:
        result = asyncio.run(_measure(root, quick))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = {"cores": os.cpu_count(), "disk": str(data_root.resolve())}
    result["mode"] = "quick" if quick else "full"
    return result


THROUGHPUT_HEADER = (
    " variant         inflight  sagas/s  cpu ms/saga  events/s  appends/saga  deliveries/saga  "
    "fsyncs/s  group  p50 ms  p99 ms"
)


def _or_dash(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


def throughput_row(t: dict[str, Any]) -> str:
    """One line of the throughput table (fsyncs and group size read "-" where the store is remote)."""
    return (
        f" {t['variant']:<15} {t['inflight']:>8} {t['sagas_per_s']:>8.0f} {t['cpu_ms_per_saga']:>12.2f} "
        f"{t['events_per_s']:>9.0f} {t['appends_per_saga']:>13.2f} {t['deliveries_per_saga']:>16.2f} "
        f"{_or_dash(t['fsyncs_per_s'], '9.0f')} {_or_dash(t['mean_group_size'], '6.1f')} "
        f"{t['latency_p50_ms']:>7.1f} {t['latency_p99_ms']:>7.1f}"
    )


def render(r: dict[str, Any]) -> str:
    out = [
        f"Saga benchmark ({r['mode']} mode): the seed's 3-step saga, in-process no-op steps, embedded store "
        f"(synchronous=FULL), persistent subscription, actors, timer index; {r['machine']['cores']} cores",
        "",
        THROUGHPUT_HEADER,
    ]
    out += [throughput_row(t) for t in r["throughput"]]
    s = r["step_overhead"]
    b = r["bound"]
    out += [
        "",
        f"per-step orchestration overhead at 1 in flight: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms "
        f"({s['samples']} samples); saga p50 {s['saga_p50_ms']:.1f} ms",
        f"store bound (plain sqlite3, our commit shape, {b['group']} appends/commit): "
        f"{b['sagas_per_s']:,.0f} sagas/s; our ok throughput at the top level is {b['ratio']:.2f} of it",
    ]
    if "soak" in r:
        k = r["soak"]
        out.append(
            f"soak 60 s: {k['sagas_per_s']:.0f} sagas/s; RSS {k.get('rss_mib_at_15s', 0):.0f} MiB at 15 s, "
            f"{k.get('rss_mib_at_60s', 0):.0f} MiB at 60 s"
        )
    out.append(f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    return "\n".join(out)
