"""``eventstore …``: read-only views of the event store (streams of a category, one stream, the
persistent subscription groups and their parked events)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from orchestrator.eventstore.errors import EventStoreError
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import EventFilter, RecordedEvent


def _event_line(e: RecordedEvent) -> str:
    try:
        meta = json.loads(e.metadata) if e.metadata else {}
    except ValueError:
        meta = {}
    actor = meta.get("actor", "-") if isinstance(meta, dict) else "-"
    return (
        f"{e.revision:>5}  {e.recorded_at.isoformat()}  {e.type:<28} actor={actor}  "
        f"{e.data[:200].decode(errors='replace')}"
    )


async def streams(store: EventStore, prefix: str, limit: int) -> str:
    """Streams whose names start with ``prefix``: events and last revision (scans ``$all``)."""
    found: OrderedDict[str, list[int]] = OrderedDict()
    async for batch in store.read_all(filter=EventFilter(stream_prefixes=(prefix,))):
        for e in batch:
            entry = found.setdefault(e.stream, [0, -1])
            entry[0] += 1
            entry[1] = e.revision
    lines = [f"{name}  events={n}  last_revision={rev}" for name, (n, rev) in list(found.items())[:limit]]
    more = len(found) - limit
    if more > 0:
        lines.append(f"… {more} more")
    return "\n".join(lines) or f"no streams start with {prefix!r}"


async def stream(store: EventStore, name: str) -> str:
    events = await store.read_stream(name)
    return "\n".join(_event_line(e) for e in events)


async def subscriptions(store: EventStore) -> str:
    lines = []
    for info in await store.list_subscriptions():
        checkpoint = info.checkpoint.encode() if info.checkpoint else "-"
        lines.append(
            f"{info.group}  strategy={info.settings.strategy.value}  checkpoint={checkpoint}  "
            f"parked={info.parked}  in_flight={info.in_flight}  connections={info.connections}"
        )
    return "\n".join(lines) or "no persistent subscription groups"


async def parked(store: EventStore, group: str, limit: int) -> str:
    reader: Any = getattr(store, "parked_events", None)
    if reader is None:
        raise EventStoreError(
            "listing parked events is implemented for the embedded store; on KurrentDB use its UI"
            " or read the stream $persistentsubscription-$all::<group>-parked"
        )
    events: list[RecordedEvent] = list(await reader(group, limit=limit))
    return "\n".join(f"{e.stream}  {_event_line(e)}" for e in events) or f"nothing parked in {group!r}"
