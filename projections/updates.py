"""The closed set of view updates a projector may emit; :mod:`projections.redis_store` executes them.

Pure values, no ``redis`` import: projectors stay pure and testable without a server. Keys are *logical*
(``{tenant}:…``, built with :func:`view_key`); the store places them under ``{prefix}:g{generation}:`` so one
projector serves every generation. Everything that needs the current value of a view (an index move on a
status change) is expressed as an operation that reads and writes inside the store's Lua script, because
reading in Python and writing later would race with nothing but would break the one-call atomicity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeAlias

from orchestrator.eventstore.types import RecordedEvent

__all__ = [
    "Delete",
    "ExpireAt",
    "HDel",
    "HIncrBy",
    "HIncrByFloat",
    "HSet",
    "IndexMove",
    "Update",
    "ZAdd",
    "ZRem",
    "ZRemRangeByScore",
    "view_key",
]


def view_key(tenant: str, *parts: str) -> str:
    """The logical key of a view: ``{tenant}:{part}:…`` (tenant first so a tenant's keys share a prefix)."""
    if not tenant or not parts or not all(parts):
        raise ValueError("a view key needs a tenant and at least one non-empty part")
    return ":".join((tenant, *parts))


#: fields per HSet / HDel: a view document, not a bulk load (the script unpacks them onto Lua's stack)
MAX_FIELDS = 1_000


def _finite(value: float, what: str) -> float:
    if math.isnan(value):
        raise ValueError(f"{what} must not be NaN")
    return value


@dataclass(frozen=True, slots=True)
class HSet:
    """Set fields of a hash (a view document: one JSON value per field, or one ``doc`` field)."""

    key: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < len(self.fields) <= MAX_FIELDS:
            raise ValueError(f"HSet needs 1 to {MAX_FIELDS} fields")


@dataclass(frozen=True, slots=True)
class HDel:
    key: str
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0 < len(self.fields) <= MAX_FIELDS:
            raise ValueError(f"HDel needs 1 to {MAX_FIELDS} fields")


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class ZAdd:
    """Add (or re-score) a member of a sorted-set index; scores are event times or positions."""

    key: str
    member: str
    score: float

    def __post_init__(self) -> None:
        _finite(self.score, "score")


@dataclass(frozen=True, slots=True)
class ZRem:
    key: str
    member: str


@dataclass(frozen=True, slots=True)
class ZRemRangeByScore:
    """Trim an index (inclusive bounds), e.g. entries older than an event time minus the retention:
    sorted-set members cannot expire on their own."""

    key: str
    min: float
    max: float

    def __post_init__(self) -> None:
        _finite(self.min, "min")
        _finite(self.max, "max")


@dataclass(frozen=True, slots=True)
class HIncrBy:
    """An integer counter in a hash (counts per status, per definition, …)."""

    key: str
    field: str
    amount: int


@dataclass(frozen=True, slots=True)
class HIncrByFloat:
    """A float accumulator in a hash (sums of durations for averages)."""

    key: str
    field: str
    amount: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.amount):
            raise ValueError("amount must be finite")


@dataclass(frozen=True, slots=True)
class ExpireAt:
    """Expire a key at an absolute Unix time (seconds). Always computed from event times, never from the
    clock, so a rebuild sets the same deadline (use :meth:`after`)."""

    key: str
    at: int

    @classmethod
    def after(cls, key: str, event_time: datetime, retention: timedelta) -> ExpireAt:
        if event_time.tzinfo is None:
            raise ValueError("event_time must be timezone-aware")
        return cls(key, math.ceil((event_time + retention).timestamp()))


@dataclass(frozen=True, slots=True)
class IndexMove:
    """Move ``member`` between sorted-set indexes according to a hash field's value, read-modify-write
    inside the script: read ``doc[field]`` (the old value), remove ``member`` from every index of the old
    value, add it to every index of ``to``, then set ``doc[field] = to`` (``to == ""`` deletes the field).

    ``indexes`` maps every value the field can take to the keys of the indexes a member with that value
    belongs to (e.g. ``dead_lettered -> (status:dead_lettered, dlq)``); a value missing from the map
    belongs to no index. Every key must be listed here because the script may only touch keys it is given.
    ``score=None`` keeps the member's score from its old index (0 when it had none).
    """

    doc: str
    field: str
    member: str
    to: str
    indexes: Mapping[str, tuple[str, ...]]
    score: float | None = None

    def __post_init__(self) -> None:
        if self.score is not None:
            _finite(self.score, "score")
        if self.to and self.to not in self.indexes:
            # Not an error in the script (the member would simply leave every index), but in a projector
            # it is almost always a forgotten status, so refuse it where the mistake is made.
            raise ValueError(f"IndexMove target value {self.to!r} has no entry in indexes")


Update: TypeAlias = (
    HSet | HDel | Delete | ZAdd | ZRem | ZRemRangeByScore | HIncrBy | HIncrByFloat | ExpireAt | IndexMove
)


class Projector(Protocol):
    """A pure read model: the updates one event implies. No IO, no clock: everything it needs comes from
    the event (times from ``recorded_at``), and read-modify-write happens in the store (``IndexMove``)."""

    def project(self, event: RecordedEvent) -> Sequence[Update]: ...
