"""The event store port: one async protocol that both the embedded store and the KurrentDB adapter
implement with the same observable behaviour (the contract suite in ``tests/contract`` decides).

Conventions
- ``after=`` is exclusive everywhere: ``read_all(after=p)`` and ``subscribe_all(after=p)`` start with the
  first event whose position is greater than ``p``; ``after=None`` means from the beginning.
- Revisions count from 0; ``subscribe_stream(after_revision=r)`` delivers revisions ``r + 1`` onwards.
- Every error is an :mod:`orchestrator.eventstore.errors` exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import UUID

from orchestrator.eventstore.types import (
    AppendResult,
    CaughtUp,
    EventFilter,
    Expected,
    NackAction,
    NewEvent,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    StreamMetadata,
    StreamState,
    SubscriptionInfo,
    SubscriptionItem,
)

#: How many events a persistent-subscription consumer may hold in flight when it does not say: the
#: ``buffer_size`` kurrentdbclient sends by default (DEFAULT_PERSISTENT_SUB_EVENT_BUFFER_SIZE), so that a
#: consumer gets the same limit from every store.
DEFAULT_BUFFER_SIZE = 150


class Subscription(Protocol):
    """A catch-up subscription: history first, then live events, with no gap and no repeat at the switch.

    Iterate it; ``close()`` ends the iteration. A store that closes ends it with ``SubscriptionDropped``.
    """

    def __aiter__(self) -> AsyncIterator[SubscriptionItem]: ...

    async def __anext__(self) -> SubscriptionItem: ...

    async def close(self) -> None: ...


class StreamSubscription(Protocol):
    def __aiter__(self) -> AsyncIterator[RecordedEvent | CaughtUp]: ...

    async def __anext__(self) -> RecordedEvent | CaughtUp: ...

    async def close(self) -> None: ...


class PersistentSubscription(Protocol):
    """One consumer connection to a persistent subscription group.

    Delivered events carry ``retry_count``. Each must be answered with ``ack`` or ``nack``; an event
    neither acked nor nacked within the group's ``message_timeout`` is redelivered (to any consumer),
    and after ``max_retry_count`` retries it is parked.

    The store never has more than the consumer's ``buffer_size`` events in flight to it (delivered, not
    yet acked, nacked or timed out); an ack, a nack or a timeout frees a slot. What a full consumer cannot
    take goes to another consumer with a free slot, or waits: under ``Pinned`` it waits for the consumer
    that owns its stream.
    """

    def __aiter__(self) -> AsyncIterator[RecordedEvent]: ...

    async def __anext__(self) -> RecordedEvent: ...

    async def ack(self, event_id: UUID) -> None: ...

    async def nack(self, event_id: UUID, action: NackAction) -> None: ...

    async def close(self) -> None: ...


class EventStore(Protocol):
    # --- streams -----------------------------------------------------------------------------------
    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> AppendResult:
        """Append all of ``events`` or none. ``expected`` is ``NO_STREAM``, ``EXISTS``, ``ANY`` or the
        exact revision of the stream's last event. Resending the same event ids with the same
        ``expected`` returns the original position (idempotent); a partial overlap raises
        ``WrongExpectedRevision``. Appends over ``MAX_APPEND_SIZE`` raise ``AppendTooLarge``."""
        ...

    async def read_stream(
        self,
        stream: str,
        *,
        from_revision: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Sequence[RecordedEvent]:
        """Events of one stream in revision order (or reverse with ``backwards``, starting at
        ``from_revision``, where ``-1`` means the end). Raises ``StreamNotFound`` / ``StreamDeleted``."""
        ...

    def read_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        batch_size: int = 500,
        limit: int | None = None,
    ) -> AsyncIterator[Sequence[RecordedEvent]]:
        """``$all`` in position order, as batches, from after ``after`` up to the head at the time each
        batch is read. System events are excluded."""
        ...

    async def head_position(self) -> Position | None:
        """Position of the last committed event in ``$all`` (``None`` when empty)."""
        ...

    async def subscribe_stream(self, stream: str, *, after_revision: int | None = None) -> StreamSubscription:
        """Catch-up subscription to one stream; a ``CaughtUp`` marker separates history from live."""
        ...

    async def subscribe_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        checkpoint_interval: int = 32,
    ) -> Subscription:
        """Catch-up subscription to ``$all``: events, ``Checkpoint`` markers (so a consumer with a
        selective filter can advance its stored position past events it does not see; at least every
        ``checkpoint_interval`` times the store's scan window when events are filtered out, and when it
        reaches the head) and a ``CaughtUp`` marker when history is exhausted."""
        ...

    async def get_stream_metadata(self, stream: str) -> StreamMetadata: ...

    async def set_stream_metadata(
        self, stream: str, metadata: Mapping[str, Any], *, expected: Expected = StreamState.ANY
    ) -> None:
        """Replace the stream's metadata; ``expected`` refers to the metadata's own revision."""
        ...

    async def tombstone_stream(self, stream: str, *, expected: Expected = StreamState.ANY) -> None:
        """Delete the stream for ever: later reads and appends raise ``StreamDeleted``."""
        ...

    # --- persistent subscriptions (to $all) ----------------------------------------------------------
    async def create_subscription(
        self,
        group: str,
        *,
        filter: EventFilter | None = None,
        settings: PersistentSubscriptionSettings | None = None,
        after: Position | None = None,
        from_end: bool = False,
    ) -> None:
        """Create a group; delivery starts after ``after`` (or at the head with ``from_end``)."""
        ...

    async def update_subscription(self, group: str, settings: PersistentSubscriptionSettings) -> None:
        """Change the group's settings; the strategy cannot change (``SubscriptionSettingsError``)."""
        ...

    async def delete_subscription(self, group: str) -> None: ...

    async def read_subscription(
        self, group: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> PersistentSubscription:
        """Connect one consumer to ``group``, with at most ``buffer_size`` (> 0) events in flight to it
        (see :class:`PersistentSubscription`); ``ValueError`` for a size below 1."""
        ...

    async def replay_parked(self, group: str) -> None:
        """Deliver the group's parked events again (their retry counts start over)."""
        ...

    async def get_subscription_info(self, group: str) -> SubscriptionInfo: ...

    async def list_subscriptions(self) -> Sequence[SubscriptionInfo]: ...

    # --- lifecycle -------------------------------------------------------------------------------------
    async def ping(self) -> None:
        """Raise ``OperationalError`` unless the store can serve requests."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
