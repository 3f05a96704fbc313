"""Read endpoints over the real read side (projector on the bundled Redis): detail with min_position,
lists with filters and cursors, DLQ, catalogue, counters; 503 when the read model is absent or down."""

from __future__ import annotations

import asyncio

from orchestrator.api.deps import ApiDeps
from orchestrator.eventstore.types import Position
from tests.api.conftest import (
    DEFINITIONS,
    INSTANCES,
    Api,
    ApiFactory,
    fast_definition,
    fields,
    problem,
)
from tests.seed import SEED_DEFINITION, SEED_START

READS = [
    DEFINITIONS,
    INSTANCES,
    f"{INSTANCES}/00000000-0000-0000-0000-000000000001",
    "/api/v1/sagas/dlq",
    "/api/v1/sagas/metrics",
]


async def view_when(api: Api, saga_id: str, status: str, within: float = 20.0) -> dict[str, object]:
    """Poll the read model (with a deadline) until the saga shows ``status``."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await api.client.get(f"{INSTANCES}/{saga_id}")
        if response.status == 200:
            view: dict[str, object] = await response.json()
            if view["status"] == status:
                return view
        assert asyncio.get_running_loop().time() < deadline, f"saga {saga_id} never showed {status}"
        await asyncio.sleep(0.05)


async def test_detail_waits_for_min_position(api_rm: Api) -> None:
    api = api_rm
    assert (await api.register(SEED_DEFINITION)).status == 201
    started = await api.start(SEED_START)
    response = await api.client.get(f"{INSTANCES}/{started['saga_id']}?min_position={started['position']}")
    assert response.status == 200
    view = await response.json()
    assert view["saga_id"] == started["saga_id"]
    assert view["definition_name"] == "order-processing"
    assert response.headers["ETag"] == f'"{view["revision"]}"'
    assert "X-Read-Model-Position" not in response.headers
    # A position the read model cannot reach in time: the stale view, and how far the read model got.
    beyond = Position(10**12).encode()
    stale = await api.client.get(f"{INSTANCES}/{started['saga_id']}?min_position={beyond}&wait_ms=50")
    assert stale.status == 200
    assert stale.headers["X-Read-Model-Position"].startswith("p1.")
    await view_when(api, started["saga_id"], "completed")
    body = await problem(await api.client.get(f"{INSTANCES}/{started['saga_id']}?min_position=zzz"), 400)
    assert fields(body) == ["query.min_position"]
    await problem(await api.client.get(f"{INSTANCES}/00000000-0000-0000-0000-000000000001"), 404)


async def test_lists_dlq_catalogue_counters_and_gauges(api_rm: Api) -> None:
    api = api_rm
    assert (await api.register(SEED_DEFINITION)).status == 201
    assert (await api.register(fast_definition())).status == 201
    ok = [(await api.start(SEED_START))["saga_id"] for _ in range(3)]
    for saga_id in ok:
        await view_when(api, saga_id, "completed")
    api.participants.script[("payment-service", "charge")] = [422]
    api.participants.script[("inventory-service", "release-reservation")] = [422]
    dead = (await api.start({"saga_name": "fast-order", "context": {}}))["saga_id"]
    await view_when(api, dead, "dead_lettered")

    listed = await (await api.client.get(INSTANCES)).json()
    assert {s["saga_id"] for s in listed["items"]} == {*ok, dead}
    first = await (await api.client.get(f"{INSTANCES}?limit=2")).json()
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    rest = await (await api.client.get(f"{INSTANCES}?limit=2&cursor={first['next_cursor']}")).json()
    assert {s["saga_id"] for s in first["items"] + rest["items"]} == {*ok, dead}
    by_def = await (await api.client.get(f"{INSTANCES}?definition=fast-order")).json()
    assert [s["saga_id"] for s in by_def["items"]] == [dead]
    by_status = await (await api.client.get(f"{INSTANCES}?status=completed")).json()
    assert {s["saga_id"] for s in by_status["items"]} == set(ok)
    assert fields(await problem(await api.client.get(f"{INSTANCES}?status=happy"), 400)) == ["query.status"]
    assert fields(await problem(await api.client.get(f"{INSTANCES}?cursor=nonsense"), 400)) == [
        "query.cursor"
    ]
    assert fields(await problem(await api.client.get(f"{INSTANCES}?limit=0"), 400)) == ["query.limit"]

    dlq = await (await api.client.get("/api/v1/sagas/dlq")).json()
    assert [s["saga_id"] for s in dlq["items"]] == [dead]
    catalogue = await (await api.client.get(DEFINITIONS)).json()
    assert {d["name"] for d in catalogue["items"]} == {"order-processing", "fast-order"}
    counters = await (await api.client.get("/api/v1/sagas/metrics")).json()
    assert counters["total"] == 4
    assert counters["by_status"]["completed"] == 3

    await api.projector.refresh_gauges()
    text = await (await api.client.get("/metrics")).text()
    assert 'saga_instances_total{tenant="default"} 4.0' in text
    assert "saga_instances_active" in text
    assert "saga_failures_total" in text


async def test_reads_answer_503_without_a_read_model(api: Api) -> None:
    for path in READS:
        body = await problem(await api.client.get(path), 503)
        assert body["type"].endswith("read-model-unavailable")


async def test_reads_answer_503_when_redis_is_down(make_api: ApiFactory) -> None:
    from projections.queries import ReadModels
    from projections.redis_store import RedisViewStore

    # A real client to a port nothing listens on: every read fails as Redis being down does.
    views = RedisViewStore.connect("redis://127.0.0.1:1/0", "down")
    try:
        api = await make_api(read_models=ReadModels(views))
        for path in READS:
            await problem(await api.client.get(path), 503)
        # Writes do not depend on the read model.
        assert (await api.register(SEED_DEFINITION)).status == 201
        health = await (await api.client.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["checks"]["read_model"]["status"] == "down"
        assert (await api.client.get("/health/ready")).status == 200
    finally:
        await views.close()


def test_deps_are_frozen(api: Api) -> None:
    assert isinstance(api.deps, ApiDeps)
