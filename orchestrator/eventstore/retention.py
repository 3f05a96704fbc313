"""What stream metadata hides from reads, as EventStoreDB / KurrentDB apply it: ``$maxCount`` (only the
newest N events are readable), ``$tb`` (truncate before: events below that revision are not) and
``$maxAge`` (events older than that many seconds are not). Old events stay on disk until a scavenge (the
embedded store never scavenges); they are only hidden from ``read_stream``. Reads of ``$all`` ignore
stream metadata, as on the server.

One implementation for every store that enforces these (the embedded store, the local server)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from orchestrator.eventstore.types import RecordedEvent


def positive_int(value: object, *, allow_zero: bool = False) -> int | None:
    # StreamMetadata.FromJson ignores values of the wrong type rather than refusing the document.
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value > 0 or (allow_zero and value == 0) else None


def lowest_readable(last: int, metadata: Mapping[str, Any]) -> int:
    """The lowest revision a read may return (IndexReader.ReadStreamEventsForwardInternal), given the
    revision of the stream's last event."""
    low = 0
    max_count = positive_int(metadata.get("$maxCount"))
    if max_count is not None:
        low = max(low, last - max_count + 1)
    truncate_before = positive_int(metadata.get("$tb"), allow_zero=True)
    if truncate_before is not None:
        low = max(low, truncate_before)
    return low


def expired(metadata: Mapping[str, Any], now: datetime) -> Callable[[RecordedEvent], bool]:
    """Whether an event is past the stream's ``$maxAge`` at ``now``."""
    max_age = positive_int(metadata.get("$maxAge"))
    if max_age is None:
        return lambda _event: False
    cutoff = now - timedelta(seconds=max_age)
    return lambda event: event.recorded_at < cutoff
