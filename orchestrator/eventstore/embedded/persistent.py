"""Persistent subscriptions of the embedded store, mirroring EventStoreDB's semantics.

The port's groups never deliver system events (``$`` streams and types), as ``EventFilter`` says; a group
made with ``system_events`` (the local server's, whose groups deliver them as KurrentDB's do) selects them
like any other event.

Durable: the group's definition, its checkpoint and its parked list (tables ``ps_groups``/``ps_parked``,
written through the store's writer). In memory: in-flight messages and retry counts, so after a restart
delivery resumes after the last checkpoint (at least once), exactly as on the server.

A group runs one dispatcher task while it has consumers. It loads events after its cursor, hands them to
consumers by the group's strategy (never more to a consumer than its buffer size), redelivers what times
out or is nacked with ``retry``, parks what exceeds ``max_retry_count`` or is nacked with ``park``, and
checkpoints the highest position below which everything is done — after ``checkpoint_after`` seconds once
``min_checkpoint_count`` messages completed, or at once after ``max_checkpoint_count``.

A parked message counts as done only once its row in the parked list is durable: until then its position
stays outstanding, so no checkpoint can pass it, and a crash in between redelivers it instead of losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from orchestrator import failpoints
from orchestrator.eventstore.embedded.reader import Reader
from orchestrator.eventstore.errors import (
    MaxSubscribersReached,
    OperationalError,
    SubscriptionDropped,
    SubscriptionExists,
    SubscriptionNotFound,
    SubscriptionSettingsError,
)
from orchestrator.eventstore.types import (
    ConsumerStrategy,
    EventFilter,
    NackAction,
    PersistentSubscriptionSettings,
    Position,
    RecordedEvent,
    SubscriptionInfo,
)

if TYPE_CHECKING:
    from orchestrator.eventstore.embedded.store import EmbeddedEventStore

log = structlog.get_logger("orchestrator.eventstore")

#: after a failed write of the parked list, how long before it is tried again
PARKED_RETRY_S = 1.0


def _settings_json(s: PersistentSubscriptionSettings) -> str:
    d = asdict(s)
    d["strategy"] = s.strategy.value
    return json.dumps(d, sort_keys=True)


def _filter_json(flt: EventFilter, system_events: bool) -> str:
    # The flag rides in the filter's column: it decides, with the filter, what the group selects.
    return json.dumps({**flt.to_json(), "system_events": True} if system_events else flt.to_json())


def _settings_from_json(text: str) -> PersistentSubscriptionSettings:
    d = json.loads(text)
    d["strategy"] = ConsumerStrategy(d["strategy"])
    return PersistentSubscriptionSettings(**d)


# Identity semantics (eq=False): a message is removed from a consumer's queue as that object, not by value.
@dataclass(slots=True, eq=False)
class _Message:
    event: RecordedEvent
    retry_count: int = 0
    consumer: Consumer | None = None
    deadline: float = 0.0
    #: delivered again by replay_parked: below the checkpoint, removed from the parked list when done
    replayed: bool = False
    #: taken by the consumer's reader (no longer waiting in its local queue)
    handed: bool = False

    @property
    def key(self) -> tuple[UUID, bool]:
        # One event can be held twice, reloaded after a restart and replayed from the parked list.
        return self.event.id, self.replayed

    def delivered_event(self) -> RecordedEvent:
        event = self.event
        return (
            event if event.retry_count == self.retry_count else replace(event, retry_count=self.retry_count)
        )


class Consumer:
    """One connection to a group (implements the port's ``PersistentSubscription``)."""

    def __init__(self, group: _Group, buffer_size: int) -> None:
        self._group = group
        #: the most messages in flight to it at once: the server's PersistentSubscriptionClient is made
        #: with the client's buffer_size as its MaximumInFlightMessages (PersistentSubscriptions.Read.cs)
        self.buffer_size = buffer_size
        self.queue: deque[_Message] = deque()
        #: in dispatch order, which is deadline order (every deadline is dispatch time + message timeout)
        self.in_flight: dict[tuple[UUID, bool], _Message] = {}
        self._ready = asyncio.Event()
        self.dropped: BaseException | None = None
        self.closed = False

    @property
    def free_slots(self) -> int:
        # PersistentSubscriptionClient.AvailableSlots: a push takes a slot; an ack, a nack, a timeout or
        # the client's removal gives it back (RemoveFromProcessing).
        return self.buffer_size - len(self.in_flight)

    def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        return self

    async def __anext__(self) -> RecordedEvent:
        while not self.queue:
            if self.closed:
                raise StopAsyncIteration
            if self.dropped is not None:
                raise self.dropped
            self._ready.clear()
            await self._ready.wait()
        message = self.queue.popleft()
        message.handed = True
        return message.delivered_event()

    def deliver(self, message: _Message) -> None:
        message.handed = False
        self.in_flight[message.key] = message
        self.queue.append(message)
        self._ready.set()

    def withdraw(self, message: _Message) -> None:
        """Forget a message this consumer holds (settled, expired or handed back)."""
        self.in_flight.pop(message.key, None)
        if not message.handed:
            with contextlib.suppress(ValueError):
                self.queue.remove(message)

    def drop(self, error: BaseException) -> None:
        self.dropped = error
        self._ready.set()

    async def ack(self, event_id: UUID) -> None:
        self._group.settle(self, event_id, NackAction.SKIP)

    async def nack(self, event_id: UUID, action: NackAction) -> None:
        self._group.settle(self, event_id, action)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ready.set()
            self._group.disconnect(self)


class _Group:
    def __init__(
        self,
        manager: PersistentSubscriptions,
        name: str,
        flt: EventFilter,
        settings: PersistentSubscriptionSettings,
        checkpoint: int,
        parked: int,
        system_events: bool = False,
    ) -> None:
        self.manager = manager
        self.name = name
        self.filter = flt
        self.system_events = system_events
        self.settings = settings
        self.checkpoint = checkpoint
        self.parked = parked
        self.cursor = checkpoint  # everything <= cursor was loaded (or is done)
        self.outstanding: set[int] = set()  # loaded positions not yet done
        self.pending: deque[_Message] = deque()
        #: in connection order
        self.consumers: list[Consumer] = []
        #: RoundRobin and DispatchToSingle: the server's queue of clients, which they rotate through
        self._turns: deque[Consumer] = deque()
        self.completed_since_checkpoint = 0
        self.last_checkpoint_time = time.monotonic()
        #: changes to the parked list not yet durable, in order: (message, True to park / False to unpark)
        self.parked_changes: list[tuple[_Message, bool]] = []
        self.parked_retry_at = 0.0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._head_waiter: asyncio.Future[None] | None = None

    # --- consumers -------------------------------------------------------------------------------------
    def connect(self, buffer_size: int) -> Consumer:
        if buffer_size < 1:
            raise ValueError(f"a consumer's buffer size must be at least 1, not {buffer_size}")
        limit = self.settings.max_subscriber_count
        if limit and len(self.consumers) >= limit:
            raise MaxSubscribersReached(self.name, limit)
        consumer = Consumer(self, buffer_size)
        self.consumers.append(consumer)
        self._turns.append(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"persistent-subscription:{self.name}")
        self.wake.set()
        return consumer

    def disconnect(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._turns.remove(consumer)
        # What it held goes back for redelivery, as the server retries a dropped client's messages.
        self._retry_in_order(consumer.in_flight.values())
        consumer.in_flight.clear()
        consumer.queue.clear()
        self.wake.set()

    def settle(self, consumer: Consumer, event_id: UUID, action: NackAction) -> None:
        # An answer names the event, so it settles every copy this consumer holds (a reloaded one and a
        # replayed one): a copy left behind would pin the checkpoint below its position.
        copies = [m for m in (consumer.in_flight.get((event_id, r)) for r in (False, True)) if m is not None]
        # none: already timed out and handed elsewhere, or a duplicate answer; ignored like the server
        for message in copies:
            consumer.withdraw(message)
            if action is NackAction.RETRY:
                self._retry(message)
            elif action is NackAction.PARK:
                self._park(message)
            else:
                self._done(message)
        if copies:
            self.wake.set()

    # --- message fates ---------------------------------------------------------------------------------
    def _retry_in_order(self, messages: Iterable[_Message]) -> None:
        # Retries go to the front of the queue; keep them in position order there.
        for message in sorted(messages, key=lambda m: m.event.position, reverse=True):
            self._retry(message)

    def _retry(self, message: _Message) -> None:
        message.retry_count += 1
        message.consumer = None
        if message.retry_count > self.settings.max_retry_count:
            self._park(message)
        else:
            self.pending.appendleft(message)

    def _park(self, message: _Message) -> None:
        # Not done yet: `_write_parked` finishes it once its row is durable.
        self.parked_changes.append((message, True))

    def _done(self, message: _Message) -> None:
        if message.replayed:
            # Below the checkpoint already: done means "no longer parked". Should that write be lost,
            # the message stays parked and is replayed again, never lost.
            self.parked_changes.append((message, False))
            return
        self.outstanding.discard(message.event.position.commit)
        self.completed_since_checkpoint += 1

    async def _write_parked(self) -> None:
        """Make the parked list's changes durable, then count the parked messages done.

        Called by the dispatcher before it checkpoints; until this returns, a parked message's position is
        outstanding, so the checkpoint cannot pass it however the writes are ordered.
        """
        if not self.parked_changes or time.monotonic() < self.parked_retry_at:
            return
        changes, self.parked_changes = self.parked_changes, []
        name = self.name

        def write(conn: sqlite3.Connection) -> int:
            added = 0  # rows, not messages: a message parked again after a restart is already there
            for message, park in changes:
                position = message.event.position.commit
                if park:
                    sql = "INSERT OR IGNORE INTO ps_parked (grp, position) VALUES (?, ?)"
                    added += conn.execute(sql, (name, position)).rowcount
                else:
                    sql = "DELETE FROM ps_parked WHERE grp = ? AND position = ?"
                    added -= conn.execute(sql, (name, position)).rowcount
            return added

        try:
            added: int = await self.manager.store.write_call(write)
        except OperationalError as e:
            # Nothing is dropped: the messages stay outstanding and the write is tried again later.
            self.parked_changes[:0] = changes
            self.parked_retry_at = time.monotonic() + PARKED_RETRY_S
            log.warning("parked_write_failed", group=name, messages=len(changes), error=str(e))
            return
        if any(park for _, park in changes):
            failpoints.hit("persistent.after_park")
        self.parked += added
        for message, park in changes:
            if park and not message.replayed:
                self._done(message)

    # --- the dispatcher ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        store = self.manager.store
        try:
            while self.consumers:
                self.wake.clear()
                await self._load()
                self._expire()
                self._dispatch()
                await self._write_parked()
                await self._maybe_checkpoint()
                delay = self._next_deadline()
                if self.cursor < store.notifier.head and len(self.outstanding) < self._capacity():
                    # Commits landed while the page was read (or it was all filtered out): read on
                    # at once; no commit is coming to wake us for those.
                    self.wake.set()
                elif self.cursor >= store.notifier.head and (
                    self._head_waiter is None or self._head_waiter.done()
                ):
                    self._head_waiter = store.notifier.waiter(self.cursor)
                    self._head_waiter.add_done_callback(lambda _: self.wake.set())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
                if store.notifier.is_closed():
                    return
        except Exception as e:
            for consumer in list(self.consumers):
                consumer.drop(SubscriptionDropped(f"subscription {self.name!r} failed: {e}"))
            raise

    def _capacity(self) -> int:
        # What the consumers can hold in flight, plus a live buffer's worth read ahead for them.
        return sum(c.buffer_size for c in self.consumers) + self.settings.live_buffer_size

    async def _load(self) -> None:
        head = self.manager.store.notifier.head
        room = self._capacity() - len(self.outstanding)
        if self.cursor >= head or room <= 0:
            return
        after, flt, system = self.cursor, self.filter, self.system_events
        page = min(room, max(self.settings.read_batch_size, 100))
        hit = self.manager.store.notifier.recent(after, head, flt, page, system)
        if hit is None:
            hit = await self.manager.store.reader.run(
                lambda c: Reader.read_all_page(c, after, head, flt, page, system)
            )
        events, scanned = hit
        if self.cursor != after:
            return  # the group was reset meanwhile (e.g. deleted); drop the page
        self.cursor = scanned
        for event in events:
            self.outstanding.add(event.position.commit)
            self.pending.append(_Message(event))
        if events:
            self.wake.set()

    def _expire(self) -> None:
        now = time.monotonic()
        for consumer in self.consumers:
            expired: list[_Message] = []
            for message in consumer.in_flight.values():
                if message.deadline > now:
                    break  # deadline order: the rest are later
                expired.append(message)
            for message in expired:
                consumer.withdraw(message)
            self._retry_in_order(expired)

    def _pick(self, message: _Message) -> Consumer | None:
        """The consumer that takes ``message`` now, or ``None`` when it must wait; as the server's
        consumer strategies (Services/PersistentSubscription/ConsumerStrategy/*.cs) with the consumers'
        free slots (PersistentSubscriptionClient.Push refuses a client without one)."""
        turns = self._turns
        match self.settings.strategy:
            case ConsumerStrategy.PINNED:
                # A stream belongs to one consumer; if that one is full the message waits for it
                # (PinnablePersistentSubscriptionConsumerStrategy answers Skipped, not another client).
                owner = self.consumers[zlib.crc32(message.event.stream.encode()) % len(self.consumers)]
                return owner if owner.free_slots > 0 else None
            case ConsumerStrategy.ROUND_ROBIN:
                # Each client tried goes to the back of the queue, whether it took the message or not:
                # the first connected client first, then each in turn, skipping the full ones.
                for _ in range(len(turns)):
                    consumer = turns.popleft()
                    turns.append(consumer)
                    if consumer.free_slots > 0:
                        return consumer
                return None
            case ConsumerStrategy.DISPATCH_TO_SINGLE:
                # The client at the head of the queue takes everything it has room for; a full one goes
                # to the back, so the next client becomes the one that takes everything.
                for _ in range(len(turns)):
                    if turns[0].free_slots > 0:
                        return turns[0]
                    turns.rotate(-1)
                return None

    def _dispatch(self) -> None:
        if not self.consumers or not self.pending:
            return
        deadline = time.monotonic() + self.settings.message_timeout
        waiting: deque[_Message] = deque()
        while self.pending:
            if all(c.free_slots <= 0 for c in self.consumers):
                break  # NoMoreCapacity: the server stops pushing until a slot frees up
            message = self.pending.popleft()
            consumer = self._pick(message)
            if consumer is None:
                waiting.append(message)  # Skipped (Pinned): later messages may go to other consumers
                continue
            message.consumer = consumer
            message.deadline = deadline
            consumer.deliver(message)
        waiting.extend(self.pending)
        self.pending = waiting

    def _next_deadline(self) -> float:
        deadlines = [next(iter(c.in_flight.values())).deadline for c in self.consumers if c.in_flight]
        now = time.monotonic()
        delay = max(0.0, min(deadlines) - now) if deadlines else 3600.0
        if self.completed_since_checkpoint:
            delay = min(delay, max(0.0, self.last_checkpoint_time + self.settings.checkpoint_after - now))
        if self.parked_changes:
            delay = min(delay, max(0.0, self.parked_retry_at - now))
        return delay + 0.001

    def _done_up_to(self) -> int:
        return min(self.outstanding) - 1 if self.outstanding else self.cursor

    async def _maybe_checkpoint(self, force: bool = False) -> None:
        n = self.completed_since_checkpoint
        due = time.monotonic() - self.last_checkpoint_time >= self.settings.checkpoint_after
        if not force and not (
            n >= self.settings.max_checkpoint_count or (n >= self.settings.min_checkpoint_count and due)
        ):
            return
        position = self._done_up_to()
        self.completed_since_checkpoint = 0
        self.last_checkpoint_time = time.monotonic()
        if position == self.checkpoint:
            return
        self.checkpoint = position
        name = self.name
        await self.manager.store.write_call(
            lambda c: c.execute("UPDATE ps_groups SET checkpoint = ? WHERE name = ?", (position, name))
        )

    async def stop(self, error: BaseException | None) -> None:
        for consumer in list(self.consumers):
            consumer.drop(error or SubscriptionDropped(f"subscription {self.name!r} closed"))
        self.consumers.clear()
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def info(self) -> SubscriptionInfo:
        in_flight = sum(len(c.in_flight) for c in self.consumers)
        return SubscriptionInfo(
            group=self.name,
            filter=self.filter,
            settings=self.settings,
            checkpoint=Position(self.checkpoint) if self.checkpoint else None,
            in_flight=in_flight,
            parked=self.parked,
            connections=len(self.consumers),
        )


class PersistentSubscriptions:
    def __init__(self, store: EmbeddedEventStore) -> None:
        self.store = store
        self.groups: dict[str, _Group] = {}

    async def load(self) -> None:
        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT g.name, g.filter, g.settings, coalesce(g.checkpoint, g.start_after, 0),"
                " (SELECT count(*) FROM ps_parked p WHERE p.grp = g.name) FROM ps_groups g"
            ).fetchall()

        for name, flt, settings, checkpoint, parked in await self.store.reader.run(read):
            selection = json.loads(flt)
            self.groups[name] = _Group(
                self,
                name,
                EventFilter.from_json(selection),
                _settings_from_json(settings),
                checkpoint,
                parked,
                system_events=bool(selection.get("system_events", False)),
            )

    def _group(self, name: str) -> _Group:
        group = self.groups.get(name)
        if group is None:
            raise SubscriptionNotFound(name)
        return group

    async def create(
        self,
        name: str,
        flt: EventFilter,
        settings: PersistentSubscriptionSettings,
        after: Position | None,
        from_end: bool,
        system_events: bool = False,
    ) -> None:
        if name in self.groups:
            raise SubscriptionExists(name)
        start = self.store.notifier.head if from_end else (after.commit if after is not None else 0)
        filter_json, settings_json = _filter_json(flt, system_events), _settings_json(settings)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ps_groups (name, filter, settings, start_after) VALUES (?, ?, ?, ?)",
                (name, filter_json, settings_json, start),
            )

        if name in self.groups:
            raise SubscriptionExists(name)
        self.groups[name] = _Group(self, name, flt, settings, start, 0, system_events)
        try:
            await self.store.write_call(insert)
        except Exception:
            del self.groups[name]
            raise

    async def update(self, name: str, settings: PersistentSubscriptionSettings) -> None:
        group = self._group(name)
        if settings.strategy is not group.settings.strategy:
            raise SubscriptionSettingsError(
                f"the consumer strategy of {name!r} cannot change ({group.settings.strategy.value}"
                f" -> {settings.strategy.value}): delete and recreate the group"
            )
        text = _settings_json(settings)
        await self.store.write_call(
            lambda c: c.execute("UPDATE ps_groups SET settings = ? WHERE name = ?", (text, name))
        )
        group.settings = settings
        group.wake.set()

    async def delete(self, name: str) -> None:
        group = self._group(name)
        del self.groups[name]
        await group.stop(SubscriptionDropped(f"subscription {name!r} was deleted"))

        def remove(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ps_groups WHERE name = ?", (name,))
            conn.execute("DELETE FROM ps_parked WHERE grp = ?", (name,))

        await self.store.write_call(remove)

    async def connect(self, name: str, buffer_size: int) -> Consumer:
        return self._group(name).connect(buffer_size)

    async def replay_parked(self, name: str) -> None:
        group = self._group(name)
        positions = await self.store.reader.run(
            lambda c: [
                r[0]
                for r in c.execute("SELECT position FROM ps_parked WHERE grp = ? ORDER BY position", (name,))
            ]
        )
        queued = {m.event.position.commit for m in group.pending if m.replayed}
        wanted = [p for p in positions if p not in queued]
        events: Sequence[RecordedEvent] = await self.store.reader.run(lambda c: Reader.events_at(c, wanted))
        group.pending.extend(_Message(e, replayed=True) for e in events)
        group.wake.set()

    async def info(self, name: str) -> SubscriptionInfo:
        return self._group(name).info()

    async def list(self) -> list[SubscriptionInfo]:
        return [g.info() for g in self.groups.values()]

    async def close(self) -> None:
        for group in self.groups.values():
            if group.consumers:
                with contextlib.suppress(Exception):
                    await group._write_parked()
                    await group._maybe_checkpoint(force=True)
            await group.stop(None)
