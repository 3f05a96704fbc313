"""The server's persistent subscription groups over the embedded store's groups.

A group exists when ``$persistentSubscriptionConfig`` says so, as on the server (its configuration is one
event holding every group, the newest event wins; PersistentSubscriptionService.SaveConfiguration). Each
group runs as an embedded group named by its key ``<stream>::<group>``, which keeps the checkpoint, the
in-flight messages and the parked list.

The two are written one after the other, and repeating either is harmless: a create writes the embedded
group first and the configuration last (the configuration commits it); a delete removes the
configuration first. On start-up, embedded groups the configuration does not know are removed and
configured groups the embedded store lacks are created, so a crash between the two writes is repaired.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from typing import Any

import structlog

from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.errors import StreamNotFound, SubscriptionExists, SubscriptionNotFound
from orchestrator.eventstore.ids import event_id
from orchestrator.eventstore.port import PersistentSubscription
from orchestrator.eventstore.server.psconfig import (
    CONFIG_STREAM,
    CONFIG_TYPE,
    GroupConfig,
    GroupFailed,
    group_key,
)
from orchestrator.eventstore.server.storage import ServerStore, stream_info
from orchestrator.eventstore.types import NewEvent, Position, StreamState, SubscriptionInfo

log = structlog.get_logger("orchestrator.eventstore.server")


class Groups:
    def __init__(self, store: ServerStore) -> None:
        self._server_store = store
        self._store: EmbeddedEventStore = store.store
        self._configs: dict[str, GroupConfig] = {}
        #: revision of the configuration stream's last event, -1 for none
        self._revision = -1
        # Configuration changes are read-modify-write of one document.
        self._lock = asyncio.Lock()

    # --- start-up --------------------------------------------------------------------------------------
    async def load(self) -> None:
        try:
            events = await self._store.read_stream(CONFIG_STREAM, from_revision=-1, backwards=True, limit=1)
        except StreamNotFound:
            events = []
        if events:
            self._revision = events[0].revision
            entries = json.loads(events[0].data).get("entries", [])
            self._configs = {c.key: c for c in (GroupConfig.from_json(e) for e in entries)}
        embedded = {i.group for i in await self._store.list_subscriptions()}
        for name in embedded - self._configs.keys():
            log.warning("persistent_group_orphan_removed", group=name)
            await self._store.delete_subscription(name)
        for key in self._configs.keys() - embedded:
            log.warning("persistent_group_recreated", group=key)
            await self._create_embedded(self._configs[key])

    # --- definitions -------------------------------------------------------------------------------------
    def get(self, stream: str, group: str) -> GroupConfig:
        config = self._configs.get(group_key(stream, group))
        if config is None:
            raise SubscriptionNotFound(group_key(stream, group))
        return config

    def configs(self, stream: str | None = None) -> list[GroupConfig]:
        return [c for c in self._configs.values() if stream is None or c.stream == stream]

    async def create(self, config: GroupConfig) -> None:
        async with self._lock:
            if config.key in self._configs:
                raise SubscriptionExists(config.key)
            config = await self._resolve_start(config)
            if config.key in {i.group for i in await self._store.list_subscriptions()}:
                await self._store.delete_subscription(config.key)  # an orphan of an interrupted create
            await self._create_embedded(config)
            try:
                await self._save({**self._configs, config.key: config})
            except BaseException:
                await self._store.delete_subscription(config.key)
                raise

    async def update(self, config: GroupConfig) -> None:
        """Replace a group's definition; the filter stays (UpdatePersistentSubscription keeps the old
        event source's filter). Connected consumers are dropped by the caller, as the server does."""
        async with self._lock:
            old = self._configs.get(config.key)
            if old is None:
                raise SubscriptionNotFound(config.key)
            config = await self._resolve_start(replace(config, selector=old.selector))
            info = await self._store.get_subscription_info(config.key)
            # The server builds a new subscription that resumes from the group's checkpoint; its start
            # matters only while there is none. The embedded store cannot change a strategy in place.
            restart = info.checkpoint is None and config.start_from() != old.start_from()
            if restart or config.settings.strategy is not old.settings.strategy:
                after = info.checkpoint
                await self._store.delete_subscription(config.key)
                await self._create_embedded(config, after=after)
            else:
                await self._store.update_subscription(config.key, config.settings)
            await self._save({**self._configs, config.key: config})

    async def delete(self, stream: str, group: str) -> None:
        async with self._lock:
            key = group_key(stream, group)
            if key not in self._configs:
                raise SubscriptionNotFound(key)
            await self._save({k: c for k, c in self._configs.items() if k != key})
            await self._store.delete_subscription(key)

    # --- consumers and state --------------------------------------------------------------------------
    async def connect(self, config: GroupConfig, *, buffer_size: int) -> PersistentSubscription:
        consumer: PersistentSubscription = await self._store.read_subscription(
            config.key, buffer_size=buffer_size
        )
        return consumer

    async def replay_parked(self, config: GroupConfig) -> None:
        await self._store.replay_parked(config.key)

    async def info(self, config: GroupConfig) -> SubscriptionInfo:
        return await self._store.get_subscription_info(config.key)

    async def checkpoint_text(self, config: GroupConfig, checkpoint: Position | None) -> str:
        """LastCheckpointedEventPosition: "C:/P:" in $all, the event number in a stream ("" for none)."""
        if checkpoint is None:
            return ""
        if config.is_all:
            return f"C:{checkpoint.commit}/P:{checkpoint.commit}"
        stream, upto = config.stream, checkpoint.commit
        revision = await self._store.reader.run(lambda c: _revision_at(c, stream, upto))
        return "" if revision is None else str(revision)

    async def last_known_text(self, config: GroupConfig) -> str:
        if config.is_all:
            head = self._store.notifier.head
            return f"C:{head}/P:{head}"
        last = (await self._server_store.info(config.stream)).last
        return str(last) if last >= 0 else ""

    # --- internals -------------------------------------------------------------------------------------
    async def _resolve_start(self, config: GroupConfig) -> GroupConfig:
        if config.is_all:
            # PersistentSubscriptionService.ValidateStartFrom
            if config.start > self._store.notifier.head:
                raise GroupFailed(
                    "Invalid Start From position: commit position must be less than or equal to the last "
                    "commit position in the transaction file."
                )
            if config.start < -1:
                raise GroupFailed(
                    "Invalid Start From position: prepare and commit positions must be greater than or "
                    "equal to 0 or both equal to -1."
                )
            return config
        if config.start < -1:
            raise GroupFailed(
                "Invalid Start From position: event number must be greater than or equal to -1."
            )
        if config.start >= 0:
            return replace(config, first_revision=config.start)
        # From the end: the stream's next revision when the group is made.
        stream = config.stream
        last = (await self._store.reader.run(lambda c: stream_info(c, stream))).last
        return replace(config, first_revision=last + 1)

    async def _create_embedded(self, config: GroupConfig, *, after: Position | None = None) -> None:
        try:
            flt = config.embedded_filter()
        except ValueError as e:
            raise GroupFailed(f"the filter cannot be served by this server: {e}") from e
        from_end = False
        if after is None and config.is_all:
            # The server delivers the event *at* its start position; the embedded store starts after.
            if config.start == -1:
                from_end = True
            elif config.start > 0:
                after = Position(config.start - 1)
        elif after is None and config.start == -1:
            from_end = True  # a stream group from its end: nothing written before now can match
        # System events too: the server reads a group's source as the system account, and $all groups
        # get every event but what DefaultAllFilter denies (the Read call drops those).
        await self._store.create_subscription(
            config.key,
            filter=flt,
            settings=config.settings,
            after=after,
            from_end=from_end,
            system_events=True,
        )

    async def _save(self, configs: dict[str, GroupConfig]) -> None:
        document = {"entries": [c.to_json() for c in configs.values()]}
        data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        expected = self._revision if self._revision >= 0 else StreamState.NO_STREAM
        event = NewEvent(event_id(CONFIG_STREAM, expected, 0, CONFIG_TYPE, data, b""), CONFIG_TYPE, data)
        result = await self._server_store.append(CONFIG_STREAM, [event], expected)
        self._revision = result.next_revision if result.next_revision is not None else self._revision + 1
        self._configs = configs


def _revision_at(conn: sqlite3.Connection, stream: str, upto: int) -> int | None:
    row: Any = conn.execute(
        "SELECT max(e.revision) FROM events e JOIN streams s ON s.id = e.stream_id"
        " WHERE s.name = ? AND e.position <= ?",
        (stream, upto),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
