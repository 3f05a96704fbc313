"""Our subscription objects over the client's catch-up and persistent subscriptions."""

from __future__ import annotations

import contextlib
from typing import Self
from uuid import UUID

from kurrentdbclient import RecordedEvent as ClientRecordedEvent
from kurrentdbclient.common import AbstractAsyncCatchupSubscription, AbstractAsyncPersistentSubscription

from orchestrator.eventstore.errors import EventStoreError, SubscriptionDropped
from orchestrator.eventstore.kurrent.convert import (
    from_client_event,
    map_subscription_item,
    nack_action,
    visible,
)
from orchestrator.eventstore.kurrent.translate import translated
from orchestrator.eventstore.types import (
    CaughtUp,
    Checkpoint,
    EventFilter,
    NackAction,
    RecordedEvent,
    SubscriptionItem,
)


class _CatchUp:
    def __init__(
        self, sub: AbstractAsyncCatchupSubscription, *, filter: EventFilter | None, stream: str | None
    ) -> None:
        self._sub = sub
        self._filter = filter
        self._stream = stream
        self._closed = False

    async def _next_raw(self) -> ClientRecordedEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            with translated(stream=self._stream, live=True):
                return await self._sub.__anext__()
        except StopAsyncIteration:
            if self._closed:
                raise
            # A live subscription never ends by itself; the server or the connection ended it.
            raise SubscriptionDropped("the server ended the subscription") from None
        except EventStoreError:
            if self._closed:
                # close() from another task cancels the stream under a pending read.
                raise StopAsyncIteration from None
            raise

    async def _next_item(self) -> SubscriptionItem:
        while True:
            item = map_subscription_item(await self._next_raw(), self._filter)
            if item is not None:
                return item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Closing must always release; a failure of the stream was already reported by the iteration.
        with contextlib.suppress(EventStoreError), translated(live=True):
            await self._sub.stop()


class KurrentAllSubscription(_CatchUp):
    """Catch-up subscription to ``$all``: events, ``Checkpoint`` and ``CaughtUp`` markers."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SubscriptionItem:
        return await self._next_item()


class KurrentStreamSubscription(_CatchUp):
    """Catch-up subscription to one stream: events and a ``CaughtUp`` marker."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RecordedEvent | CaughtUp:
        while True:
            item = await self._next_item()
            # Stream subscriptions are opened without checkpoints; this only narrows the type.
            if not isinstance(item, Checkpoint):
                return item


class KurrentPersistentSubscription:
    """One consumer of a persistent subscription group to ``$all``."""

    def __init__(
        self,
        sub: AbstractAsyncPersistentSubscription,
        *,
        group: str,
        filter: EventFilter,
        start_commit: int | None,
        stop_timeout: float,
    ) -> None:
        self._sub = sub
        self._group = group
        self._filter = filter
        self._start_commit = start_commit
        self._stop_timeout = stop_timeout
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RecordedEvent:
        while True:
            event = await self._next_raw()
            if self._hidden(event):
                # Nobody else will ever answer an event we do not hand out: settle it here.
                with translated(group=self._group, live=True):
                    await self._sub.ack(event.ack_id)
                continue
            return from_client_event(event)

    def _hidden(self, event: ClientRecordedEvent) -> bool:
        # The server starts a group *at* its start position, our port starts *after* it.
        return event.commit_position == self._start_commit or not visible(event, self._filter)

    async def _next_raw(self) -> ClientRecordedEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            with translated(group=self._group, live=True):
                return await self._sub.__anext__()
        except StopAsyncIteration:
            if self._closed:
                raise
            raise SubscriptionDropped(f"the server ended the connection to group {self._group!r}") from None
        except EventStoreError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise SubscriptionDropped(f"the connection to group {self._group!r} is closed")

    async def ack(self, event_id: UUID) -> None:
        self._check_open()
        with translated(group=self._group, live=True):
            await self._sub.ack(event_id)

    async def nack(self, event_id: UUID, action: NackAction) -> None:
        self._check_open()
        with translated(group=self._group, live=True):
            await self._sub.nack(event_id, action=nack_action(action))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The client flushes batched acks on stop; a bounded wait keeps close() from hanging on a
        # dead connection (unflushed answers are then redelivered after the message timeout).
        with contextlib.suppress(EventStoreError), translated(group=self._group, live=True):
            await self._sub.stop(timeout=self._stop_timeout)
