"""The Redis view store: the compare-and-set batch apply and every update op, generations, the lease,
the eviction-policy check and read-your-writes waits — against real servers only."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.eventstore import Position
from projections.redis_store import EvictionPolicyError, RedisViewStore
from projections.runner import wait_for_position
from projections.updates import (
    Delete,
    ExpireAt,
    HDel,
    HIncrBy,
    HIncrByFloat,
    HSet,
    IndexMove,
    ZAdd,
    ZRem,
    ZRemRangeByScore,
)
from tests.redis_fixtures import RedisServer

P = Position
STATUS = {
    "running": ("t:status:running",),
    "dead_lettered": ("t:status:dead_lettered", "t:dlq"),
    "suspended": ("t:status:suspended", "t:dlq"),
    "completed": (),
}


async def _snapshot(views: RedisViewStore, generation: int = 1) -> dict[str, object]:
    out: dict[str, object] = {}
    async for key in views.client.scan_iter(match=f"{views.prefix}:*", count=1000):
        kind = await views.client.type(key)
        if kind == "hash":
            out[key] = await views.client.hgetall(key)
        elif kind == "zset":
            out[key] = await views.client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await views.client.get(key)
    return out


async def test_a_batch_applies_every_op_and_its_position(views: RedisViewStore) -> None:
    c = views.client
    first = [
        HSet("t:doc:1", {"a": "1", "b": "2", "c": "3"}),
        HIncrBy("t:counts", "n", 5),
        HIncrByFloat("t:durations", "sum", 1.25),
        ZAdd("t:by_time", "s1", 100.0),
        ZAdd("t:by_time", "s2", 200.0),
        ZAdd("t:by_time", "s3", 300.0),
        HSet("t:gone", {"x": "y"}),
    ]
    assert await views.apply_batch(1, None, P(10), first)
    second = [
        HDel("t:doc:1", ("b",)),
        HIncrBy("t:counts", "n", -2),
        HIncrByFloat("t:durations", "sum", 0.5),
        ZRem("t:by_time", "s2"),
        ZRemRangeByScore("t:by_time", float("-inf"), 150.0),
        Delete("t:gone"),
        ExpireAt("t:doc:1", 4_102_444_800),  # 2100-01-01
    ]
    assert await views.apply_batch(1, P(10), P(20), second)

    assert await c.hgetall(views.key(1, "t:doc:1")) == {"a": "1", "c": "3"}
    assert await c.hget(views.key(1, "t:counts"), "n") == "3"
    assert float(await c.hget(views.key(1, "t:durations"), "sum")) == 1.75
    assert await c.zrange(views.key(1, "t:by_time"), 0, -1, withscores=True) == [("s3", 300.0)]
    assert not await c.exists(views.key(1, "t:gone"))
    assert 0 < await c.ttl(views.key(1, "t:doc:1")) <= 4_102_444_800 - time.time() + 1
    assert await views.position(1) == P(20)


async def test_a_conflict_applies_nothing_and_reports_the_stored_position(views: RedisViewStore) -> None:
    assert await views.apply_batch(1, None, P(5), [HIncrBy("t:c", "n", 1)])
    before = await _snapshot(views)

    for start in (None, P(3), P(6)):
        result = await views.apply_batch(
            1, start, P(9), [HIncrBy("t:c", "n", 1), HSet("t:d", {"x": "1"}), ZAdd("t:z", "m", 1.0)]
        )
        assert not result
        assert result.stored == P(5)
        assert not result.lease_lost

    assert await _snapshot(views) == before
    assert await views.position(1) == P(5)


async def test_the_lease_is_checked_inside_the_script(views: RedisViewStore) -> None:
    assert await views.acquire_lease(1, "a", 10_000)
    refused = await views.apply_batch(1, None, P(1), [HIncrBy("t:c", "n", 1)], lease_owner="b")
    assert not refused
    assert refused.lease_lost
    assert await views.position(1) is None
    assert not await views.client.exists(views.key(1, "t:c"))
    assert await views.apply_batch(1, None, P(1), [HIncrBy("t:c", "n", 1)], lease_owner="a")


async def test_index_move_reads_the_current_value_inside_the_script(views: RedisViewStore) -> None:
    c = views.client
    doc = "t:saga:1"

    async def move(start: int, to: str, score: float | None = None) -> None:
        assert await views.apply_batch(
            1, P(start) if start else None, P(start + 1), [IndexMove(doc, "status", "s1", to, STATUS, score)]
        )

    async def members() -> dict[str, list[tuple[str, float]]]:
        keys = {k for ks in STATUS.values() for k in ks}
        return {k: await c.zrange(views.key(1, k), 0, -1, withscores=True) for k in sorted(keys)}

    await move(0, "running", score=42.0)
    assert (await members())["t:status:running"] == [("s1", 42.0)]
    await move(1, "dead_lettered")  # no score: the old one is kept
    got = await members()
    assert got["t:status:running"] == []
    assert got["t:status:dead_lettered"] == got["t:dlq"] == [("s1", 42.0)]
    await move(2, "suspended")  # stays in the DLQ, changes status index
    got = await members()
    assert got["t:status:dead_lettered"] == []
    assert got["t:status:suspended"] == got["t:dlq"] == [("s1", 42.0)]
    await move(3, "completed")  # a value that belongs to no index
    assert all(v == [] for v in (await members()).values())
    assert await c.hget(views.key(1, doc), "status") == "completed"


async def test_moves_within_one_batch_see_each_other(views: RedisViewStore) -> None:
    doc = "t:saga:2"
    batch = [IndexMove(doc, "status", "s2", to, STATUS, 7.0) for to in ("running", "suspended", "running")]
    assert await views.apply_batch(1, None, P(3), batch)
    c = views.client
    assert await c.zrange(views.key(1, "t:status:running"), 0, -1) == ["s2"]
    assert await c.zcard(views.key(1, "t:status:suspended")) == 0
    assert await c.zcard(views.key(1, "t:dlq")) == 0


def test_index_move_refuses_a_target_missing_from_its_indexes() -> None:
    with pytest.raises(ValueError, match="no entry in indexes"):
        IndexMove("t:d", "status", "m", "paused", STATUS)


async def test_a_refused_op_does_not_leave_half_a_batch(views: RedisViewStore) -> None:
    # Redis does not roll back a failing script, so an op error must neither abort the batch half way
    # (a retry would then apply the first half twice) nor lose the position.
    assert await views.apply_batch(1, None, P(1), [ZAdd("t:z", "m", 1.0)])
    result = await views.apply_batch(
        1, P(1), P(2), [HIncrBy("t:c", "n", 1), HSet("t:z", {"f": "v"}), HIncrBy("t:c", "n", 1)]
    )
    assert result
    assert result.op_errors == 1
    assert "WRONGTYPE" in result.first_error
    assert await views.client.hget(views.key(1, "t:c"), "n") == "2"
    assert await views.position(1) == P(2)


async def test_text_travels_unchanged_through_the_script(views: RedisViewStore) -> None:
    text = 'snowman \u2603, emoji \U0001f600, quote " backslash \\ nul-free \t tab'
    member = "saga:\u00e9:1"
    assert await views.apply_batch(
        1, None, P(1), [HSet("t:doc", {"ctx \u2603": text}), ZAdd("t:z", member, 1.5)]
    )
    assert await views.client.hgetall(views.key(1, "t:doc")) == {"ctx \u2603": text}
    assert await views.client.zrange(views.key(1, "t:z"), 0, -1) == [member]


async def test_evalsha_falls_back_to_eval_after_a_script_flush(views: RedisViewStore) -> None:
    await views.client.script_flush()
    assert await views.apply_batch(1, None, P(1), [HIncrBy("t:c", "n", 1)])
    assert await views.apply_batch(1, P(1), P(2), [HIncrBy("t:c", "n", 1)])
    assert await views.client.hget(views.key(1, "t:c"), "n") == "2"


async def test_positions_beyond_double_precision_compare_exactly(views: RedisViewStore) -> None:
    big = 2**62 + 1  # KurrentDB commit positions are 64-bit; a Lua double would round this
    assert await views.apply_batch(1, None, P(big), [])
    assert not await views.apply_batch(1, P(big - 1), P(big + 2), [])
    assert await views.apply_batch(1, P(big), P(big + 2), [])
    assert await views.position(1) == P(big + 2)
    assert not await views.set_active(None, 1, min_position=P(big + 3))
    assert await views.set_active(None, 1, min_position=P(big + 2))


async def test_views_need_logical_tenant_keys(views: RedisViewStore) -> None:
    with pytest.raises(ValueError, match="logical"):
        await views.apply_batch(1, None, P(1), [HSet("position", {"x": "1"})])
    assert await views.position(1) is None


async def test_set_active_is_a_compare_and_set_that_requires_the_position(views: RedisViewStore) -> None:
    assert await views.active_generation() is None
    assert await views.set_active(None, 1)
    changed = await views.set_active(None, 2)
    assert not changed
    assert changed.active == 1
    assert await views.apply_batch(2, None, P(5), [])
    behind = await views.set_active(1, 2, min_position=P(6))
    assert not behind
    assert behind.not_caught_up
    assert await views.active_generation() == 1
    assert await views.set_active(1, 2, min_position=P(5))
    assert await views.active_generation() == 2


async def test_lease_acquire_renew_release(views: RedisViewStore) -> None:
    assert await views.acquire_lease(3, "a", 5_000)
    assert not await views.acquire_lease(3, "b", 5_000)
    assert await views.renew_lease(3, "a", 5_000)
    assert not await views.renew_lease(3, "b", 5_000)
    assert not await views.release_lease(3, "b")
    assert await views.release_lease(3, "a")
    assert await views.acquire_lease(3, "b", 5_000)


async def test_a_lease_expires_without_its_owner(views: RedisViewStore) -> None:
    assert await views.acquire_lease(1, "a", 50)
    deadline = time.monotonic() + 5
    while not await views.acquire_lease(1, "b", 5_000):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert not await views.renew_lease(1, "a", 5_000)


async def test_delete_generation_removes_only_that_generation(views: RedisViewStore, redis_url: str) -> None:
    for generation in (1, 2):
        batch = [HSet(f"t:doc:{i}", {"v": str(i)}) for i in range(1200)]
        assert await views.apply_batch(generation, None, P(1), batch)
    await views.set_active(None, 2)
    # A neighbouring prefix with glob characters must not be matched by the SCAN pattern.
    odd = RedisViewStore.connect(redis_url, f"{views.prefix}[1]")
    try:
        assert await odd.apply_batch(1, None, P(1), [HSet("t:doc", {"v": "x"})])
        assert await views.generations() == [1, 2]

        assert await views.delete_generation(1, batch=100) == 1201
        assert await views.generations() == [2]
        assert not await views.has_views(1)
        assert await views.has_views(2)
        assert await views.active_generation() == 2
        assert await odd.position(1) == P(1)
    finally:
        await odd.delete_generation(1)
        await odd.close()


async def test_check_eviction_policy_refuses_an_evicting_server(
    views: RedisViewStore, redis_server: RedisServer
) -> None:
    await views.check_eviction_policy()
    if not redis_server.bundled:
        return  # never change the policy of a shared server
    await views.client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(EvictionPolicyError, match="allkeys-lru"):
            await views.check_eviction_policy()
    finally:
        await views.client.config_set("maxmemory-policy", "noeviction")


async def test_expire_at_uses_the_event_time_not_the_clock(views: RedisViewStore) -> None:
    event_time = datetime.now(UTC) - timedelta(days=2)
    op = ExpireAt.after("t:doc", event_time, timedelta(days=3))
    assert op.at == int((event_time + timedelta(days=3)).timestamp()) + (event_time.microsecond > 0)
    assert await views.apply_batch(1, None, P(1), [HSet("t:doc", {"a": "1"}), op])
    ttl = await views.client.ttl(views.key(1, "t:doc"))
    assert abs((time.time() + ttl) - op.at) <= 2  # one day left, not three
    # An event time past its retention expires at once: the rebuilt view is the same (absent).
    old = ExpireAt.after("t:old", event_time, timedelta(days=1))
    assert await views.apply_batch(1, P(1), P(2), [HSet("t:old", {"a": "1"}), old])
    assert not await views.client.exists(views.key(1, "t:old"))
    with pytest.raises(ValueError, match="timezone"):
        ExpireAt.after("t:x", datetime(2024, 1, 1), timedelta(days=1))


async def test_wait_for_position_is_bounded_and_reports_the_stale_position(views: RedisViewStore) -> None:
    assert await wait_for_position(views, P(1), 0.05) == (False, None)  # nothing active
    await views.set_active(None, 1)
    assert await views.apply_batch(1, None, P(5), [])
    assert await wait_for_position(views, P(5), 0.0) == (True, P(5))

    started = time.monotonic()
    assert await wait_for_position(views, P(9), 0.1) == (False, P(5))
    assert time.monotonic() - started < 1.0

    async def later() -> None:
        await asyncio.sleep(0.05)
        assert await views.apply_batch(1, P(5), P(10), [])

    task = asyncio.create_task(later())
    assert await wait_for_position(views, P(9), 5.0) == (True, P(10))
    await task
