"""Value objects of the event store port, shaped after EventStoreDB's.

Everything here is frozen; nothing from a client library appears. Positions are opaque outside a store:
code compares and stores them, and the API exposes them only through :meth:`Position.encode`.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

#: EventStoreDB's default maximum append size; both stores refuse larger appends.
MAX_APPEND_SIZE = 1024 * 1024


class StreamState(enum.Enum):
    """Expected-state sentinels for :meth:`EventStore.append` (an ``int`` means an exact revision)."""

    NO_STREAM = "no_stream"
    EXISTS = "exists"
    ANY = "any"

    def __repr__(self) -> str:
        return f"StreamState.{self.name}"


Expected: TypeAlias = StreamState | int

NO_STREAM = StreamState.NO_STREAM
EXISTS = StreamState.EXISTS
ANY = StreamState.ANY


#: the version prefix of position tokens handed to clients
_POSITION_TOKEN_VERSION = "p1"  # noqa: S105 - a format tag, not a secret


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in ``$all``. Strictly increasing with every append; never reused.

    ``commit`` is the store's own number (the SQLite row position, or the server's commit position);
    only stores interpret it.
    """

    commit: int

    def encode(self) -> str:
        """An opaque, versioned, URL-safe token for clients."""
        raw = self.commit.to_bytes(16, "big", signed=False).lstrip(b"\0") or b"\0"
        return f"{_POSITION_TOKEN_VERSION}.{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"

    @classmethod
    def decode(cls, token: str) -> Position:
        """Inverse of :meth:`encode`; raises ``ValueError`` naming the problem."""
        version, _, body = token.partition(".")
        if version != _POSITION_TOKEN_VERSION or not body or len(body) > 24:
            raise ValueError("not a position token")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, TypeError) as e:
            raise ValueError("not a position token") from e
        if len(raw) > 16:
            raise ValueError("not a position token")
        return cls(int.from_bytes(raw, "big"))


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``id`` should be deterministic (see :mod:`orchestrator.eventstore.ids`)."""

    id: UUID
    type: str
    data: bytes
    metadata: bytes = b""
    content_type: str = "application/json"

    @property
    def size(self) -> int:
        return len(self.data) + len(self.metadata) + len(self.type.encode())


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored. ``data`` and ``metadata`` stay bytes: decoding is the reader's choice (lazy)."""

    id: UUID
    type: str
    data: bytes
    metadata: bytes
    stream: str
    revision: int
    position: Position
    recorded_at: datetime
    content_type: str = "application/json"
    #: how many times a persistent subscription delivered this event before (0 on first delivery)
    retry_count: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    position: Position
    #: revision of the stream's last event after the append; ``None`` where the store does not say
    #: (the KurrentDB client returns only the commit position)
    next_revision: int | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A catch-up subscription reached ``position`` (events up to it were scanned, some maybe filtered)."""

    position: Position


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The subscription has delivered everything committed when it was emitted; live events follow.

    ``position`` is the position reached, when the store knows it.
    """

    position: Position | None = None


SubscriptionItem: TypeAlias = RecordedEvent | Checkpoint | CaughtUp


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Server-side filter for ``$all``: by stream-name prefixes *or* by an event-type regex (not both,
    as on EventStoreDB). System events (types and streams starting with ``$``) are always excluded."""

    stream_prefixes: tuple[str, ...] = ()
    event_type_regex: str | None = None

    def __post_init__(self) -> None:
        if self.stream_prefixes and self.event_type_regex is not None:
            raise ValueError("filter either by stream prefixes or by event type regex, not both")
        if any(not p for p in self.stream_prefixes):
            raise ValueError("stream prefixes must be non-empty")
        if self.event_type_regex is not None:
            re.compile(self.event_type_regex)

    def matches(self, stream: str, event_type: str) -> bool:
        if stream.startswith("$") or event_type.startswith("$"):
            return False
        if self.stream_prefixes:
            return stream.startswith(self.stream_prefixes)
        if self.event_type_regex is not None:
            return re.match(self.event_type_regex, event_type) is not None
        return True

    def to_json(self) -> dict[str, Any]:
        return {"stream_prefixes": list(self.stream_prefixes), "event_type_regex": self.event_type_regex}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> EventFilter:
        return cls(tuple(value.get("stream_prefixes", ())), value.get("event_type_regex"))


class ConsumerStrategy(enum.Enum):
    DISPATCH_TO_SINGLE = "DispatchToSingle"
    ROUND_ROBIN = "RoundRobin"
    PINNED = "Pinned"


class NackAction(enum.Enum):
    RETRY = "retry"
    PARK = "park"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class PersistentSubscriptionSettings:
    """The server's persistent-subscription settings, with the server's defaults (durations in seconds)."""

    strategy: ConsumerStrategy = ConsumerStrategy.DISPATCH_TO_SINGLE
    message_timeout: float = 30.0
    max_retry_count: int = 10
    checkpoint_after: float = 2.0
    min_checkpoint_count: int = 10
    max_checkpoint_count: int = 1000
    #: 0 means no limit
    max_subscriber_count: int = 0
    live_buffer_size: int = 500
    read_batch_size: int = 20
    history_buffer_size: int = 500
    extra_statistics: bool = False

    def __post_init__(self) -> None:
        if self.message_timeout <= 0:
            raise ValueError("message_timeout must be positive")
        if self.max_retry_count < 0 or self.max_subscriber_count < 0:
            raise ValueError("counts must not be negative")
        if not 0 < self.min_checkpoint_count <= self.max_checkpoint_count:
            raise ValueError("need 0 < min_checkpoint_count <= max_checkpoint_count")
        if self.checkpoint_after < 0:
            raise ValueError("checkpoint_after must not be negative")
        if self.live_buffer_size <= 0 or self.read_batch_size <= 0 or self.history_buffer_size <= 0:
            raise ValueError("buffer and batch sizes must be positive")


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    group: str
    filter: EventFilter
    settings: PersistentSubscriptionSettings
    #: position the group's last durable checkpoint points at (``None`` before the first)
    checkpoint: Position | None
    #: events delivered and not yet acked / nacked
    in_flight: int
    parked: int
    connections: int
    status: str = "Live"


@dataclass(frozen=True, slots=True)
class StreamMetadata:
    """Stream metadata as EventStoreDB keeps it: a JSON object with ``$``-prefixed system keys
    (``$maxAge``, ``$maxCount``, ``$tb``, ...) and any custom keys. Every store hides from ``read_stream``
    what ``$maxCount``, ``$tb`` and ``$maxAge`` say to (``orchestrator.eventstore.retention``)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    #: revision of the metadata itself; ``None`` when none was ever set
    revision: int | None = None
