"""Tracing overhead: the saga benchmark's HTTP variant with tracing off, and on at sample ratio 1.0 and 0.1.

The HTTP variant is the one where tracing does the most work: per saga a ``saga.start`` span, a span per
step attempt and the aiohttp client span of each step call (which also injects ``traceparent``), seven
spans, against four with in-process steps. Tracing is set up by the composition root's own
``open_tracing`` from ``observability.tracing`` settings, and the provider is wired as ``serve`` wires it
(the engine's and the commands' ``SagaTracer``, the HTTP executor's client spans). The demo participants
are not traced: they stand for other services, whose spans are theirs to pay for.

Spans go over OTLP/HTTP (the SDK's batch processor and exporter) to a receiver in its own process that
decodes every ``ExportTraceServiceRequest`` and counts the spans per ``service.name``, which tells the
variants apart (``bench.otlp_receiver``). A span processor beside the batch one counts the spans ended,
so ``ended - received`` is what the exporter's queue dropped (or failed to send). ``plain`` is the rig
with no tracing settings at all, beside ``off``, the settings' default: off must cost nothing, so the two
differ by noise only.

The four rigs are open at once (an idle one costs ~0.3 ms of CPU a second) and take turns in short runs,
the order rotated every round, so that the load of a shared machine falls on all of them alike; each run
ends with a flush of its provider, so the CPU of exporting its spans is charged to it. The bound is the
exporter's: SDK spans made in a tight loop through the same processor, exporter and receiver, no engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from bench.otlp_receiver import ReceiverProcess, receiver_process
from bench.sagas import THROUGHPUT_HEADER, Rig, _cpu, _pct, closed_loop, throughput_row
from orchestrator.composition import open_tracing
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import EventFilter
from orchestrator.observability import tracing_setup
from orchestrator.observability.tracing import TraceContext
from orchestrator.settings import ObservabilitySettings, Settings, TracingSettings

#: spans of one sampled ok saga on the HTTP path: saga.start, and per step its attempt and client spans
SPANS_PER_SAGA = 7
CONTEXT = {"order_id": "o-1", "customer_id": "c-1", "amount": 99.99}
OFF = "http trace=off"


@dataclass(frozen=True)
class Variant:
    name: str
    #: None: no tracing settings at all (the rig as the other benchmarks build it)
    settings: TracingSettings | None


def _variants(endpoint: str) -> list[Variant]:
    def on(ratio: float) -> TracingSettings:
        return TracingSettings(
            enabled=True,
            endpoint=endpoint,
            protocol="http/protobuf",
            sample_ratio=ratio,
            service_name=f"bench-trace-{ratio}",
        )

    return [
        Variant("http plain", None),
        Variant(OFF, TracingSettings(enabled=False, endpoint=endpoint)),
        Variant("http trace=1.0", on(1.0)),
        Variant("http trace=0.1", on(0.1)),
    ]


class EndedSpans(SpanProcessor):
    """Counts the spans ended (the sampled ones: the SDK hands no other span to a processor)."""

    def __init__(self) -> None:
        self.count = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.count += 1


def _check_plan(settings: TracingSettings, endpoint: str) -> None:
    """``OTEL_*`` variables win over the settings; the benchmark must export where, and as what, it counts."""
    chosen = tracing_setup.plan(settings)
    wanted = ("otlp", "http/protobuf", f"{endpoint}/v1/traces", settings.sample_ratio, settings.service_name)
    got = (chosen.exporter, chosen.protocol, chosen.endpoint, chosen.sample_ratio, chosen.service_name)
    if got != wanted:
        raise RuntimeError(
            f"OTEL_* variables in the environment override the benchmark's tracing settings: {got} instead "
            f"of {wanted}; unset them to run this benchmark"
        )


@contextlib.asynccontextmanager
async def _tracing(
    variant: Variant, endpoint: str
) -> AsyncIterator[tuple[TracerProvider | None, EndedSpans]]:
    ended = EndedSpans()
    if variant.settings is None:
        yield None, ended
        return
    if variant.settings.enabled:
        _check_plan(variant.settings, endpoint)
    # The composition root's own set-up (shut down, which flushes, on leaving).
    settings = Settings(observability=ObservabilitySettings(tracing=variant.settings))
    async with open_tracing(settings) as provider:
        if provider is not None:
            provider.add_span_processor(ended)
        yield provider, ended


def _sampled(stored: TraceContext) -> bool:
    """The W3C ``sampled`` flag (bit 0 of the trace flags; the SDK sets the ``random`` bit beside it)."""
    parts = stored.traceparent.split("-")
    return len(parts) == 4 and bool(int(parts[3], 16) & 0x01)


async def _stored_contexts(store: EventStore) -> dict[str, int]:
    """What the sagas' ``SagaStarted`` metadata carries: a trace context, and whether it is sampled."""
    found = {"sagas": 0, "with_traceparent": 0, "sampled": 0}
    async for batch in store.read_all(filter=EventFilter(event_type_regex="^SagaStarted$")):
        for event in batch:
            stored = TraceContext.from_metadata(json.loads(event.metadata))
            found["sagas"] += 1
            found["with_traceparent"] += bool(stored)
            found["sampled"] += _sampled(stored)
    return found


@dataclass
class Arm:
    """One variant's rig, open for the whole benchmark."""

    variant: Variant
    rig: Rig
    provider: TracerProvider | None
    ended: EndedSpans
    latencies: list[float] = field(default_factory=list)

    async def flush(self) -> None:
        if self.provider is not None:
            await asyncio.to_thread(self.provider.force_flush)


async def _run(arm: Arm, receiver: ReceiverProcess, inflight: int, seconds: float) -> dict[str, Any]:
    cpu0, receiver_cpu0 = _cpu(), receiver.cpu_s()
    figures = await closed_loop(arm.rig, inflight, seconds, CONTEXT, pooled=arm.latencies)
    # The run's last spans are still queued: exporting them is part of what the run cost.
    await arm.flush()
    cpu, receiver_cpu = _cpu() - cpu0, receiver.cpu_s() - receiver_cpu0
    return {
        "variant": arm.variant.name,
        **figures,
        "cpu_ms_per_saga": cpu * 1000 / figures["sagas"],
        "receiver_cpu_ms_per_saga": receiver_cpu * 1000 / figures["sagas"],
    }


def _pool(name: str, runs: Sequence[dict[str, Any]], latencies: list[float]) -> dict[str, Any]:
    """One row from several runs of a variant: totals over total time, per-saga figures over all sagas,
    percentiles over every saga's latency."""
    sagas: int = sum(r["sagas"] for r in runs)
    seconds: float = sum(r["seconds"] for r in runs)

    def per_saga(key: str) -> float:
        total: float = sum(r[key] * r["sagas"] for r in runs)
        return total / sagas

    commits = sum(r["fsyncs_per_s"] * r["seconds"] for r in runs)
    grouped = sum(r["mean_group_size"] * r["fsyncs_per_s"] * r["seconds"] for r in runs)
    endings: Counter[str] = Counter()
    for r in runs:
        endings.update(r["endings"])
    return {
        "variant": name,
        "runs": len(runs),
        "inflight": runs[0]["inflight"],
        "sagas": sagas,
        "seconds": seconds,
        "sagas_per_s": sagas / seconds,
        "cpu_ms_per_saga": per_saga("cpu_ms_per_saga"),
        "events_per_s": per_saga("events_per_saga") * sagas / seconds,
        "appends_per_saga": per_saga("appends_per_saga"),
        "events_per_saga": per_saga("events_per_saga"),
        "deliveries_per_saga": per_saga("deliveries_per_saga"),
        "fsyncs_per_s": commits / seconds,
        "mean_group_size": grouped / max(1.0, commits),
        "latency_p50_ms": _pct(latencies, 0.5) * 1000,
        "latency_p99_ms": _pct(latencies, 0.99) * 1000,
        "endings": dict(endings),
        "receiver_cpu_ms_per_saga": per_saga("receiver_cpu_ms_per_saga"),
    }


def _produce(provider: TracerProvider, seconds: float) -> None:
    tracer = provider.get_tracer("bench")
    attributes: dict[str, str | int] = {
        "saga.id": "0" * 32,
        "saga.tenant": "bench",
        "saga.step.name": "reserve-inventory",
        "saga.step.phase": "action",
        "saga.step.attempt": 1,
        "saga.step.idempotency_key": "k" * 40,
        "peer.service": "inventory-service",
    }
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        for _ in range(100):
            tracer.start_span("saga.step reserve-inventory", attributes=attributes).end()


@contextlib.contextmanager
def _quiet_queue() -> Iterator[None]:
    """The batch processor logs a warning when its queue drops; the bound makes it drop on purpose and
    counts the drops itself."""
    logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


async def exporter_bound(receiver: ReceiverProcess, seconds: float) -> dict[str, Any]:
    """The exporter's ceiling: spans made as fast as one thread can, through the batch processor and the
    OTLP/HTTP exporter to the receiver. When the producer outruns the exporter the queue drops, and what
    arrives per second is what the exporter can carry."""
    settings = TracingSettings(
        enabled=True, endpoint=receiver.endpoint, sample_ratio=1.0, service_name="bench-bound"
    )
    _check_plan(settings, receiver.endpoint)
    provider = tracing_setup.build_provider(tracing_setup.plan(settings))
    ended = EndedSpans()
    provider.add_span_processor(ended)
    before = await receiver.counts()
    cpu0, t0 = _cpu(), time.perf_counter()
    with _quiet_queue():
        try:
            await asyncio.to_thread(_produce, provider, seconds)
        finally:
            await asyncio.to_thread(provider.shutdown)  # flushes
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    received = (await receiver.counts())["spans"] - before["spans"]
    return {
        "seconds": elapsed,
        "spans_ended": ended.count,
        "spans_received": received,
        "spans_dropped": ended.count - received,
        "spans_per_s": received / elapsed,
        "cpu_us_per_span": cpu * 1e6 / max(1, received),
        "sagas_per_s": received / elapsed / SPANS_PER_SAGA,
    }


async def _arms(
    stack: contextlib.AsyncExitStack,
    root: Path,
    variants: list[Variant],
    base_urls: dict[str, str],
    endpoint: str,
) -> list[Arm]:
    arms = []
    for v in variants:
        provider, ended = await stack.enter_async_context(_tracing(v, endpoint))
        directory = root / v.name.replace(" ", "-").replace("=", "")
        # Entered after its provider, so left before it: every span has ended when the provider flushes.
        rig = await stack.enter_async_context(
            Rig(directory, decline=False, http=base_urls, tracer_provider=provider)
        )
        arms.append(Arm(v, rig, provider, ended))
    return arms


def _delivery(arm: Arm, seen: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """The spans of one variant that reached the receiver (told apart by ``service.name``), against those
    its provider ended; over every saga the rig ran, warm-up included, all ended before the flush."""
    s = arm.variant.settings
    by_name: dict[str, int] = counts["by_service"].get(s.service_name, {}) if s is not None else {}
    received = sum(by_name.values())
    sagas = max(1, seen["stored"]["sagas"])
    return {
        "spans_ended": arm.ended.count,
        "spans_received": received,
        "spans_dropped": arm.ended.count - received,
        "spans_per_saga": received / sagas,
        "sampled_share": seen["stored"]["sampled"] / sagas,
        "by_name": by_name,
    }


async def _measure(root: Path, quick: bool) -> dict[str, Any]:
    # Four rounds of 2.5 s per variant: about 50 s in all, so it is part of the default run. The level is
    # the sagas benchmark's for its HTTP variant.
    seconds = 0.6 if quick else 2.5
    inflight = 8 if quick else 64
    rounds = 1 if quick else 4
    from orchestrator.demo import start_demo_services

    out: dict[str, Any] = {
        "config": {"seconds_per_run": seconds, "rounds": rounds, "inflight": inflight},
        "runs": [],
        "tracing": {},
    }
    with receiver_process(root / "receiver.log") as receiver:
        variants = _variants(receiver.endpoint)
        demo = await start_demo_services()
        try:
            async with contextlib.AsyncExitStack() as stack:
                arms = await _arms(stack, root, variants, demo.base_urls, receiver.endpoint)
                for arm in arms:
                    await closed_loop(arm.rig, min(inflight, 16), 0.3, CONTEXT)
                    await arm.flush()  # the warm-up's spans are not charged to a run
                for number in range(rounds):
                    for arm in arms[number % len(arms) :] + arms[: number % len(arms)]:
                        run = await _run(arm, receiver, inflight, seconds)
                        out["runs"].append({"round": number, **run})
                # With every provider open: none of them became the global one.
                global_provider = type(trace.get_tracer_provider()).__name__
                for arm in arms:
                    out["tracing"][arm.variant.name] = {
                        "stored": await _stored_contexts(arm.rig.store),
                        "sdk_provider": arm.provider is not None,
                        "engine_traced": arm.rig.engine.tracer.enabled,
                        "global_provider": global_provider,
                    }
            # Left: every saga has ended, the engines stopped, and each provider flushed what it had.
        finally:
            await demo.stop()
        counts = await receiver.counts()
        out["bound"] = await exporter_bound(receiver, 0.3 if quick else 2.0)
    for arm in arms:
        out["tracing"][arm.variant.name] |= _delivery(arm, out["tracing"][arm.variant.name], counts)
    out["export_requests"] = counts["requests"]
    out["rejected"] = counts["rejected"]
    out["throughput"] = [
        _pool(a.variant.name, [r for r in out["runs"] if r["variant"] == a.variant.name], a.latencies)
        for a in arms
    ]
    _compare(out)
    on = next(t for t in out["throughput"] if t["variant"] == "http trace=1.0")
    spans_per_s = out["tracing"]["http trace=1.0"]["spans_per_saga"] * on["sagas_per_s"]
    out["bound"]["ratio"] = spans_per_s / out["bound"]["spans_per_s"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _compare(out: dict[str, Any]) -> None:
    """Each variant against off: pooled, and the spread of the same ratio between runs of one round."""
    pooled = {t["variant"]: t for t in out["throughput"]}
    keys = ("sagas_per_s", "cpu_ms_per_saga", "latency_p50_ms")
    for t in out["throughput"]:
        per_round = []
        for number in sorted({r["round"] for r in out["runs"]}):
            runs = {r["variant"]: r for r in out["runs"] if r["round"] == number}
            per_round.append(runs[t["variant"]]["cpu_ms_per_saga"] / runs[OFF]["cpu_ms_per_saga"])
        t["vs_off"] = {k: t[k] / pooled[OFF][k] for k in keys}
        t["vs_off"]["cpu_per_round"] = {
            "min": min(per_round),
            "median": statistics.median(per_round),
            "max": max(per_round),
        }


def run(*, quick: bool, data_root: Path) -> dict[str, Any]:
    data_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="tracing-", dir=data_root))
    try:
        result = asyncio.run(_measure(root, quick))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = {"cores": os.cpu_count(), "disk": str(data_root.resolve())}
    result["mode"] = "quick" if quick else "full"
    return result


def _kinds(by_name: dict[str, int], sagas: int) -> str:
    """Spans per saga by kind: ``saga.step validate-order`` counts as ``saga.step``."""
    kinds: Counter[str] = Counter()
    for name, n in by_name.items():
        kinds[name.split(" ")[0]] += n
    return ", ".join(f"{kind} {n / max(1, sagas):.2f}" for kind, n in sorted(kinds.items()))


def render(r: dict[str, Any]) -> str:
    c = r["config"]
    out = [
        f"Tracing overhead ({r['mode']} mode): the saga benchmark's HTTP variant (demo services, untraced) "
        f"with tracing as the composition root sets it up, exporting over OTLP/HTTP to a receiver process "
        f"that decodes every request; {c['rounds']} round(s) of {c['seconds_per_run']} s per variant, order "
        f"rotated; {r['machine']['cores']} cores",
        "",
        THROUGHPUT_HEADER,
    ]
    out += [throughput_row(t) for t in r["throughput"]]
    out += [
        "",
        " variant         sagas/s x  cpu ms/saga x  (per round)       p50 x  spans/saga  sampled  "
        "spans ended  received  dropped  receiver cpu ms/saga",
    ]
    for t in r["throughput"]:
        v, s = t["vs_off"], r["tracing"][t["variant"]]
        spread = f"({v['cpu_per_round']['min']:.2f}-{v['cpu_per_round']['max']:.2f})"
        out.append(
            f" {t['variant']:<15} {v['sagas_per_s']:>9.2f} {v['cpu_ms_per_saga']:>14.2f}  {spread:<15} "
            f"{v['latency_p50_ms']:>6.2f} {s['spans_per_saga']:>11.2f} {s['sampled_share']:>8.1%} "
            f"{s['spans_ended']:>12,} {s['spans_received']:>9,} {s['spans_dropped']:>8,} "
            f"{t['receiver_cpu_ms_per_saga']:>21.2f}"
        )
    off, plain, full = (r["tracing"][n] for n in (OFF, "http plain", "http trace=1.0"))
    rows = {t["variant"]: t for t in r["throughput"]}
    b = r["bound"]
    out += [
        "",
        "(x: ratio to trace=off, pooled over the runs, and the cpu ratio's range between runs of one round; "
        "cpu ms/saga includes exporting the run's spans; spans over every saga a rig ran, warm-up included)",
        f"spans per sampled saga at 1.0: {_kinds(full['by_name'], full['stored']['sampled'])}",
        f"off installs no SDK provider: open_tracing gave {'a provider' if off['sdk_provider'] else 'None'}, "
        f"global provider {off['global_provider']}, "
        f"engine tracing {'on' if off['engine_traced'] else 'off'}, "
        f"{off['stored']['with_traceparent']} of {off['stored']['sagas']} sagas store a traceparent "
        f"(plain: {plain['stored']['with_traceparent']} of {plain['stored']['sagas']}); off / plain: "
        f"sagas/s {rows[OFF]['sagas_per_s'] / rows['http plain']['sagas_per_s']:.2f}, cpu ms/saga "
        f"{rows[OFF]['cpu_ms_per_saga']:.2f} / {rows['http plain']['cpu_ms_per_saga']:.2f} = "
        f"{rows[OFF]['cpu_ms_per_saga'] / rows['http plain']['cpu_ms_per_saga']:.2f}",
        f"exporter bound (spans made in a tight loop, batch processor, OTLP/HTTP, the receiver; no engine): "
        f"{b['spans_per_s']:,.0f} spans/s delivered ({b['spans_dropped']:,} of {b['spans_ended']:,} dropped "
        f"by the queue), {b['cpu_us_per_span']:.0f} cpu us/span = {b['sagas_per_s']:,.0f} sagas/s at "
        f"{SPANS_PER_SAGA} spans; trace=1.0 exported {b['ratio']:.2f} of it",
        f"peak RSS {r['peak_rss_mib']:.0f} MiB",
    ]
    return "\n".join(out)
