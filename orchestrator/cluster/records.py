"""What cluster mode writes to the event store: two streams per cluster, their events, and how they are
encoded (JSON) and read back (tolerantly: an event this node cannot read is skipped, never fatal).

- ``cluster-{name}-members``: every node's announcements, heartbeats and leave notices, appended with
  ``ANY`` (nodes never contend there). Each event carries the whole :class:`NodeRecord`, so the stream's
  ``$maxCount`` may drop a node's first announcement without losing what it said.
- ``cluster-{name}-lease``: the leader lease. Every event is appended at an exact expected revision: an
  acquisition (whose revision is the epoch, the fencing token), renewals, leader-only data (the shard
  assignment) and a release.

Neither stream starts with ``saga-``, ``sagadef-`` or ``apikeys-``, so no engine, projector, timer index
or audit deriver receives them (their filters are stream prefixes); they only move ``$all``'s head.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from orchestrator.eventstore.ids import new_events
from orchestrator.eventstore.types import Expected, NewEvent, RecordedEvent

#: events of the lease stream a reader looks back over; the leader re-writes the assignment before it
#: would fall out of this window (every ``LEASE_WINDOW // 4`` lease events)
LEASE_WINDOW = 64
SCHEMA = "1"

NODE_ANNOUNCED: Final = "NodeAnnounced"
NODE_HEARTBEAT: Final = "NodeHeartbeat"
NODE_LEFT: Final = "NodeLeft"
LEASE_ACQUIRED: Final = "LeaseAcquired"
LEASE_RENEWED: Final = "LeaseRenewed"
SHARDS_ASSIGNED: Final = "ShardsAssigned"
LEASE_RELEASED: Final = "LeaseReleased"

MemberEventType = Literal["NodeAnnounced", "NodeHeartbeat", "NodeLeft"]
LeaseEventType = Literal["LeaseAcquired", "LeaseRenewed", "ShardsAssigned", "LeaseReleased"]


def members_stream(cluster: str) -> str:
    return f"cluster-{cluster}-members"


def lease_stream(cluster: str) -> str:
    return f"cluster-{cluster}-lease"


def members_window(nodes: int) -> int:
    """The membership stream's ``$maxCount``: room for every expected node's last several beats."""
    return max(64, 8 * nodes)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node says about itself. ``started_at`` is its wall clock, for people: no node compares it."""

    node_id: str
    version: str
    roles: tuple[str, ...]
    address: str
    started_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "version": self.version,
            "roles": list(self.roles),
            "address": self.address,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> NodeRecord:
        roles = value["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError("roles must be a list of strings")
        return cls(
            node_id=_str(value, "node_id"),
            version=_str(value, "version"),
            roles=tuple(roles),
            address=_str(value, "address"),
            started_at=_str(value, "started_at"),
        )


@dataclass(frozen=True, slots=True)
class MemberEvent:
    type: MemberEventType
    node: NodeRecord
    #: the node's own count of its beats (makes every heartbeat's bytes, hence its id, distinct)
    beat: int
    #: what the node reports of itself at this beat (its timer firer, consumer, …): small JSON values
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """One event of the lease stream. ``epoch`` is the revision of the acquisition it belongs to."""

    type: LeaseEventType
    holder: str
    epoch: int
    lease_ms: int
    #: ShardsAssigned only: the number of shards and who owns which
    shards: int = 0
    assignment: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def _str(value: Mapping[str, Any], key: str) -> str:
    found = value[key]
    if not isinstance(found, str):
        raise ValueError(f"{key} must be a string")
    return found


def _metadata(node_id: str) -> bytes:
    return json.dumps({"actor": f"node:{node_id}", "schema": SCHEMA}, separators=(",", ":")).encode()


def _data(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode_member(stream: str, event: MemberEvent, expected: Expected) -> list[NewEvent]:
    body: dict[str, Any] = {"node": event.node.to_json(), "beat": event.beat}
    if event.state:
        body["state"] = dict(event.state)
    return new_events(stream, expected, [(event.type, _data(body), _metadata(event.node.node_id))])


def encode_lease(stream: str, events: Sequence[LeaseEvent], expected: Expected) -> list[NewEvent]:
    """Deterministic ids (same events at the same expected revision: same ids), so a resend after an
    ambiguous failure is idempotent and a different writer's events in the same slot are a conflict."""
    items = []
    for event in events:
        body: dict[str, Any] = {"holder": event.holder, "epoch": event.epoch, "lease_ms": event.lease_ms}
        if event.type == SHARDS_ASSIGNED:
            body["shards"] = event.shards
            body["assignment"] = {node: list(owned) for node, owned in sorted(event.assignment.items())}
        items.append((event.type, _data(body), _metadata(event.holder)))
    return new_events(stream, expected, items)


def decode_member(event: RecordedEvent) -> MemberEvent | None:
    """The event, or None for one this node cannot read (another version's type, a broken body)."""
    if event.type not in (NODE_ANNOUNCED, NODE_HEARTBEAT, NODE_LEFT):
        return None
    try:
        body = json.loads(event.data)
        beat = body["beat"]
        if not isinstance(beat, int):
            return None
        state = body.get("state")
        return MemberEvent(
            event.type,  # type: ignore[arg-type]
            NodeRecord.from_json(body["node"]),
            beat,
            state if isinstance(state, dict) else {},
        )
    except (ValueError, KeyError, TypeError):
        return None


def decode_lease(event: RecordedEvent) -> LeaseEvent | None:
    if event.type not in (LEASE_ACQUIRED, LEASE_RENEWED, SHARDS_ASSIGNED, LEASE_RELEASED):
        return None
    try:
        body = json.loads(event.data)
        holder, epoch, lease_ms = body["holder"], body["epoch"], body["lease_ms"]
        if not isinstance(holder, str) or not isinstance(epoch, int) or not isinstance(lease_ms, int):
            return None
        shards, assignment = 0, {}
        if event.type == SHARDS_ASSIGNED:
            shards = body["shards"]
            if not isinstance(shards, int):
                return None
            assignment = {
                str(node): tuple(int(s) for s in owned) for node, owned in body["assignment"].items()
            }
        return LeaseEvent(event.type, holder, epoch, lease_ms, shards, assignment)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
