"""Timer shards (pure): which shard a saga's timers belong to, and how the leader spreads the shards over
the live engine nodes.

The assignment is balanced (shard counts differ by at most one), deterministic for the same inputs, and
moves as few shards as it can: every node keeps what it held up to its share, and only the shards of
nodes that left (or a node's excess) move, to the nodes below their share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: shards of the timer key space; fixed, so every node and every epoch agree on what a shard is
SHARDS = 64


def shard_of(saga_id: str, shards: int = SHARDS) -> int:
    """The shard of a saga (all its timers): a hash of its id, the same on every node and in every release."""
    digest = hashlib.sha256(saga_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def assign(
    nodes: Iterable[str], previous: Mapping[str, Sequence[int]] | None = None, shards: int = SHARDS
) -> dict[str, tuple[int, ...]]:
    """Every shard to exactly one of ``nodes`` (none when there are no nodes)."""
    live = sorted(set(nodes))
    if not live:
        return {}
    previous = previous or {}
    held: dict[str, list[int]] = {}
    taken: set[int] = set()
    for node in live:
        mine = [s for s in sorted(set(previous.get(node, ()))) if 0 <= s < shards and s not in taken]
        held[node] = mine
        taken.update(mine)
    base, extra = divmod(shards, len(live))
    # The nodes that hold most get the one extra shard each: fewer shards move.
    order = sorted(live, key=lambda n: (-len(held[n]), n))
    share = {node: base + (1 if i < extra else 0) for i, node in enumerate(order)}
    kept = {node: held[node][: share[node]] for node in live}
    in_use = {s for owned in kept.values() for s in owned}
    free = iter(s for s in range(shards) if s not in in_use)
    for node in live:
        kept[node] += [next(free) for _ in range(share[node] - len(kept[node]))]
    return {node: tuple(sorted(owned)) for node, owned in kept.items()}


@dataclass(frozen=True, slots=True)
class Assignment:
    """The latest shard assignment in the lease stream, with the epoch of the leader that wrote it."""

    epoch: int
    #: the leader that wrote it
    holder: str
    #: its revision in the lease stream
    revision: int
    shards: int
    by_node: Mapping[str, tuple[int, ...]]

    def owned(self, node_id: str) -> tuple[int, ...]:
        return self.by_node.get(node_id, ())

    def owner(self, shard: int) -> str | None:
        return next((node for node, owned in self.by_node.items() if shard in owned), None)
