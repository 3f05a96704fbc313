"""The :class:`~orchestrator.eventstore.port.EventStore` port on KurrentDB / EventStoreDB, through
kurrentdbclient's asyncio client. Requires EventStoreDB 23.10 or KurrentDB 24.10+ (see ``__init__``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from kurrentdbclient import AsyncKurrentDBClient
from kurrentdbclient import RecordedEvent as ClientRecordedEvent
from kurrentdbclient.common import DEFAULT_PERSISTENT_SUB_MAX_ACK_BATCH_SIZE

from orchestrator.eventstore.errors import (
    AppendTooLarge,
    StoreClosed,
    SubscriptionExists,
    SubscriptionNotFound,
    SubscriptionSettingsError,
)
from orchestrator.eventstore.kurrent.convert import (
    all_filter_kwargs,
    append_size,
    filter_from_record,
    filter_record,
    filter_record_stream,
    from_client_event,
    info_from_client,
    metadata_event,
    parse_all_position,
    persistent_filter_kwargs,
    settings_kwargs,
    strategy_name,
    to_client_event,
    to_client_expected,
    visible,
)
from orchestrator.eventstore.kurrent.subscriptions import (
    KurrentAllSubscription,
    KurrentPersistentSubscription,
    KurrentStreamSubscription,
)
from orchestrator.eventstore.kurrent.translate import translated
from orchestrator.eventstore.port import DEFAULT_BUFFER_SIZE
from orchestrator.eventstore.types import (
    MAX_APPEND_SIZE,
    AppendResult,
    EventFilter,
    Expected,
    NewEvent,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    StreamMetadata,
    StreamState,
    SubscriptionInfo,
)

if TYPE_CHECKING:
    from orchestrator.eventstore.port import (
        EventStore,
        PersistentSubscription,
        StreamSubscription,
        Subscription,
    )


class KurrentEventStore:
    """Every request but the subscriptions' own streams is bounded by ``default_deadline`` seconds."""

    def __init__(self, uri: str, *, default_deadline: float = 10.0) -> None:
        self._client = AsyncKurrentDBClient(uri=uri)
        self._deadline = default_deadline
        self._closed = False

    def _c(self) -> AsyncKurrentDBClient:
        if self._closed:
            raise StoreClosed("the KurrentDB event store is closed")
        return self._client

    # --- lifecycle ---------------------------------------------------------------------------------
    async def connect(self) -> None:
        with translated():
            await self._c().connect()

    async def ping(self) -> None:
        with translated():
            await self._c().get_commit_position(timeout=self._deadline)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # StoreClosed here means the client never had a connection to close.
        with contextlib.suppress(StoreClosed), translated():
            await self._client.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- streams -----------------------------------------------------------------------------------
    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> AppendResult:
        size = append_size(events)
        if size > MAX_APPEND_SIZE:
            # Refused here exactly as the embedded store refuses it, whatever the server's own limit.
            raise AppendTooLarge(size, MAX_APPEND_SIZE)
        current_version = to_client_expected(expected)
        with translated(stream=stream, expected=expected, append_size=size):
            commit = await self._c().append_to_stream(
                stream,
                events=[to_client_event(e) for e in events],
                current_version=current_version,
                timeout=self._deadline,
            )
        return AppendResult(Position(commit), next_revision=None)

    async def read_stream(
        self,
        stream: str,
        *,
        from_revision: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Sequence[RecordedEvent]:
        client = self._c()
        with translated(stream=stream):
            if from_revision < 0 and not backwards:
                # Forwards from the end is empty, but a missing stream must still say so.
                await client.get_stream(stream, backwards=True, limit=1, timeout=self._deadline)
                return []
            events = await client.get_stream(
                stream,
                stream_position=None if from_revision < 0 else from_revision,
                backwards=backwards,
                limit=sys.maxsize if limit is None else limit,
                timeout=self._deadline,
            )
        return [from_client_event(e) for e in events]

    async def read_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        batch_size: int = 500,
        limit: int | None = None,
    ) -> AsyncIterator[Sequence[RecordedEvent]]:
        # One bounded read per batch: each batch sees the head as it is when read, and no gRPC stream
        # stays open while the consumer works on a batch.
        kwargs = all_filter_kwargs(filter)
        cursor = after.commit if after is not None else None
        remaining = limit
        while remaining is None or remaining > 0:
            want = batch_size if remaining is None else min(batch_size, remaining)
            # The client reads *from* commit_position (inclusive): one extra for the event at the cursor.
            asked = want + (cursor is not None)
            with translated():
                response = await self._c().read_all(
                    commit_position=cursor, limit=asked, timeout=self._deadline, **kwargs
                )
                raw: list[ClientRecordedEvent] = [e async for e in response]
            batch, cursor = _take_batch(raw, cursor, want, filter)
            if batch:
                if remaining is not None:
                    remaining -= len(batch)
                yield batch
            if len(raw) < asked:
                return

    async def head_position(self) -> Position | None:
        # The last non-system event, as read_all sees it; 0 is what the client says for "none".
        with translated():
            commit = await self._c().get_commit_position(timeout=self._deadline)
        return Position(commit) if commit > 0 else None

    async def subscribe_stream(
        self, stream: str, *, after_revision: int | None = None
    ) -> KurrentStreamSubscription:
        # The subscription's stream has no deadline (it lives on), so only its start-up is bounded.
        with translated(stream=stream):
            async with asyncio.timeout(self._deadline):
                # stream_position is exclusive for subscriptions, as after_revision is.
                sub = await self._c().subscribe_to_stream(
                    stream, stream_position=after_revision, include_caught_up=True
                )
        return KurrentStreamSubscription(sub, filter=None, stream=stream)

    async def subscribe_all(
        self,
        *,
        after: Position | None = None,
        filter: EventFilter | None = None,
        checkpoint_interval: int = 32,
    ) -> KurrentAllSubscription:
        with translated():
            async with asyncio.timeout(self._deadline):
                # commit_position is exclusive for subscribe_to_all, as ``after`` is.
                sub = await self._c().subscribe_to_all(
                    commit_position=after.commit if after is not None else None,
                    include_checkpoints=True,
                    include_caught_up=True,
                    checkpoint_interval_multiplier=checkpoint_interval,
                    **all_filter_kwargs(filter),
                )
        return KurrentAllSubscription(sub, filter=filter, stream=None)

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        with translated(stream=stream):
            values, version = await self._c().get_stream_metadata(stream, timeout=self._deadline)
        return StreamMetadata(values, version if isinstance(version, int) else None)

    async def set_stream_metadata(
        self, stream: str, metadata: Mapping[str, Any], *, expected: Expected = StreamState.ANY
    ) -> None:
        client = self._c()
        current_version = to_client_expected(expected)
        with translated(stream=stream, expected=expected):
            follows: Expected = expected
            if expected is StreamState.ANY or expected is StreamState.EXISTS:
                # The event id must differ per logical write: setting A, B, then A again with ANY would
                # otherwise reuse A's id, and the server would take the third write for a duplicate.
                _, version = await client.get_stream_metadata(stream, timeout=self._deadline)
                follows = version if isinstance(version, int) else StreamState.NO_STREAM
            await client.append_to_stream(
                f"$${stream}",
                events=[metadata_event(stream, metadata, follows)],
                current_version=current_version,
                timeout=self._deadline,
            )

    async def tombstone_stream(self, stream: str, *, expected: Expected = StreamState.ANY) -> None:
        current_version = to_client_expected(expected)
        with translated(stream=stream, expected=expected):
            await self._c().tombstone_stream(stream, current_version=current_version, timeout=self._deadline)

    # --- persistent subscriptions (to $all) --------------------------------------------------------
    async def create_subscription(
        self,
        group: str,
        *,
        filter: EventFilter | None = None,
        settings: PersistentSubscriptionSettings | None = None,
        after: Position | None = None,
        from_end: bool = False,
    ) -> None:
        client = self._c()
        common = settings_kwargs(settings or PersistentSubscriptionSettings())
        filters = persistent_filter_kwargs(filter)
        # Check first so that creating an existing group cannot overwrite that group's filter record.
        if await self._group_exists(group):
            raise SubscriptionExists(group)
        await self.set_stream_metadata(filter_record_stream(group), filter_record(filter))
        with translated(group=group):
            if after is not None:
                # The server may deliver the event *at* commit_position; the reader skips it.
                await client.create_subscription_to_all(
                    group, commit_position=after.commit, timeout=self._deadline, **filters, **common
                )
            elif from_end:
                await client.create_subscription_to_all(
                    group, from_end=True, timeout=self._deadline, **filters, **common
                )
            else:
                await client.create_subscription_to_all(group, timeout=self._deadline, **filters, **common)

    async def _group_exists(self, group: str) -> bool:
        try:
            with translated(group=group):
                await self._c().get_subscription_info(group, timeout=self._deadline)
        except SubscriptionNotFound:
            return False
        return True

    async def update_subscription(self, group: str, settings: PersistentSubscriptionSettings) -> None:
        client = self._c()
        with translated(group=group):
            current = await client.get_subscription_info(group, timeout=self._deadline)
        if current.consumer_strategy != strategy_name(settings.strategy):
            raise SubscriptionSettingsError(
                f"group {group!r}: the strategy cannot change ({current.consumer_strategy} -> "
                f"{strategy_name(settings.strategy)}); delete and recreate the group"
            )
        # The client keeps the start position; the server keeps the filter (from EventStoreDB 23.10,
        # kurrent-io/KurrentDB#3957: earlier servers dropped it on update).
        with translated(group=group):
            await client.update_subscription_to_all(
                group, timeout=self._deadline, **settings_kwargs(settings)
            )

    async def delete_subscription(self, group: str) -> None:
        # The filter record stays behind: harmless, and the next create of the group overwrites it.
        with translated(group=group):
            await self._c().delete_subscription(group, timeout=self._deadline)

    async def read_subscription(
        self, group: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> KurrentPersistentSubscription:
        if buffer_size < 1:
            raise ValueError(f"a consumer's buffer size must be at least 1, not {buffer_size}")
        client = self._c()
        with translated(group=group):
            info = await client.get_subscription_info(group, timeout=self._deadline)
        filter = await self._recorded_filter(group)
        start = parse_all_position(info.start_from)
        with translated(group=group, max_subscribers=info.max_subscriber_count):
            async with asyncio.timeout(self._deadline):
                # The server keeps at most buffer_size unanswered events in flight to this consumer.
                # The client sends acks in batches (or after max_ack_delay): a batch larger than the
                # buffer could never fill, and every full buffer would wait out the delay.
                sub = await client.read_subscription_to_all(
                    group,
                    event_buffer_size=buffer_size,
                    max_ack_batch_size=min(buffer_size, DEFAULT_PERSISTENT_SUB_MAX_ACK_BATCH_SIZE),
                )
        return KurrentPersistentSubscription(
            sub,
            group=group,
            filter=filter,
            start_commit=start if start else None,
            stop_timeout=self._deadline,
        )

    async def replay_parked(self, group: str) -> None:
        with translated(group=group):
            await self._c().replay_parked_events(group, timeout=self._deadline)

    async def get_subscription_info(self, group: str) -> SubscriptionInfo:
        with translated(group=group):
            info = await self._c().get_subscription_info(group, timeout=self._deadline)
        return info_from_client(info, await self._recorded_filter(group))

    async def list_subscriptions(self) -> Sequence[SubscriptionInfo]:
        with translated():
            infos = await self._c().list_subscriptions(timeout=self._deadline)
        return [
            info_from_client(info, await self._recorded_filter(info.group_name))
            for info in infos
            if info.event_source == "$all"
        ]

    async def _recorded_filter(self, group: str) -> EventFilter:
        stream = filter_record_stream(group)
        with translated(stream=stream):
            values, _ = await self._c().get_stream_metadata(stream, timeout=self._deadline)
        return filter_from_record(values)


def _take_batch(
    raw: Sequence[ClientRecordedEvent], cursor: int | None, want: int, filter: EventFilter | None
) -> tuple[list[RecordedEvent], int | None]:
    """Up to ``want`` visible events after ``cursor`` from one read, and the new cursor: the position
    of the last event looked at, so hidden events are not read again."""
    batch: list[RecordedEvent] = []
    for event in raw:
        if cursor is not None and event.commit_position <= cursor:
            continue
        if len(batch) == want:
            break
        cursor = event.commit_position
        if visible(event, filter):
            batch.append(from_client_event(event))
    return batch, cursor


async def open_kurrent_store(uri: str, **kw: Any) -> KurrentEventStore:
    """Connect to ``uri`` (``esdb://`` / ``kurrentdb://``, optionally ``+discover``) and check that the
    server answers, so that a wrong address fails at start-up rather than at the first append."""
    store = KurrentEventStore(uri, **kw)
    try:
        await store.connect()
        await store.ping()
    except BaseException:
        await store.close()
        raise
    return store


if TYPE_CHECKING:
    # mypy proves the adapter and its subscriptions satisfy the port's protocols.
    def _conforms(
        store: KurrentEventStore,
        all_sub: KurrentAllSubscription,
        stream_sub: KurrentStreamSubscription,
        persistent_sub: KurrentPersistentSubscription,
    ) -> tuple[EventStore, Subscription, StreamSubscription, PersistentSubscription]:
        return store, all_sub, stream_sub, persistent_sub
