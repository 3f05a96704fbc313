"""A test-only projector and helpers shared by the read-model tests (and the SIGKILL child).

``CountingProjector`` counts events per stream (exactly-once shows as exact counts), keeps each stream's
last event type in a document whose change MOVEs the stream between per-type indexes (read-modify-write
in the script), indexes streams by start time, sums a float, and expires closed streams' documents at
event time + retention.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from orchestrator.eventstore import NO_STREAM, EventStore, Position, RecordedEvent, new_events
from projections.redis_store import RedisViewStore
from projections.updates import (
    ExpireAt,
    HIncrBy,
    HIncrByFloat,
    HSet,
    IndexMove,
    Update,
    ZAdd,
    view_key,
)

TENANT = "t1"
TYPES = ("Opened", "Updated", "Closed")
RETENTION = timedelta(days=7)
TOTAL = "__total"


def counts_key() -> str:
    return view_key(TENANT, "counts")


def doc_key(stream: str) -> str:
    return view_key(TENANT, "stream", stream)


def type_index(event_type: str) -> str:
    return view_key(TENANT, "by_type", event_type)


class CountingProjector:
    def __init__(self, delay: float = 0.0) -> None:
        #: a per-event pause, only so the SIGKILL test can catch the runner mid-stream
        self._delay = delay

    def project(self, event: RecordedEvent) -> Sequence[Update]:
        if self._delay:
            time.sleep(self._delay)
        stream, at = event.stream, event.recorded_at.timestamp()
        updates: list[Update] = [
            HIncrBy(counts_key(), stream, 1),
            HIncrBy(counts_key(), TOTAL, 1),
            HIncrByFloat(view_key(TENANT, "weights"), stream, 0.25),
            IndexMove(
                doc_key(stream),
                "last_type",
                stream,
                event.type,
                {t: (type_index(t),) for t in TYPES},
                score=at if event.revision == 0 else None,
            ),
            HSet(doc_key(stream), {"revision": str(event.revision), "position": str(event.position.commit)}),
        ]
        if event.revision == 0:
            updates.append(ZAdd(view_key(TENANT, "by_time"), stream, at))
        if event.type == "Closed":
            updates.append(ExpireAt.after(doc_key(stream), event.recorded_at, RETENTION))
        return updates


async def append_streams(store: EventStore, prefix: str, streams: int, per_stream: int) -> Position:
    """``streams`` streams of ``per_stream`` events: Opened, Updated…, Closed. Returns the last position."""
    assert per_stream >= 2
    last: Position | None = None
    for n in range(streams):
        stream = f"{prefix}-{n}"
        kinds = ["Opened", *["Updated"] * (per_stream - 2), "Closed"]
        items = [(t, b'{"i":%d}' % i, b"{}") for i, t in enumerate(kinds)]
        result = await store.append(stream, new_events(stream, NO_STREAM, items), expected=NO_STREAM)
        last = result.position
    assert last is not None
    return last


async def true_counts(store: EventStore, upto: Position | None = None, prefix: str = "") -> dict[str, int]:
    """Events per stream in the store (up to ``upto``), plus the total: what the counters must say."""
    counts: Counter[str] = Counter()
    async for page in store.read_all():
        for event in page:
            if (upto is None or event.position <= upto) and event.stream.startswith(prefix):
                counts[event.stream] += 1
    result = dict(counts)
    if counts:
        result[TOTAL] = sum(counts.values())
    return result


async def stored_counts(views: RedisViewStore, generation: int) -> dict[str, int]:
    raw = await views.client.hgetall(views.key(generation, counts_key()))
    return {k: int(v) for k, v in raw.items()}


async def wait_until_position(
    views: RedisViewStore, generation: int, target: Position, within: float
) -> None:
    """Poll (bounded) until ``generation`` has applied ``target``; fail the test otherwise."""
    deadline = time.monotonic() + within
    while True:
        current = await views.position(generation)
        if current is not None and current >= target:
            return
        assert time.monotonic() < deadline, f"generation {generation} stuck at {current}, want {target}"
        await asyncio.sleep(0.01)


async def dump_generation(views: RedisViewStore, generation: int) -> tuple[dict[str, object], dict[str, int]]:
    """Every view key of ``generation`` by its logical name: (values, absolute expiry in ms). The position
    and lease are bookkeeping, not views."""
    client, prefix = views.client, views.generation_prefix(generation)
    values: dict[str, object] = {}
    expiries: dict[str, int] = {}
    now_ms = int(time.time() * 1000)
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        logical = key[len(prefix) :]
        if logical in ("position", "lease"):
            continue
        kind = await client.type(key)
        if kind == "hash":
            values[logical] = ("hash", await client.hgetall(key))
        elif kind == "zset":
            values[logical] = ("zset", await client.zrange(key, 0, -1, withscores=True))
        elif kind == "string":
            values[logical] = ("string", await client.get(key))
        else:
            values[logical] = (kind, None)
        ttl = await client.pttl(key)
        if ttl >= 0:
            expiries[logical] = now_ms + ttl
    return values, expiries
