"""Membership: every node announces itself in the event store and renews a heartbeat there; every node reads
the others' beats and keeps its own view of who is alive.

Liveness is judged on the *observer's* monotonic clock: a node is in the view while the revision of its
latest event has changed within the TTL, as this observer saw it. Wall clocks (the store's ``recorded_at``,
a node's ``started_at``) are never compared across nodes. So a node that stops beating leaves every view
at most TTL + one read interval after its last beat reached the store; a node that was already silent
when an observer started is in that observer's view for one TTL; a clean stop (``NodeLeft``) leaves at
the next read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.cluster.records import (
    NODE_ANNOUNCED,
    NODE_HEARTBEAT,
    NODE_LEFT,
    MemberEvent,
    MemberEventType,
    NodeRecord,
    decode_member,
    encode_member,
)
from orchestrator.cluster.tail import bound, read_after
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import ANY

Clock = Callable[[], float]
#: a node unseen for this many TTLs is forgotten (it left every view long before)
FORGET_AFTER_TTLS = 10


@dataclass(frozen=True, slots=True)
class Member:
    node: NodeRecord
    #: revision of its latest event in the membership stream
    revision: int
    #: seconds since this observer saw that revision appear (its own monotonic clock)
    age_s: float
    #: what it reported of itself at that beat
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Seen:
    node: NodeRecord
    revision: int
    changed_at: float
    left: bool
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Changes:
    """What one read changed in the view (for the log)."""

    joined: tuple[NodeRecord, ...] = ()
    left: tuple[str, ...] = ()


class Membership:
    def __init__(
        self,
        store: EventStore,
        stream: str,
        me: NodeRecord,
        *,
        ttl_s: float,
        window: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.me = me
        self.stream = stream
        self.ttl_s = ttl_s
        self._store = store
        self._window = window
        self._clock = clock
        self._beats = 0
        #: what this node reports of itself with each beat (set by the composition root)
        self.report: Callable[[], Mapping[str, Any]] | None = None
        self._head: int | None = None
        self._seen: dict[str, _Seen] = {}
        self._live: frozenset[str] = frozenset()

    async def prepare(self) -> None:
        """Bound the stream (``$maxCount``), so neither readers nor the store's readable tail grow."""
        await bound(self._store, self.stream, self._window)

    async def beat(self) -> None:
        """Announce this node (first beat) or renew its heartbeat. Every event carries the whole record; a
        failed beat is resent with the same bytes (the same id) next time."""
        kind: MemberEventType = NODE_ANNOUNCED if self._beats == 0 else NODE_HEARTBEAT
        state = dict(self.report()) if self.report is not None else {}
        await self._append(MemberEvent(kind, self.me, self._beats, state))
        self._beats += 1

    async def leave(self) -> None:
        """Say this node is leaving: observers drop it at their next read instead of after the TTL."""
        await self._append(MemberEvent(NODE_LEFT, self.me, self._beats))
        self._beats += 1

    async def _append(self, event: MemberEvent) -> None:
        await self._store.append(self.stream, encode_member(self.stream, event, ANY), expected=ANY)

    async def observe(self) -> Changes:
        """Read what was appended since the last read and update the view."""
        events = await read_after(self._store, self.stream, self._head, self._window)
        now = self._clock()
        for recorded in events:
            self._head = recorded.revision if self._head is None else max(self._head, recorded.revision)
            event = decode_member(recorded)
            if event is None:
                continue
            seen = self._seen.get(event.node.node_id)
            if seen is None or recorded.revision > seen.revision:
                self._seen[event.node.node_id] = _Seen(
                    event.node, recorded.revision, now, event.type == NODE_LEFT, event.state
                )
        forget = self.ttl_s * FORGET_AFTER_TTLS
        for node_id in [n for n, s in self._seen.items() if now - s.changed_at > forget]:
            del self._seen[node_id]
        return self._changes()

    def _changes(self) -> Changes:
        live = {m.node.node_id: m.node for m in self.live()}
        joined = tuple(node for node_id, node in sorted(live.items()) if node_id not in self._live)
        left = tuple(sorted(self._live - live.keys()))
        self._live = frozenset(live)
        return Changes(joined, left)

    def live(self) -> list[Member]:
        """The nodes alive in this observer's view, by node id."""
        now = self._clock()
        return [
            Member(s.node, s.revision, now - s.changed_at, s.state)
            for _, s in sorted(self._seen.items())
            if not s.left and now - s.changed_at < self.ttl_s
        ]
