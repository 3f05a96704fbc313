"""The KurrentDB server's stream rules over the embedded store.

The embedded store keeps events, tombstones and positions; what the server adds on top lives here:
metadata in ``$$<stream>`` streams, the truncation that metadata orders on reads (``$maxCount``,
``$maxAge``, ``$tb``), soft deletion, and ``$all`` with system events. Each rule cites the server source
(github.com/kurrent-io/KurrentDB) it follows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.embedded.reader import Reader, to_event
from orchestrator.eventstore.errors import (
    AppendTooLarge,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedRevision,
)
from orchestrator.eventstore.ids import event_id
from orchestrator.eventstore.retention import expired, lowest_readable
from orchestrator.eventstore.types import (
    MAX_APPEND_SIZE,
    AppendResult,
    Expected,
    NewEvent,
    RecordedEvent,
    StreamState,
)

#: EventNumber.DeletedStream: the ``$tb`` a soft delete writes (Core/Data/EventNumber.cs)
DELETED_STREAM = 2**63 - 1
#: metastreams keep only their last event (IndexReader._metastreamMetadata, MetastreamMaxCount = 1)
_METASTREAM_METADATA: Mapping[str, Any] = {"$maxCount": 1}
#: rows fetched per SQL query while paging
PAGE = 500

_COLUMNS = "e.position, s.name, e.revision, e.id, e.type, e.data, e.metadata, e.content_type, e.recorded_at"


def meta_stream(stream: str) -> str:
    return f"$${stream}"


def is_meta_stream(stream: str) -> bool:
    return stream.startswith("$$")


def size_on_disk(event: NewEvent) -> int:
    # Event.SizeOnDisk (Core/Data/Event.cs): data + metadata + the type in UTF-16 code units.
    return len(event.data) + len(event.metadata) + 2 * len(event.type)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the server knows about a stream before it reads or writes it."""

    #: revision of the last event, -1 for none
    last: int
    #: reads fail as deleted: tombstoned, or (for a metastream) its stream is
    hard_deleted: bool
    #: the metadata the server enforces on reads
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: whether ``$$stream`` has an event (ExpectedVersion.StreamExists accepts that as existing)
    has_metadata: bool = False
    #: appends fail as deleted: this stream itself is tombstoned. Writes check only the stream written
    #: (IndexWriter.CheckCommit), so the metastream of a tombstoned stream still takes metadata.
    tombstoned: bool = False

    @property
    def soft_deleted(self) -> bool:
        # IndexWriter.IsSoftDeleted: TruncateBefore is EventNumber.DeletedStream.
        return self.metadata.get("$tb") == DELETED_STREAM

    def lowest_readable(self) -> int:
        """The lowest revision a read may return (IndexReader.ReadStreamEventsForwardInternal)."""
        return lowest_readable(self.last, self.metadata)

    def expired(self, now: datetime) -> Callable[[RecordedEvent], bool]:
        return expired(self.metadata, now)


def stream_info(conn: sqlite3.Connection, stream: str) -> StreamInfo:
    row = Reader.stream_row(conn, stream)
    last = row[1] if row is not None else -1
    deleted = row is not None and row[2]
    if is_meta_stream(stream):
        # GetStreamLastEventNumberCached: the metastream of a deleted stream is deleted as well.
        original = Reader.stream_row(conn, stream[2:])
        hidden = deleted or (original is not None and original[2])
        return StreamInfo(last, hidden, _METASTREAM_METADATA, tombstoned=deleted)
    values, present = _metadata(conn, stream)
    return StreamInfo(last, deleted, values, present, tombstoned=deleted)


def _metadata(conn: sqlite3.Connection, stream: str) -> tuple[Mapping[str, Any], bool]:
    row = conn.execute(
        "SELECT e.data FROM events e JOIN streams s ON s.id = e.stream_id WHERE s.name = ?"
        " ORDER BY e.revision DESC LIMIT 1",
        (meta_stream(stream),),
    ).fetchone()
    if row is None:
        return {}, False
    try:
        values = json.loads(row[0])
    except ValueError:
        # GetStreamMetadataUncached: metadata that is not JSON counts as none.
        return {}, True
    return (values if isinstance(values, dict) else {}), True


def read_stream_page(
    conn: sqlite3.Connection, stream: str, start: int | None, backwards: bool, limit: int, now: datetime
) -> tuple[list[RecordedEvent], int | None]:
    """Up to ``limit`` readable events from ``start`` (inclusive; ``None``: the first or, backwards, the
    last), and where the next page starts (``None`` at the end). Raises StreamDeleted / StreamNotFound."""
    info = stream_info(conn, stream)
    if info.hard_deleted:
        raise StreamDeleted(stream)
    if info.last < 0 or info.soft_deleted:
        raise StreamNotFound(stream)
    low = info.lowest_readable()
    expired = info.expired(now)
    if backwards:
        first = info.last if start is None else min(start, info.last)
        if first < low:
            return [], None
        events = Reader.read_stream(conn, stream, first, True, limit)
        events = [e for e in events if e.revision >= low]
        following = events[-1].revision - 1 if len(events) == limit else None
    else:
        first = max(0 if start is None else start, low)
        if first > info.last:
            return [], None
        events = Reader.read_stream(conn, stream, first, False, limit)
        following = events[-1].revision + 1 if len(events) == limit else None
    # $maxAge hides events without shortening the page count: the caller pages on.
    return [e for e in events if not expired(e)], following


def all_page(
    conn: sqlite3.Connection, start: int, backwards: bool, limit: int, upto: int | None = None
) -> list[RecordedEvent]:
    """Events of ``$all``, system events included: forwards from ``start`` (inclusive, up to ``upto``),
    or backwards from before ``start``. Reads of $all ignore stream metadata, as on the server (truncated
    events stay in $all until a scavenge, which this server never runs)."""
    if backwards:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events e JOIN streams s ON s.id = e.stream_id"
            " WHERE e.position < ? ORDER BY e.position DESC LIMIT ?",
            (start, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events e JOIN streams s ON s.id = e.stream_id"
            " WHERE e.position >= ? AND e.position <= ? ORDER BY e.position LIMIT ?",
            (start, upto if upto is not None else 2**63 - 1, limit),
        ).fetchall()
    return [to_event(r) for r in rows]


class ServerStore:
    """The writes of the server, with its rules, over one embedded store."""

    def __init__(self, store: EmbeddedEventStore) -> None:
        self.store = store

    async def info(self, stream: str) -> StreamInfo:
        return await self.store.reader.run(lambda c: stream_info(c, stream))

    async def append(self, stream: str, events: Sequence[NewEvent], expected: Expected) -> AppendResult:
        size = sum(size_on_disk(e) for e in events)
        if size > MAX_APPEND_SIZE:
            raise AppendTooLarge(size, MAX_APPEND_SIZE)
        info = await self.info(stream)
        if info.tombstoned:
            raise StreamDeleted(stream)
        asked = expected
        if info.soft_deleted:
            # IndexWriter.CheckCommit: StreamExists fails on a soft-deleted stream; NoStream succeeds and
            # the stream continues after its last revision (the embedded store checks that revision).
            if expected is StreamState.EXISTS:
                raise WrongExpectedRevision(stream, expected, info.last)
            if expected is StreamState.NO_STREAM and info.last >= 0:
                expected = info.last
        elif expected is StreamState.EXISTS and info.last < 0 and info.has_metadata:
            # CheckCommit: a stream with metadata but no events "exists" for StreamExists.
            expected = StreamState.ANY
        try:
            result = await self.store.append(stream, events, expected=expected)
        except WrongExpectedRevision as e:
            raise WrongExpectedRevision(stream, asked, e.actual) from e
        if info.soft_deleted and events and result.next_revision is not None:
            # StorageWriterService.SoftUndeleteMetastream: the stream is recreated, readable from its
            # first new event. A second write here (the server does it in one commit): a crash between
            # the two leaves the new events hidden until the next append re-runs this.
            first = result.next_revision - len(events) + 1
            await self.write_metadata(stream, {**info.metadata, "$tb": first})
        return result

    async def write_metadata(self, stream: str, values: Mapping[str, Any]) -> None:
        data = json.dumps(dict(values), separators=(",", ":")).encode()
        meta = meta_stream(stream)
        last = (await self.info(meta)).last
        event = NewEvent(event_id(meta, last, 0, "$metadata", data, b""), "$metadata", data, b"")
        await self.store.append(meta, [event], expected=last if last >= 0 else StreamState.NO_STREAM)

    async def soft_delete(self, stream: str, expected: Expected) -> None:
        info = await self.info(stream)
        if info.hard_deleted or (info.soft_deleted and expected is StreamState.EXISTS):
            # kurrentdbclient's upstream suite (test_stream_delete_expecting_stream_exists) shows the
            # server answers "is deleted" to an EXISTS delete of a soft-deleted stream.
            raise StreamDeleted(stream)
        if info.last < 0:
            # ...and "not found" (a conflict with actual -1) to any delete of a stream that never had an
            # event, whatever the expectation (test_stream_delete_with_any_current_version).
            raise WrongExpectedRevision(stream, expected, None)
        _check_delete_expected(stream, expected, info)
        # StorageWriterService (DeleteStream, hardDelete=false): $tb = DeletedStream in the metadata.
        await self.write_metadata(stream, {**info.metadata, "$tb": DELETED_STREAM})

    async def tombstone(self, stream: str, expected: Expected) -> None:
        info = await self.info(stream)
        if info.hard_deleted:
            raise StreamDeleted(stream)
        _check_delete_expected(stream, expected, info)
        await self.store.tombstone_stream(stream, expected=StreamState.ANY)


def _check_delete_expected(stream: str, expected: Expected, info: StreamInfo) -> None:
    # IndexWriter.CheckCommit with no events: Any always; NoStream when there is no event (or the
    # stream is soft-deleted); StreamExists when there is one (or metadata); else the exact revision.
    current = info.last
    ok = (
        expected is StreamState.ANY
        or (expected is StreamState.NO_STREAM and (current < 0 or info.soft_deleted))
        or (expected is StreamState.EXISTS and (current >= 0 or info.has_metadata) and not info.soft_deleted)
        or (isinstance(expected, int) and expected == current)
    )
    if not ok:
        raise WrongExpectedRevision(stream, expected, current if current >= 0 else None)


def now_utc() -> datetime:
    return datetime.now(UTC)
