"""Protobuf messages of the KurrentDB client protocol <-> the event store's values (no IO)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from google.protobuf import timestamp_pb2
from kurrentdbclient.protos.v1 import shared_pb2, streams_pb2

from orchestrator.eventstore.types import Expected, NewEvent, RecordedEvent, StreamState

_JSON = "application/json"
_BINARY = "application/octet-stream"
#: .NET ticks (100 ns) per second: the "created" metadata is ticks since the Unix epoch
_TICKS = 10_000_000
#: the server's long encoding of the expected states (Core/Data/ExpectedVersion.cs), used in messages
EXPECTED_LONG = {StreamState.ANY: -2, StreamState.NO_STREAM: -1, StreamState.EXISTS: -4}


class BadRequest(Exception):
    """The request is malformed; answered INVALID_ARGUMENT, as the server does."""


def expected_of(options: Any, revision_field: str) -> Expected:
    """The expected state of Append / BatchAppend / Delete / Tombstone options."""
    which = options.WhichOneof(
        "expected_stream_position" if revision_field == "stream_position" else "expected_stream_revision"
    )
    if which == revision_field:
        return int(getattr(options, revision_field))
    match which:
        case "no_stream":
            return StreamState.NO_STREAM
        case "any":
            return StreamState.ANY
        case "stream_exists":
            return StreamState.EXISTS
    raise BadRequest(f"'{which}' is not a valid expected stream revision")


def expected_long(expected: Expected) -> int:
    return expected if isinstance(expected, int) else EXPECTED_LONG[expected]


def stream_name(identifier: shared_pb2.StreamIdentifier) -> str:
    return identifier.stream_name.decode("utf-8")


def new_event(message: Any) -> NewEvent:
    """A proposed message of Append or BatchAppend. ``type`` and ``content-type`` are required metadata
    (RpcExceptions.RequiredMetadataPropertyMissing); the server keeps only "is JSON or not"."""
    metadata = message.metadata
    for key in ("type", "content-type"):
        if key not in metadata:
            raise BadRequest(f"Required Metadata Property '{key}' is missing")
    content_type = _JSON if metadata["content-type"] == _JSON else _BINARY
    return NewEvent(
        id=UUID(message.id.string),
        type=metadata["type"],
        data=bytes(message.data),
        metadata=bytes(message.custom_metadata),
        content_type=content_type,
    )


def recorded_fields(event: RecordedEvent) -> dict[str, Any]:
    """The fields of a ReadEvent.RecordedEvent, which Streams and PersistentSubscriptions share."""
    ticks = int(event.recorded_at.timestamp() * 1_000_000) * (_TICKS // 1_000_000)
    return {
        "id": shared_pb2.UUID(string=str(event.id)),
        "stream_identifier": shared_pb2.StreamIdentifier(stream_name=event.stream.encode("utf-8")),
        "stream_revision": event.revision,
        "prepare_position": event.position.commit,
        "commit_position": event.position.commit,
        "metadata": {
            "type": event.type,
            "content-type": _JSON if event.content_type == _JSON else _BINARY,
            "created": str(ticks),
        },
        "custom_metadata": event.metadata,
        "data": event.data,
    }


def read_event(event: RecordedEvent) -> streams_pb2.ReadResp:
    recorded = streams_pb2.ReadResp.ReadEvent.RecordedEvent(**recorded_fields(event))
    return streams_pb2.ReadResp(
        event=streams_pb2.ReadResp.ReadEvent(event=recorded, commit_position=event.position.commit)
    )


def timestamp(now: datetime | None = None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(now or datetime.now(UTC))
    return stamp


def confirmation(subscription_id: str) -> streams_pb2.ReadResp:
    return streams_pb2.ReadResp(
        confirmation=streams_pb2.ReadResp.SubscriptionConfirmation(subscription_id=subscription_id)
    )


def checkpoint(position: int) -> streams_pb2.ReadResp:
    return streams_pb2.ReadResp(
        checkpoint=streams_pb2.ReadResp.Checkpoint(
            commit_position=position, prepare_position=position, timestamp=timestamp()
        )
    )


def caught_up(*, revision: int | None = None, position: int | None = None) -> streams_pb2.ReadResp:
    message = streams_pb2.ReadResp.CaughtUp(timestamp=timestamp())
    if revision is not None:
        message.stream_revision = revision
    if position is not None:
        message.position.CopyFrom(
            streams_pb2.ReadResp.Position(commit_position=position, prepare_position=position)
        )
    return streams_pb2.ReadResp(caught_up=message)


def stream_not_found(stream: str) -> streams_pb2.ReadResp:
    return streams_pb2.ReadResp(
        stream_not_found=streams_pb2.ReadResp.StreamNotFound(
            stream_identifier=shared_pb2.StreamIdentifier(stream_name=stream.encode("utf-8"))
        )
    )


@dataclass(frozen=True, slots=True)
class AllFilter:
    """A Read filter on $all: by stream name or event type, a regex (searched, as .NET's Regex.IsMatch
    does) or prefixes; ``window`` is FilterOptions.max (the scan window of a subscription)."""

    on_stream: bool
    matches_text: Callable[[str], bool]
    window: int
    checkpoint_multiplier: int

    def matches(self, event: RecordedEvent) -> bool:
        return self.matches_text(event.stream if self.on_stream else event.type)


#: Enumerator.AllSubscriptionFiltered: DefaultReadBatchSize when the client gives no window
_DEFAULT_WINDOW = 32


def all_filter(options: Any) -> AllFilter | None:
    if options.WhichOneof("filter_option") != "filter":
        return None
    flt = options.filter
    which = flt.WhichOneof("filter")
    if which not in ("stream_identifier", "event_type"):
        raise BadRequest("a filter needs a stream identifier or an event type expression")
    expression = getattr(flt, which)
    prefixes = tuple(expression.prefix)
    matcher: Callable[[str], bool]
    if prefixes:
        matcher = lambda text: text.startswith(prefixes)  # noqa: E731 - a one-line predicate
    else:
        try:
            pattern = re.compile(expression.regex)
        except re.error as e:
            raise BadRequest(f"invalid filter regex: {e}") from e
        matcher = lambda text: pattern.search(text) is not None  # noqa: E731
    window = flt.max if flt.WhichOneof("window") == "max" and flt.max > 0 else _DEFAULT_WINDOW
    multiplier = max(1, flt.checkpointIntervalMultiplier)
    return AllFilter(which == "stream_identifier", matcher, window, multiplier)
