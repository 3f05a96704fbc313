"""Redis read models: generations, the compare-and-set batch apply (one Lua call), the runner lease.

Key layout (design.md §6), no ``{…}`` hash tags:

- ``{prefix}:active`` — the generation readers serve.
- ``{prefix}:lease`` — the projector lease (``SET NX PX``): its holder is the active projector process;
  every batch and every rebuild write of its runners is conditional on it (with ``Fence``).
- ``{prefix}:rebuild`` — the target generation of the rebuild in progress (absent: none), so the next
  holder of the lease resumes a rebuild whose owner died.
- ``{prefix}:generations`` — the last generation number handed out (numbers are never reused).
- ``{prefix}:g{G}:position`` — the ``$all`` position generation G has applied (``Position.commit``).
- ``{prefix}:g{G}:lease`` — the runner lease of generation G, for a runner that fences itself.
- ``{prefix}:g{G}:{tenant}:…`` — the views (logical keys from :mod:`projections.updates`).

This module and :mod:`projections.embedded_redis` are the only ones that import ``redis``; its
exceptions are translated into :class:`ReadModelError` here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, assert_never

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from orchestrator.app.ports import ReadModelUnavailable
from orchestrator.eventstore.types import Position
from projections import lua
from projections.updates import (
    Delete,
    ExpireAt,
    HDel,
    HIncrBy,
    HIncrByFloat,
    HSet,
    IndexMove,
    Update,
    ZAdd,
    ZRem,
    ZRemRangeByScore,
)

__all__ = [
    "ApplyResult",
    "EvictionPolicyError",
    "Fence",
    "ReadModelError",
    "RebuildStart",
    "RedisViewStore",
    "SwitchResult",
]

_SAFE_POLICY = "noeviction"


class ReadModelError(ReadModelUnavailable):
    """Root of the read-model errors; Redis failures arrive as this (``raise … from`` the cause)."""


class EvictionPolicyError(ReadModelError):
    """Redis may evict keys: a read model that silently loses keys is wrong, not just stale."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A write is made only while ``owner`` holds the lease at ``key`` (checked inside the script that
    writes, so a paused owner that wakes up after losing the lease is refused by Redis, not by itself)."""

    key: str
    owner: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """Outcome of :meth:`RedisViewStore.apply_batch`; truthy when the batch was applied."""

    applied: bool
    #: on a conflict, the position actually stored (``None`` when none is)
    stored: Position | None = None
    #: the lease (when checked) is held by someone else or expired: nothing was applied
    lease_lost: bool = False
    #: ops that Redis refused (e.g. WRONGTYPE: a projector bug); the rest of the batch was applied
    op_errors: int = 0
    first_error: str = ""

    def __bool__(self) -> bool:
        return self.applied


@dataclass(frozen=True, slots=True)
class SwitchResult:
    switched: bool
    #: the active generation found (when the expected one was not active)
    active: int | None = None
    #: the new generation had not applied the required position
    not_caught_up: bool = False
    #: the fence's lease is not held by its owner: nothing was checked or changed
    lease_lost: bool = False

    def __bool__(self) -> bool:
        return self.switched


@dataclass(frozen=True, slots=True)
class RebuildStart:
    """Outcome of :meth:`RedisViewStore.begin_rebuild`."""

    #: a new rebuild was recorded (False: one was recorded already, ``generation`` is its target)
    started: bool
    generation: int | None
    lease_lost: bool = False


class _Script:
    """EVALSHA with a fallback to EVAL on NOSCRIPT (after a restart or SCRIPT FLUSH). A NOSCRIPT reply
    means nothing ran, so sending the body is safe."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[str]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)  # type: ignore[misc]


_APPLY = _Script(lua.APPLY_BATCH)
_SET_ACTIVE = _Script(lua.SET_ACTIVE)
_RENEW = _Script(lua.RENEW_LEASE)
_RELEASE = _Script(lua.RELEASE_LEASE)
_ALLOCATE = _Script(lua.ALLOCATE_GENERATION)
_BEGIN_REBUILD = _Script(lua.BEGIN_REBUILD)
_FINISH_REBUILD = _Script(lua.FINISH_REBUILD)
_ABANDON_REBUILD = _Script(lua.ABANDON_REBUILD)


def _score(value: float) -> str:
    return repr(float(value))


def _encode(updates: Sequence[Update], key_of: Callable[[str], str], first_key: int) -> tuple[list[str], str]:
    """Turn ``updates`` into (extra KEYS, the ops as one JSON array); ops name keys by KEYS index."""
    keys: list[str] = []
    index: dict[str, int] = {}
    ops: list[list[Any]] = []

    def ref(logical: str) -> int:
        full = key_of(logical)
        if full not in index:
            index[full] = first_key + len(keys)
            keys.append(full)
        return index[full]

    for u in updates:
        match u:
            case HSet(key, fields):
                ops.append(["HSET", ref(key), [x for pair in fields.items() for x in pair]])
            case HDel(key, fields):
                ops.append(["HDEL", ref(key), list(fields)])
            case Delete(key):
                ops.append(["DEL", ref(key)])
            case ZAdd(key, member, score):
                ops.append(["ZADD", ref(key), _score(score), member])
            case ZRem(key, member):
                ops.append(["ZREM", ref(key), member])
            case ZRemRangeByScore(key, low, high):
                ops.append(["ZREMRANGEBYSCORE", ref(key), _score(low), _score(high)])
            case HIncrBy(key, field, amount):
                ops.append(["HINCRBY", ref(key), field, str(int(amount))])
            case HIncrByFloat(key, field, amount):
                ops.append(["HINCRBYFLOAT", ref(key), field, repr(float(amount))])
            case ExpireAt(key, at):
                ops.append(["EXPIREAT", ref(key), str(int(at))])
            case IndexMove(doc, field, member, to, indexes, score):
                candidates = [[value, [ref(k) for k in index_keys]] for value, index_keys in indexes.items()]
                score_arg = "" if score is None else _score(score)
                ops.append(["MOVE", ref(doc), field, member, to, score_arg, candidates])
            case _:
                assert_never(u)
    # ensure_ascii keeps the blob 7-bit: cjson and Redis then see exactly the bytes we mean.
    return keys, json.dumps(ops, separators=(",", ":"))


def _match_escape(text: str) -> str:
    """Escape glob metacharacters so a prefix is matched literally by SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """The one place Redis failures become :class:`ReadModelError` (the API answers 503)."""
    try:
        yield
    except RedisError as e:
        raise ReadModelError(f"redis: {e}") from e


class RedisViewStore:
    """The read-model key space of one ``prefix`` on one Redis server."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        if not prefix or ":" in prefix:
            raise ValueError("the key prefix must be non-empty and contain no ':'")
        self._client = client
        self.prefix = prefix

    @classmethod
    def connect(cls, url: str, prefix: str) -> RedisViewStore:
        """A store on a new client (``decode_responses``: every value here is text)."""
        return cls(aioredis.Redis.from_url(url, decode_responses=True), prefix)

    @property
    def client(self) -> aioredis.Redis:
        """For read-side modules (the query API) that read views with plain commands."""
        return self._client

    async def close(self) -> None:
        await self._client.aclose()

    # --- key names ----------------------------------------------------------------------------------
    def generation_prefix(self, generation: int) -> str:
        if generation < 1:
            raise ValueError("generations start at 1")
        return f"{self.prefix}:g{generation}:"

    def key(self, generation: int, logical: str) -> str:
        """The physical key of a logical view key in ``generation``."""
        return self.generation_prefix(generation) + logical

    def _position_key(self, generation: int) -> str:
        return self.generation_prefix(generation) + "position"

    def lease_key(self, generation: int | None = None) -> str:
        """The runner lease of ``generation``; ``None``: the projector lease (one per prefix)."""
        return f"{self.prefix}:lease" if generation is None else self.generation_prefix(generation) + "lease"

    @property
    def _active_key(self) -> str:
        return f"{self.prefix}:active"

    @property
    def _rebuild_key(self) -> str:
        return f"{self.prefix}:rebuild"

    @property
    def _counter_key(self) -> str:
        return f"{self.prefix}:generations"

    # --- positions and generations ------------------------------------------------------------------
    async def position(self, generation: int) -> Position | None:
        async with translated():
            raw = await self._client.get(self._position_key(generation))
        return None if raw is None else Position(int(raw))

    async def active_generation(self) -> int | None:
        async with translated():
            raw = await self._client.get(self._active_key)
        return None if raw is None else int(raw)

    async def set_active(
        self,
        expected: int | None,
        generation: int,
        *,
        min_position: Position | None = None,
        fence: Fence | None = None,
    ) -> SwitchResult:
        """Compare-and-set ``active`` from ``expected`` (``None``: unset) to ``generation``, and only if
        ``generation`` has applied at least ``min_position`` (and the ``fence``'s owner holds its lease)."""
        keys = [self._active_key, self._position_key(generation), fence.key if fence else self.lease_key()]
        args = [
            "" if expected is None else str(expected),
            str(generation),
            "" if min_position is None else str(min_position.commit),
            fence.owner if fence else "",
        ]
        async with translated():
            status, value = await _SET_ACTIVE(self._client, keys, args)
        if status == 1:
            return SwitchResult(True, generation)
        if status == 0:
            return SwitchResult(False, int(value) if value else None)
        if status == -2:
            return SwitchResult(False, expected, lease_lost=True)
        return SwitchResult(False, expected, not_caught_up=True)

    # --- generation numbers and the rebuild record ----------------------------------------------------
    async def allocate_generation(self, floor: int) -> int:
        """A generation number above ``floor`` (the highest known to exist) never handed out before."""
        async with translated():
            return int(await _ALLOCATE(self._client, [self._counter_key], [str(floor)]))

    async def begin_rebuild(self, floor: int, *, fence: Fence | None = None) -> RebuildStart:
        """Record a rebuild into a new generation (above ``floor``), unless one is recorded already."""
        keys = [self._rebuild_key, self._counter_key, fence.key if fence else self.lease_key()]
        async with translated():
            status, value = await _BEGIN_REBUILD(
                self._client, keys, [fence.owner if fence else "", str(floor)]
            )
        if status == -1:
            return RebuildStart(False, None, lease_lost=True)
        return RebuildStart(status == 1, int(value))

    async def rebuild_target(self) -> int | None:
        """The target generation of the recorded rebuild (``None``: none in progress)."""
        async with translated():
            raw = await self._client.get(self._rebuild_key)
        return None if raw is None else int(raw)

    async def finish_rebuild(self, target: int) -> bool:
        """Clear the record of the rebuild into ``target`` once ``target`` is active."""
        async with translated():
            keys = [self._rebuild_key, self._active_key]
            return bool(await _FINISH_REBUILD(self._client, keys, [str(target)]))

    async def abandon_rebuild(self, target: int, *, fence: Fence | None = None) -> bool:
        """Drop the record and the position of a rebuild into ``target`` that does not serve (under the
        ``fence``); True when done, and then the caller deletes ``target``'s keys."""
        keys = [
            self._rebuild_key,
            self._active_key,
            self._position_key(target),
            fence.key if fence else self.lease_key(),
        ]
        async with translated():
            return bool(
                await _ABANDON_REBUILD(self._client, keys, [str(target), fence.owner if fence else ""])
            )

    async def apply_batch(
        self,
        generation: int,
        start_position: Position | None,
        end_position: Position,
        updates: Sequence[Update],
        *,
        lease_owner: str | None = None,
        fence: Fence | None = None,
    ) -> ApplyResult:
        """Apply ``updates`` and move the position from ``start_position`` to ``end_position`` in one Lua
        call — only if the stored position is still ``start_position`` (and, with ``lease_owner``, only if
        that owner holds the generation's lease; with ``fence``, its lease). Anything else applies
        nothing."""
        if start_position is not None and end_position < start_position:
            raise ValueError("a batch cannot move the position backwards")
        if fence is None and lease_owner:
            fence = Fence(self.lease_key(generation), lease_owner)
        fixed = [self._position_key(generation), fence.key if fence else self.lease_key(generation)]
        gen_prefix = self.generation_prefix(generation)

        def physical(logical: str) -> str:
            # Views live under a tenant segment; a bare name could collide with `position` or `lease`.
            if ":" not in logical or logical.startswith(":"):
                raise ValueError(f"view key {logical!r} is not a logical `tenant:…` key (see view_key)")
            return gen_prefix + logical

        extra, ops = _encode(updates, physical, first_key=len(fixed) + 1)
        args = [
            "" if start_position is None else str(start_position.commit),
            str(end_position.commit),
            fence.owner if fence else "",
            ops,
        ]
        async with translated():
            reply = await _APPLY(self._client, [*fixed, *extra], args)
        status = int(reply[0])
        if status == 1:
            return ApplyResult(True, end_position, op_errors=int(reply[1]), first_error=str(reply[2]))
        if status == -1:
            return ApplyResult(False, None, lease_lost=True)
        stored = str(reply[1])
        return ApplyResult(False, Position(int(stored)) if stored else None)

    async def generations(self) -> list[int]:
        """Generations that hold a position (have applied at least one batch), ascending."""
        pattern = _match_escape(f"{self.prefix}:g") + "*:position"
        found: set[int] = set()
        async with translated():
            async for key in self._client.scan_iter(match=pattern, count=1000):
                middle = key[len(self.prefix) + 2 : -len(":position")]
                if middle.isdigit():
                    found.add(int(middle))
        return sorted(found)

    async def has_views(self, generation: int) -> bool:
        """Whether ``generation`` holds any view key (its position and lease do not count)."""
        gen_prefix = self.generation_prefix(generation)
        bookkeeping = {self._position_key(generation), self.lease_key(generation)}
        async with translated():
            async for key in self._client.scan_iter(match=_match_escape(gen_prefix) + "*", count=1000):
                if key not in bookkeeping:
                    return True
        return False

    async def delete_generation(self, generation: int, *, batch: int = 500) -> int:
        """Delete every key of ``generation`` in bounded SCAN pages, UNLINKed (freed by Redis in the
        background); run it as a task to keep it off the caller's path. Returns the keys deleted.

        The position goes first, so a deletion cut short leaves a generation that reads as incomplete
        (:func:`projections.rebuild.needs_rebuild`) rather than one that looks caught up but lacks keys.
        """
        deleted = 0
        async with translated():
            deleted += int(await self._client.unlink(self._position_key(generation)))
            pattern = _match_escape(self.generation_prefix(generation)) + "*"
            cursor: int = 0
            while True:
                cursor, keys = await self._client.scan(cursor=cursor, match=pattern, count=batch)
                if keys:
                    deleted += int(await self._client.unlink(*keys))
                if cursor == 0:
                    return deleted

    # --- server checks --------------------------------------------------------------------------------
    async def check_eviction_policy(self) -> None:
        """Refuse a server that may evict keys. INFO rather than CONFIG GET: managed Redis services
        often disable CONFIG."""
        async with translated():
            info = await self._client.info("memory")
        policy = str(info.get("maxmemory_policy", ""))
        if policy != _SAFE_POLICY:
            raise EvictionPolicyError(
                f"Redis maxmemory-policy is {policy or 'unknown'!r}; read models need 'noeviction' "
                "(an evicted view key is silently wrong, not stale). Set `maxmemory-policy noeviction`."
            )

    async def ping(self) -> None:
        async with translated():
            await self._client.ping()

    # --- leases (``generation`` None: the projector lease) --------------------------------------------
    async def acquire_lease(self, generation: int | None, owner: str, ttl_ms: int) -> bool:
        async with translated():
            return bool(await self._client.set(self.lease_key(generation), owner, nx=True, px=ttl_ms))

    async def renew_lease(self, generation: int | None, owner: str, ttl_ms: int) -> bool:
        async with translated():
            return bool(await _RENEW(self._client, [self.lease_key(generation)], [owner, str(ttl_ms)]))

    async def release_lease(self, generation: int | None, owner: str) -> bool:
        async with translated():
            return bool(await _RELEASE(self._client, [self.lease_key(generation)], [owner]))

    async def lease_holder(self, generation: int | None = None) -> tuple[str | None, float | None]:
        """Who holds the lease and for how many more seconds (``(None, None)``: nobody)."""
        key = self.lease_key(generation)
        async with translated(), self._client.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            owner, pttl = await pipe.execute()
        if owner is None:
            return None, None
        return str(owner), (pttl / 1000 if pttl >= 0 else None)
