"""Store benchmark: the embedded store's appends and catch-up reads against plain sqlite3 on the same disk.

Both sides write the same rows (8-event appends to fresh streams, NO_STREAM) into the same schema with the
same pragmas (WAL, synchronous=FULL). Event ids come from ``ids.new_events`` and are built once, in a pool,
before anything is timed: building them costs the client tens of microseconds per append, which is not
the store's cost and would hide the store's overhead if one side paid it inside the clock. Each append
still goes to a fresh stream; a pooled event list is reused across streams, which the store allows (ids
are unique per stream only, and no index covers them, so the rows cost the same to write).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.eventstore import NO_STREAM, NewEvent, new_events
from orchestrator.eventstore.embedded import EmbeddedEventStore, EmbeddedSettings
from orchestrator.eventstore.embedded.schema import DB_FILE, SCHEMA, WRITER_PRAGMAS, assert_durable

TASK_LEVELS = (1, 64, 512)
EVENTS_PER_APPEND = 8
RATIO_TARGET = 0.5
CATCH_UP_TARGET = 100_000
_EVENT_TYPES = (
    "OrderPlaced",
    "StockReserved",
    "PaymentAuthorised",
    "ShipmentBooked",
    "InvoiceIssued",
    "LoyaltyPointsAwarded",
    "ConfirmationSent",
    "OrderCompleted",
)

Pool = list[tuple[NewEvent, ...]]


@dataclass(frozen=True, slots=True)
class Config:
    level_seconds: float
    bound_seconds: float
    pool_size: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        return cls(0.15, 0.1, 256) if quick else cls(6.0, 5.0, 2048)


# --- workload ------------------------------------------------------------------------------------------
def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _items(rng: random.Random, k: int) -> list[tuple[str, bytes, bytes]]:
    """One saga's 8 events: ~200-byte JSON data, metadata with tenant and correlation ids."""
    order, correlation, saga = f"ord-{k:08d}", _uuid(rng), _uuid(rng)
    items = []
    causation = correlation
    for i, event_type in enumerate(_EVENT_TYPES):
        data = {
            "order_id": order,
            "customer_id": f"cus-{rng.randrange(10**6):06d}",
            "amount_cents": rng.randrange(100, 500_000),
            "currency": rng.choice(("EUR", "USD", "GBP")),
            "lines": [{"sku": f"SKU-{rng.randrange(10**5):05d}", "qty": rng.randrange(1, 9)}] * 2,
            "step": event_type,
            "attempt": 1,
        }
        event = _uuid(rng)
        meta = {
            "tenant": f"tenant-{rng.randrange(64):02d}",
            "correlation_id": correlation,
            "causation_id": causation,
            "saga_id": saga,
            "step_index": i,
        }
        causation = event
        items.append((event_type, _dumps(data), _dumps(meta)))
    return items


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def build_pool(size: int, seed: int = 2) -> tuple[Pool, float]:
    """``size`` distinct appends and the client-side cost of building one (ids included), in µs."""
    rng = random.Random(seed)
    raw = [_items(rng, k) for k in range(size)]
    start = time.perf_counter()
    pool = [tuple(new_events(f"order-pool-{k:08d}", NO_STREAM, raw[k])) for k in range(size)]
    return pool, (time.perf_counter() - start) / size * 1e6


# --- the embedded store ----------------------------------------------------------------------------------
async def _store_level(store: EmbeddedEventStore, pool: Pool, tasks: int, seconds: float) -> dict[str, Any]:
    stats = store.stats
    commits0, appends0, events0 = stats.commits, stats.appends, stats.events
    latencies: list[int] = []
    counter = itertools.count()
    prefix = f"order-t{tasks:03d}-"
    start = time.perf_counter()
    deadline = start + seconds

    async def closed_loop() -> None:
        # At least one append per task, however late the task starts (a loaded machine, --quick).
        while True:
            i = next(counter)
            stream, events = f"{prefix}{i:08d}", pool[i % len(pool)]
            t0 = time.perf_counter_ns()
            await store.append(stream, events, expected=NO_STREAM)
            latencies.append(time.perf_counter_ns() - t0)
            if time.perf_counter() >= deadline:
                return

    await asyncio.gather(*(closed_loop() for _ in range(tasks)))
    elapsed = time.perf_counter() - start
    commits, appends = stats.commits - commits0, stats.appends - appends0
    latencies.sort()
    return {
        "tasks": tasks,
        "seconds": elapsed,
        "appends": appends,
        "events": stats.events - events0,
        "commits": commits,
        "appends_per_s": appends / elapsed,
        "events_per_s": (stats.events - events0) / elapsed,
        "p50_ms": _percentile(latencies, 0.50) / 1e6,
        "p99_ms": _percentile(latencies, 0.99) / 1e6,
        "fsyncs_per_s": commits / elapsed,
        "mean_group_size": appends / commits if commits else 0.0,
    }


def _percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))])


async def _catch_up(store: EmbeddedEventStore) -> dict[str, Any]:
    """Read all of ``$all`` twice: decoded to ``RecordedEvent`` (what the store does; bodies stay bytes,
    decoding them is lazy, the consumer's choice), then also parsing every data and metadata body as JSON
    (what a projection pays with the standard library's json)."""
    count = 0
    start = time.perf_counter()
    async for batch in store.read_all():
        count += len(batch)
    store_elapsed = time.perf_counter() - start
    start = time.perf_counter()
    async for batch in store.read_all():
        for event in batch:
            json.loads(event.data)
            json.loads(event.metadata)
    json_elapsed = time.perf_counter() - start
    return {
        "events": count,
        "seconds": store_elapsed,
        "events_per_s": count / store_elapsed,
        "json_seconds": json_elapsed,
        "json_events_per_s": count / json_elapsed,
        "target_events_per_s": CATCH_UP_TARGET,
        "met": count / store_elapsed >= CATCH_UP_TARGET,
    }


async def _store_phase(
    directory: Path, pool: Pool, cfg: Config
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    store = await EmbeddedEventStore.open(directory)
    try:
        # Warm the connection and the code paths; not counted (each level measures a stats delta).
        await asyncio.gather(
            *(store.append(f"order-warm-{i:08d}", pool[i], expected=NO_STREAM) for i in range(64))
        )
        levels = [await _store_level(store, pool, tasks, cfg.level_seconds) for tasks in TASK_LEVELS]
        catch_up = await _catch_up(store)
    finally:
        await store.close()
    return levels, catch_up


# --- the raw bound: plain sqlite3, no asyncio, no threads ----------------------------------------------
_INSERT_STREAM = "INSERT INTO streams (name, last_revision) VALUES (?, -1)"
_INSERT_EVENTS = (
    "INSERT INTO events (position, stream_id, revision, id, type, data, metadata, content_type, recorded_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_STREAM = "UPDATE streams SET last_revision = ? WHERE id = ?"


def _bound(directory: Path, pool: Pool, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    directory.mkdir(parents=True)
    db_path = directory / DB_FILE
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        for pragma in WRITER_PRAGMAS:
            conn.execute(pragma)
        assert_durable(conn)
        conn.executescript(SCHEMA)
        head = 0
        results = []
        for batch in batches:
            result, head = _bound_level(conn, pool, batch, seconds, head)
            results.append(result)
        return results
    finally:
        conn.close()


def _bound_level(
    conn: sqlite3.Connection, pool: Pool, batch: int, seconds: float, head: int
) -> tuple[dict[str, Any], int]:
    wal_limit = EmbeddedSettings().wal_checkpoint_bytes
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    wal_pending = 0
    appends = events = commits = 0
    prefix = f"order-b{batch:03d}-"
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:  # whole transactions only
        now_us = time.time_ns() // 1000
        rows: list[tuple[Any, ...]] = []
        last: list[tuple[int, int]] = []
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(batch):
            stream_id = conn.execute(_INSERT_STREAM, (f"{prefix}{appends:08d}",)).lastrowid
            assert stream_id is not None
            appended = pool[appends % len(pool)]
            for revision, event in enumerate(appended):
                head += 1
                rows.append(
                    (
                        head,
                        stream_id,
                        revision,
                        event.id.bytes,
                        event.type,
                        event.data,
                        event.metadata,
                        None,
                        now_us,
                    )
                )
            last.append((len(appended) - 1, stream_id))
            appends += 1
        conn.executemany(_INSERT_EVENTS, rows)
        conn.executemany(_UPDATE_STREAM, last)
        conn.execute("COMMIT")
        commits += 1
        events += len(rows)
        # The store's own WAL policy (writer.py `_maybe_checkpoint`), so both sides do the same durable work.
        wal_pending += sum(len(r[4]) + len(r[5]) + len(r[6]) + 64 for r in rows)
        if wal_pending > wal_limit:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            wal_pending = max(0, log - done) * page_size if busy == 0 else wal_pending // 2
    elapsed = time.perf_counter() - start
    return {
        "batch_size": batch,
        "seconds": elapsed,
        "appends": appends,
        "events": events,
        "commits": commits,
        "appends_per_s": appends / elapsed,
        "events_per_s": events / elapsed,
        "commits_per_s": commits / elapsed,
    }, head


# --- the run -----------------------------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _mount_of(path: Path) -> dict[str, str]:
    """The mount point, device and filesystem type holding ``path`` (Linux; empty elsewhere)."""
    best = {"mount": "", "device": "", "fstype": ""}
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    real = str(path.resolve())
    for line in mounts:
        device, mount, fstype, *_ = line.split()
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best["mount"]):
            best = {"mount": mount, "device": device, "fstype": fstype}
    return best


def run(*, quick: bool, data_root: Path) -> dict[str, Any]:
    cfg = Config.for_mode(quick)
    data_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="store-", dir=data_root)).resolve()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        pool, build_us = build_pool(cfg.pool_size)
        levels, catch_up = asyncio.run(_store_phase(workdir / "store", pool, cfg))
        rss_after_store = _peak_rss_mib()
        top = levels[-1]
        matched = max(1, round(top["mean_group_size"]))
        batches = list(dict.fromkeys([1, matched, TASK_LEVELS[-1]]))
        bound = _bound(workdir / "bound", pool, batches, cfg.bound_seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    by_batch = {b["batch_size"]: b for b in bound}
    ratios = [
        {
            "tasks": level["tasks"],
            "batch_size": batch,
            "store_appends_per_s": level["appends_per_s"],
            "bound_appends_per_s": by_batch[batch]["appends_per_s"],
            "ratio": level["appends_per_s"] / by_batch[batch]["appends_per_s"],
        }
        for level, batch in ((levels[0], 1), (top, matched))
    ]
    headline = ratios[-1] | {"target": RATIO_TARGET, "met": ratios[-1]["ratio"] >= RATIO_TARGET}
    data_sizes = [len(e.data) for append in pool for e in append]
    meta_sizes = [len(e.metadata) for append in pool for e in append]
    return {
        "benchmark": "store",
        "format": 1,
        "mode": "quick" if quick else "full",
        "started_at": started,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "disk": {"path": str(workdir), **_mount_of(workdir)},
        "pragmas": list(WRITER_PRAGMAS),
        "config": asdict(cfg),
        "workload": {
            "events_per_append": EVENTS_PER_APPEND,
            "mean_data_bytes": sum(data_sizes) / len(data_sizes),
            "mean_metadata_bytes": sum(meta_sizes) / len(meta_sizes),
            "pool_size": len(pool),
            "id_build_us_per_append": build_us,
        },
        "store": levels,
        "bound": bound,
        "ratios": ratios,
        "ratio": headline,
        "catch_up": catch_up,
        "peak_rss_mib_after_store": rss_after_store,
        "peak_rss_mib": _peak_rss_mib(),
    }


# --- the table ------------------------------------------------------------------------------------------
def render(r: dict[str, Any]) -> str:
    m, d, w, c, h = r["machine"], r["disk"], r["workload"], r["config"], r["ratio"]
    out = [
        f"Store benchmark ({r['mode']} mode, started {r['started_at']})",
        f"machine : {m['cpu_count']} cores, {m['platform']}, Python {m['python']}, SQLite {m['sqlite']}",
        f"disk    : {d['path']} (temporary, removed) on {d['mount'] or '?'} ({d['fstype']}, {d['device']})",
        f"pragmas : {'; '.join(p.removeprefix('PRAGMA ') for p in r['pragmas'])} - both sides",
        f"workload: {w['events_per_append']}-event appends to fresh streams with NO_STREAM; data "
        f"{w['mean_data_bytes']:.0f} B, metadata {w['mean_metadata_bytes']:.0f} B per event; ids from "
        f"new_events prebuilt ({w['id_build_us_per_append']:.1f} us/append, outside both clocks)",
        "",
        f"Embedded store, closed loop, {c['level_seconds']:g} s per level",
        f"{'tasks':>6} {'appends/s':>11} {'events/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'fsyncs/s':>10} {'appends/commit':>15}",
    ]
    for s in r["store"]:
        out.append(
            f"{s['tasks']:>6} {s['appends_per_s']:>11,.0f} {s['events_per_s']:>11,.0f} {s['p50_ms']:>8.2f} "
            f"{s['p99_ms']:>8.2f} {s['fsyncs_per_s']:>10,.0f} {s['mean_group_size']:>15.1f}"
        )
    out += [
        "",
        f"Raw bound: plain sqlite3, one thread, same rows/schema/pragmas, {c['bound_seconds']:g} s per batch",
        f"{'batch':>6} {'appends/s':>11} {'events/s':>11} {'commits/s':>10}",
    ]
    for b in r["bound"]:
        out.append(
            f"{b['batch_size']:>6} {b['appends_per_s']:>11,.0f} {b['events_per_s']:>11,.0f} "
            f"{b['commits_per_s']:>10,.0f}"
        )
    out.append("")
    for x in r["ratios"]:
        out.append(
            f"ratio at {x['tasks']:>3} tasks: {x['store_appends_per_s']:,.0f} / "
            f"bound(batch {x['batch_size']}) {x['bound_appends_per_s']:,.0f} = {x['ratio']:.2f}"
        )
    out.append(f"target at 512 tasks >= {h['target']}: {'met' if h['met'] else 'NOT met'}")
    cu = r["catch_up"]
    out += [
        f"catch-up of $all decoded to RecordedEvent: {cu['events']:,} events in {cu['seconds']:.2f} s = "
        f"{cu['events_per_s']:,.0f} events/s (target >= {cu['target_events_per_s']:,}: "
        f"{'met' if cu['met'] else 'NOT met'})",
        f"catch-up of $all plus json.loads of data and metadata: {cu['json_events_per_s']:,.0f} events/s",
        f"peak RSS: {r['peak_rss_mib_after_store']:.0f} MiB after the store phase, "
        f"{r['peak_rss_mib']:.0f} MiB at the end",
    ]
    return "\n".join(out)
