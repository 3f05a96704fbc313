"""Read models for the query API: the saga views of the active generation (layout in
:mod:`projections.projectors.keys`). Reads only; every key is tenant-scoped, so another tenant's saga is
simply absent. Lists are newest first with opaque cursors (a malformed one raises ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator.domain.versions import latest_version, semver_key
from orchestrator.eventstore import Position
from projections.projectors.assemble import SUMMARY_FIELDS, assemble_saga, assemble_summary
from projections.projectors.keys import (
    OPEN_PHASES,
    PAUSES,
    PHASES,
    all_index,
    counters_key,
    definition_index,
    definition_key,
    definitions_index,
    dlq_index,
    pause_index,
    phase_index,
    saga_key,
)
from projections.redis_store import RedisViewStore, translated
from projections.runner import wait_for_position
from projections.views import DefinitionSummary, Page, SagaCounters, SagaSummary, SagaView

__all__ = ["DURATION_SAMPLE", "MAX_LIMIT", "ReadModels", "decode_cursor", "encode_cursor"]

MAX_LIMIT = 500
#: completed sagas whose durations `counters` sums (the newest ones still retained)
DURATION_SAMPLE = 10_000
_STATUSES = frozenset((*PHASES, *PAUSES))
#: reads again at most this many times when rebuilds keep switching the serving generation under a read
_SWITCHES = 3
_T = TypeVar("_T")


def encode_cursor(score: float, member: str) -> str:
    raw = json.dumps([score, member], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`; ``ValueError`` for anything else."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise ValueError("malformed cursor") from e
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int | float)
        or isinstance(value[0], bool)
        or not math.isfinite(value[0])
        or not isinstance(value[1], str)
    ):
        raise ValueError("malformed cursor")
    return float(value[0]), value[1]


class ReadModels:
    def __init__(self, views: RedisViewStore) -> None:
        self._views = views
        self._client = views.client

    async def _in_active(self, read: Callable[[int], Awaitable[_T]], empty: _T) -> _T:
        """``read`` from the serving generation. A rebuild may switch generations while a read runs and
        then delete the one it read (a saga would look missing): if the serving generation changed
        meanwhile, read again from the new one."""
        generation = await self._views.active_generation()
        result = empty
        for _ in range(_SWITCHES):
            if generation is None:
                return empty
            result = await read(generation)
            serving = await self._views.active_generation()
            if serving == generation:
                return result
            generation = serving
        return result

    async def saga(self, tenant: str, saga_id: str) -> SagaView | None:
        async def read(generation: int) -> dict[str, str]:
            async with translated():
                raw: dict[str, str] = await self._client.hgetall(  # type: ignore[misc]
                    self._views.key(generation, saga_key(tenant, saga_id))
                )
            return raw

        raw: dict[str, str] = await self._in_active(read, {})
        view = assemble_saga(raw) if raw else None
        return view if view is not None and view.tenant == tenant else None

    async def list_sagas(
        self,
        tenant: str,
        *,
        status: str | None = None,
        definition: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[SagaSummary]:
        """Newest first: by start time, except terminal statuses (by finish time) and paused ones (by the
        time they stopped). The time and definition lists cover the retention window."""
        if status is not None and status not in _STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if status in PAUSES:
            index = pause_index(tenant, status)
        elif status is not None:
            index = phase_index(tenant, status)
        elif definition is not None:
            index = definition_index(tenant, definition)
        else:
            index = all_index(tenant)

        def accept(row: SagaSummary) -> bool:
            # Paused sagas stay in their phase's index; the row's status says where they are.
            return (status is None or row.status == status) and (
                definition is None or row.definition_name == definition
            )

        return await self._page(index, limit, cursor, accept)

    async def dlq(self, tenant: str, *, limit: int = 50, cursor: str | None = None) -> Page[SagaSummary]:
        """Dead-lettered and suspended sagas, most recently stopped first."""
        return await self._page(dlq_index(tenant), limit, cursor, None)

    async def _page(
        self,
        logical: str,
        limit: int,
        cursor: str | None,
        accept: Callable[[SagaSummary], bool] | None,
    ) -> Page[SagaSummary]:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        bound = decode_cursor(cursor) if cursor is not None else None

        async def read(generation: int) -> list[tuple[SagaSummary, float]]:
            return await self._rows(generation, logical, limit, bound, accept)

        rows: list[tuple[SagaSummary, float]] = await self._in_active(read, [])
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][1], rows[-1][0].saga_id) if more else None
        return Page[SagaSummary](items=[r for r, _ in rows], next_cursor=next_cursor)

    async def _rows(
        self,
        generation: int,
        logical: str,
        limit: int,
        bound: tuple[float, str] | None,
        accept: Callable[[SagaSummary], bool] | None,
    ) -> list[tuple[SagaSummary, float]]:
        """Up to ``limit + 1`` accepted rows of one generation's index below the cursor ``bound``."""
        index = self._views.key(generation, logical)
        tenant = logical.split(":", 1)[0]
        rows: list[tuple[SagaSummary, float]] = []
        top = "+inf" if bound is None else repr(bound[0])
        offset, batch = 0, min(MAX_LIMIT, limit * 2 + 1)
        fields = list(SUMMARY_FIELDS)
        async with translated():
            while len(rows) <= limit:
                found = await self._client.zrevrangebyscore(
                    index, top, "-inf", start=offset, num=batch, withscores=True
                )
                offset += len(found)
                # Equal scores come in descending member order: skip the ones at or above the cursor.
                members = [
                    (m, s)
                    for m, s in found
                    if bound is None or s < bound[0] or (s == bound[0] and m < bound[1])
                ]
                if members:
                    pipe = self._client.pipeline(transaction=False)
                    for member, _ in members:
                        pipe.hmget(self._views.key(generation, saga_key(tenant, member)), fields)
                    for (_, score), values in zip(members, await pipe.execute(), strict=True):
                        row = assemble_summary(values)  # None: the detail expired before the index trim
                        if row is not None and (accept is None or accept(row)):
                            rows.append((row, score))
                if len(found) < batch:
                    break
        return rows

    async def definitions(self, tenant: str) -> list[DefinitionSummary]:
        """The tenant's definitions by name; ``latest`` by semantic-version precedence."""

        async def read(generation: int) -> tuple[list[str], list[dict[str, str]]]:
            async with translated():
                names = await self._client.zrange(
                    self._views.key(generation, definitions_index(tenant)), 0, -1
                )
                pipe = self._client.pipeline(transaction=False)
                for name in names:
                    pipe.hgetall(self._views.key(generation, definition_key(tenant, name)))
                versions = await pipe.execute()
            return names, versions

        nothing: tuple[list[str], list[dict[str, str]]] = ([], [])
        names, versions = await self._in_active(read, nothing)
        result: list[DefinitionSummary] = []
        for name, by_version in sorted(zip(names, versions, strict=True)):
            latest = latest_version(by_version)
            if latest is None:
                continue
            result.append(
                DefinitionSummary(
                    name=name,
                    versions=sorted(by_version, key=_semver),
                    latest=latest,
                    registered_at=json.loads(by_version[latest])["registered_at"],
                )
            )
        return result

    async def counters(self, tenant: str) -> SagaCounters:
        async def read(generation: int) -> SagaCounters:
            return await self._counters(generation, tenant)

        return await self._in_active(read, SagaCounters())

    async def _counters(self, generation: int, tenant: str) -> SagaCounters:
        def key(logical: str) -> str:
            return self._views.key(generation, logical)

        async with translated():
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(key(counters_key(tenant)))
            for phase in OPEN_PHASES:
                pipe.zcard(key(phase_index(tenant, phase)))
            for pause in PAUSES:
                pipe.zcard(key(pause_index(tenant, pause)))
            # Paused sagas stay in their phase's index: those paused while running (the rest of the DLQ
            # was compensating). ZINTER costs about the DLQ's size, the smaller set.
            pipe.zinter([key(dlq_index(tenant)), key(phase_index(tenant, "running"))])
            pipe.zrevrange(key(phase_index(tenant, "completed")), 0, DURATION_SAMPLE - 1)
            raw, running, compensating, dead, suspended, paused_running, recent = await pipe.execute()
            pipe = self._client.pipeline(transaction=False)
            for saga_id in recent:
                pipe.hmget(key(saga_key(tenant, saga_id)), ["started_ms", "finished_ms"])
            durations = await pipe.execute()
        counts = {k: int(v) for k, v in raw.items()}
        paused_running = len(paused_running)
        paused_compensating = dead + suspended - paused_running
        by_status = {
            "running": running - paused_running,
            "compensating": compensating - paused_compensating,
            "dead_lettered": dead,
            "suspended": suspended,
            "completed": counts.get("completed", 0),
            "compensated": counts.get("compensated", 0),
        }
        spans = [float(f) - float(s) for s, f in durations if s is not None and f is not None]
        return SagaCounters(
            total=counts.get("total", 0),
            by_status=by_status,
            compensations=counts.get("compensations", 0),
            failures_by_reason={k[5:]: v for k, v in sorted(counts.items()) if k.startswith("fail:")},
            completed_duration_ms_sum=sum(spans),
            completed_count=len(spans),
        )

    async def position(self) -> Position | None:
        generation = await self._views.active_generation()
        return None if generation is None else await self._views.position(generation)

    # On a timeout the caller serves the stale view with its position: a value, not an exception.
    async def wait_for(self, position: Position, timeout: float) -> tuple[bool, Position | None]:  # noqa: ASYNC109
        return await wait_for_position(self._views, position, timeout)


def _semver(version: str) -> tuple[object, ...]:
    try:
        return (0, semver_key(version))
    except ValueError:
        return (1, version)
