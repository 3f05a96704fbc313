"""The saga read models end to end: real sagas through the engine (HTTP participants), projected into a
real Redis by the projector service, read through ``ReadModels``; and a rebuild reproduces every key."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.app import AppError, Principal
from orchestrator.app.sagas import Sagas
from orchestrator.domain.vocabulary import ManualCommand
from projections.projectors.keys import saga_key
from projections.queries import ReadModels
from projections.runner import RunnerSettings
from projections.service import ProjectorService, RebuildInProgress, start_projector
from projections.views import SagaView
from tests.integration._projection_support import dump_generation
from tests.integration._saga_scenario import ACME, GLOBEX, Scenario, eventually, scenario

FAST = RunnerSettings(batch_events=64, linger=0.005, lease_ttl=2.0)
RETENTION = timedelta(days=30)


@pytest.fixture
async def sagas(tmp_path: Path) -> AsyncIterator[Scenario]:
    async with scenario(tmp_path) as s:
        yield s


@pytest.fixture
async def service(sagas: Scenario, redis_url: str, redis_prefix: str) -> AsyncIterator[ProjectorService]:
    registry = CollectorRegistry()
    svc = await start_projector(sagas.store, redis_url, redis_prefix, registry=registry, settings=FAST)
    try:
        yield svc
    finally:
        await svc.stop()


async def _status(models: ReadModels, tenant: str, saga_id: str, status: str) -> SagaView:
    view = await eventually(
        lambda: models.saga(tenant, saga_id), lambda v: v is not None and v.status == status
    )
    assert view is not None
    return view


async def _settled(s: Scenario, models: ReadModels) -> dict[str, SagaView]:
    want = {f"ok-{n}": "completed" for n in range(5)} | {
        "rejected": "compensated",
        "suspended": "suspended",
        "dead": "dead_lettered",
    }
    views = {c: await _status(models, ACME, s.ids[c], status) for c, status in want.items()}
    views["ok-g"] = await _status(models, GLOBEX, s.ids["ok-g"], "completed")
    return views


async def test_saga_views_follow_real_sagas(sagas: Scenario, service: ProjectorService) -> None:
    models = service.read_models
    views = await _settled(sagas, models)

    ok = views["ok-0"]
    assert (ok.tenant, ok.client_id, ok.definition_name, ok.definition_version) == (
        ACME,
        "ok-0",
        "order-ok",
        "1.0.0",
    )
    assert ok.context == {"order": "ok-0"}
    assert [s.name for s in ok.steps] == ["validate-order", "reserve-inventory", "process-payment"]
    for step in ok.steps:
        call = step.action_call
        assert (call.status, call.attempts, call.last_error) == ("succeeded", 1, None)
        assert call.last_duration_ms is not None
        assert call.last_duration_ms >= 0
        assert call.started_at is not None
        assert call.finished_at is not None
        assert call.idempotency_key
        assert step.output == {"done": step.action, "key": call.idempotency_key}
        assert step.compensation_call.status == "idle"
    assert ok.finished_at is not None
    assert ok.duration_ms is not None
    assert ok.duration_ms > 0
    history = await sagas.harness.history(ok.saga_id)
    assert ok.revision == history[-1].revision
    assert ok.position == history[-1].position.encode()
    assert ok.updated_at == ok.finished_at == history[-1].recorded_at.isoformat()

    rejected = views["rejected"]
    payment = rejected.steps[2].action_call
    assert payment.status == "failed"
    assert payment.last_error is not None
    assert "rejected" in payment.last_error
    assert rejected.compensated_steps == ["reserve-inventory", "validate-order"]
    assert rejected.compensation_pending == []
    assert rejected.steps[2].compensation_call.status == "idle"  # a rejection had no effect: no refund
    assert rejected.reason is not None
    assert "process-payment" in rejected.reason

    dead = views["dead"]
    release = dead.steps[1].compensation_call
    assert release.status == "failed"
    assert release.attempts == 1
    assert "reserve-inventory" in dead.compensation_pending

    suspended = views["suspended"]
    assert suspended.steps[2].action_call.status == "blocked"
    assert suspended.finished_at is None

    # Expiry: terminal sagas at finish (event time) + retention; paused ones never.
    generation = await service.views.active_generation()
    assert generation is not None
    client = service.views.client
    for c in ("ok-0", "rejected"):
        finished = datetime.fromisoformat(views[c].finished_at or "")
        want = math.ceil((finished + RETENTION).timestamp())
        key = service.views.key(generation, saga_key(ACME, views[c].saga_id))
        # PTTL against the wall clock at the read (EXPIRETIME is 7.0+; the bundled server is 6.2)
        expires_in = await client.pttl(key) / 1000
        assert abs(expires_in - (want - datetime.now(finished.tzinfo).timestamp())) <= 2
    for c in ("suspended", "dead"):
        assert await client.ttl(service.views.key(generation, saga_key(ACME, views[c].saga_id))) == -1


async def test_lists_dlq_catalogue_counters_and_tenants(sagas: Scenario, service: ProjectorService) -> None:
    models = service.read_models
    views = await _settled(sagas, models)
    ids = sagas.ids

    # Completed, newest (finished) first, two per page across three pages.
    seen, cursor, pages = [], None, 0
    while True:
        page = await models.list_sagas(ACME, status="completed", limit=2, cursor=cursor)
        pages += 1
        seen += [r.saga_id for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    # Ties (one group commit records several sagas' events at the same time) go by id, descending.
    by_finish = sorted(
        (views[f"ok-{n}"] for n in range(5)),
        key=lambda v: (datetime.fromisoformat(v.finished_at or ""), v.saga_id),
        reverse=True,
    )
    assert seen == [v.saga_id for v in by_finish]

    everything = await models.list_sagas(ACME, limit=100)
    assert len(everything.items) == 8
    assert everything.next_cursor is None
    starts = [(datetime.fromisoformat(r.started_at), r.saga_id) for r in everything.items]
    assert starts == sorted(starts, reverse=True)
    by_def = await models.list_sagas(ACME, definition="order-ok", limit=3)
    assert len(by_def.items) == 3
    assert by_def.next_cursor is not None
    rest = await models.list_sagas(ACME, definition="order-ok", limit=3, cursor=by_def.next_cursor)
    assert {r.saga_id for r in by_def.items + rest.items} == {ids[f"ok-{n}"] for n in range(5)}
    assert [r.saga_id for r in (await models.list_sagas(ACME, status="compensated")).items] == [
        ids["rejected"]
    ]
    assert (await models.list_sagas(ACME, status="running")).items == []
    with pytest.raises(ValueError, match="cursor"):
        await models.list_sagas(ACME, cursor="not-a-cursor!")

    dlq = await models.dlq(ACME)
    assert {(r.saga_id, r.status) for r in dlq.items} == {
        (ids["suspended"], "suspended"),
        (ids["dead"], "dead_lettered"),
    }
    counters = await models.counters(ACME)
    assert counters.total == 8
    assert counters.compensations == 2
    assert counters.by_status == {
        "running": 0,
        "compensating": 0,
        "completed": 5,
        "compensated": 1,
        "dead_lettered": 1,
        "suspended": 1,
    }
    assert counters.failures_by_reason == {"business_rejection": 2, "dead_lettered": 1}
    assert counters.completed_count == 5
    assert counters.completed_duration_ms_sum == pytest.approx(
        sum(views[f"ok-{n}"].duration_ms or 0 for n in range(5))
    )

    catalogue = await models.definitions(ACME)
    assert [d.name for d in catalogue] == ["order-dead", "order-ok", "order-rejected", "order-suspended"]
    assert (catalogue[1].versions, catalogue[1].latest) == (["1.0.0", "1.1.0"], "1.1.0")

    # Tenants never see each other's sagas.
    assert await models.saga(GLOBEX, ids["ok-0"]) is None
    assert await models.saga(ACME, ids["ok-g"]) is None
    assert [r.saga_id for r in (await models.list_sagas(GLOBEX)).items] == [ids["ok-g"]]
    assert (await models.dlq(GLOBEX)).items == []
    assert (await models.counters(GLOBEX)).total == 1
    assert [d.latest for d in await models.definitions(GLOBEX)] == ["1.0.0"] * 4

    # A person resumes the suspended saga: it leaves the DLQ and completes.
    result = await sagas.commands.intervene(
        ACME, "ops", ids["suspended"], ManualCommand.RESUME, reason="fixed the key", idempotency_key="r-1"
    )
    assert result.position is not None
    reached, _ = await models.wait_for(result.position, 10)
    assert reached
    assert [r.saga_id for r in (await models.dlq(ACME)).items] == [ids["dead"]]
    resumed = await _status(models, ACME, ids["suspended"], "completed")
    assert resumed.steps[2].action_call.attempts == 2
    assert resumed.reason == "fixed the key"

    # The global gauges, from the read model.
    await service.refresh_gauges()
    registry = service.metrics.registry
    assert registry.get_sample_value("saga_instances_total", {"tenant": ACME}) == 8
    assert registry.get_sample_value("saga_instances_active", {"tenant": ACME}) == 0
    assert registry.get_sample_value("saga_compensation_total", {"tenant": ACME}) == 2
    assert registry.get_sample_value("saga_failures_total", {"tenant": ACME, "reason": "dead_lettered"}) == 1
    assert registry.get_sample_value("projection_events_applied_total", {"generation": "1"}) is not None


async def test_a_rebuild_reproduces_every_key(sagas: Scenario, service: ProjectorService) -> None:
    await _settled(sagas, service.read_models)
    head = await sagas.store.head_position()
    assert head is not None
    await eventually(service.read_models.position, lambda p: p is not None and p >= head)
    views = service.views
    assert await views.active_generation() == 1
    values, expiries = await dump_generation(views, 1)
    assert len(values) > 20
    assert len(expiries) == 7

    progress = await service.rebuild()
    assert progress.phase == "done"
    assert progress.generation == 2
    assert await views.generations() == [2]
    rebuilt, rebuilt_expiries = await dump_generation(views, 2)
    assert rebuilt == values
    assert rebuilt_expiries.keys() == expiries.keys()
    assert all(abs(rebuilt_expiries[k] - expiries[k]) <= 2_000 for k in expiries)
    assert await service.read_models.saga(ACME, sagas.ids["ok-0"]) is not None

    # One rebuild at a time.
    task = asyncio.ensure_future(service.rebuild())
    await asyncio.sleep(0)  # the task runs until its first Redis round trip: the rebuild is registered
    assert service.rebuilding
    with pytest.raises(RebuildInProgress):
        await service.rebuild()
    assert (await task).generation == 3
    assert service.progress is not None
    assert service.progress.phase == "done"


async def test_views_are_rebuilt_identically_after_the_prefix_is_flushed(
    sagas: Scenario, service: ProjectorService, redis_url: str, redis_prefix: str
) -> None:
    await _settled(sagas, service.read_models)
    head = await sagas.store.head_position()
    assert head is not None
    await eventually(service.read_models.position, lambda p: p is not None and p >= head)
    values, expiries = await dump_generation(service.views, 1)
    await service.stop()

    # Not FLUSHALL: the server may be shared, so only this test's prefix goes.
    client = service.views.client.__class__.from_url(redis_url, decode_responses=True)
    try:
        async for key in client.scan_iter(match=f"{redis_prefix}:*"):
            await client.unlink(key)
    finally:
        await client.aclose()
    again = await start_projector(
        sagas.store, redis_url, redis_prefix, registry=CollectorRegistry(), settings=FAST
    )
    try:
        await eventually(again.read_models.position, lambda p: p is not None and p >= head)
        generation = await again.views.active_generation()
        assert generation is not None
        rebuilt, rebuilt_expiries = await dump_generation(again.views, generation)
        assert rebuilt == values
        assert rebuilt_expiries.keys() == expiries.keys()
        assert all(abs(rebuilt_expiries[k] - expiries[k]) <= 2_000 for k in expiries)
    finally:
        await again.stop()


async def test_a_read_that_meets_a_generation_switch_reads_the_new_generation(
    sagas: Scenario, service: ProjectorService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a reader that resolved the old generation just before a rebuild switched and deleted it
    saw an empty generation, so a saga answered 404 and lists came back empty."""
    models = service.read_models
    views = await _settled(sagas, models)
    serving = await models._views.active_generation()
    assert serving is not None
    deleted = serving + 41  # resolved just before the switch; its keys are already gone
    stale: list[int] = []

    async def switching() -> int:
        return stale.pop() if stale else serving

    monkeypatch.setattr(models._views, "active_generation", switching)
    stale.append(deleted)
    assert await models.saga(ACME, sagas.ids["ok-0"]) == views["ok-0"]
    stale.append(deleted)
    assert len((await models.list_sagas(ACME, limit=50)).items) == len(views) - 1
    stale.append(deleted)
    assert [d.name for d in await models.definitions(ACME)]
    stale.append(deleted)
    assert (await models.counters(ACME)).total > 0


async def test_a_command_for_every_saga_a_filter_selects_is_decided_per_saga(
    sagas: Scenario, service: ProjectorService
) -> None:
    """Bulk intervention: the read model selects, each saga's own stream decides, a repeat changes nothing,
    and another tenant's sagas are never touched."""
    await _settled(sagas, service.read_models)
    use = Sagas(sagas.store, sagas.commands, read_models=service.read_models)
    ops = Principal(ACME, "ops@example", frozenset({"operator"}))
    first = await use.intervene_matching(
        ops, ManualCommand.RESOLVE, reason="closed by hand", idempotency_key="bulk-1", status="suspended"
    )
    assert [saga_id for saga_id, _ in first] == [sagas.ids["suspended"]]
    [(_, result)] = first
    assert not isinstance(result, Exception)
    assert result.applied
    await _status(service.read_models, ACME, sagas.ids["suspended"], "completed")
    again = await use.intervene_matching(
        ops, ManualCommand.RESOLVE, reason="closed by hand", idempotency_key="bulk-1", status="completed"
    )
    # The saga resolved above sees its own key again: nothing changes. The other completed sagas refuse
    # resolve: each refusal comes back with its saga, and none stops the others.
    outcomes = dict(again)
    assert len(outcomes) == 6
    repeat = outcomes.pop(sagas.ids["suspended"])
    assert not isinstance(repeat, AppError)
    assert not repeat.applied
    assert all(isinstance(r, AppError) and r.code == "intervention-refused" for r in outcomes.values())
