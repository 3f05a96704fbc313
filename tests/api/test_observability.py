"""/metrics (parsed, promtool when present), structured request logs, health, cluster and admin routes."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from asyncio.subprocess import PIPE

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.api.conftest import INSTANCES, Api, problem
from tests.seed import SEED_DEFINITION, SEED_START


async def test_metrics_exposition(api: Api) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    saga_id = (await api.start(SEED_START))["saga_id"]
    await api.wait_for(saga_id, {"SagaCompleted"})
    await api.client.get(f"{INSTANCES}/{saga_id}/events")
    response = await api.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "saga_step_duration_seconds" in families
    assert "saga_timer_fire_lag_seconds" in families
    # The engine exports its group's in-flight and parked counts (first refresh at start-up).
    assert families["saga_subscription_in_flight"].samples[0].labels == {"group": "orchestrator"}
    assert "saga_subscription_parked" in families
    http = families["saga_http_request_duration_seconds"]
    labels = {(s.labels["method"], s.labels["route"], s.labels["status"]) for s in http.samples}
    assert ("POST", "/api/v1/sagas/instances", "201") in labels
    assert ("GET", "/api/v1/sagas/instances/{id}/events", "200") in labels
    promtool = shutil.which("promtool")
    if promtool is None:
        missing = "promtool is not on PATH (.ci/run installs it from Debian's prometheus package)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # CI promises every system package it needs
        pytest.skip(missing)
    process = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(text.encode()), 30)
    assert process.returncode == 0, (out + err).decode()


async def test_one_log_line_per_request_with_context(api: Api) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with capture_logs() as logs:
        response = await api.client.get(
            f"{INSTANCES}/{uuid.uuid4()}/events", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        )
    assert response.status == 404
    assert response.headers["X-Trace-Id"] == trace
    lines = [entry for entry in logs if entry["event"] == "http_request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["trace_id"] == trace
    assert line["tenant"] == "default"
    assert line["status"] == 404
    assert line["route"] == "/api/v1/sagas/instances/{id}/events"
    assert line["saga_id"]


async def test_health_endpoints(api: Api) -> None:
    assert (await (await api.client.get("/health/live")).json()) == {"status": "ok"}
    ready = await api.client.get("/health/ready")
    assert ready.status == 200
    assert (await ready.json())["checks"]["store"]["status"] == "ok"
    health = await (await api.client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["checks"]["read_model"]["status"] == "absent"
    cluster = await (await api.client.get("/health/cluster")).json()
    node = cluster["node"]
    assert node["node_id"] == "node-test"
    assert node["roles"] == ["api", "engine"]
    assert node["store"]["status"] == "ok"
    assert node["subscription"]["group"] == "orchestrator"
    assert node["subscription"]["strategy"] == "Pinned"
    assert node["timers"]["running"] is True
    assert cluster["nodes"] == [node]


async def test_store_down_fails_readiness_but_not_liveness(api: Api) -> None:
    await api.engine.stop(grace=0)
    await api.store.close()
    assert (await api.client.get("/health/live")).status == 200
    ready = await api.client.get("/health/ready")
    assert ready.status == 503
    assert (await ready.json())["status"] == "down"
    assert (await api.client.get("/health")).status == 503
    await problem(await api.register(SEED_DEFINITION), 503)


async def test_admin_routes(api: Api) -> None:
    groups = await (await api.client.get("/api/v1/admin/subscriptions")).json()
    assert [g["group"] for g in groups["items"]] == ["orchestrator"]
    replay = await api.client.post("/api/v1/admin/subscriptions/orchestrator/replay-parked")
    assert replay.status == 202
    await problem(await api.client.post("/api/v1/admin/subscriptions/nobody/replay-parked"), 404)
    # No projector in this process: the rebuild is not available here.
    await problem(await api.client.post("/api/v1/admin/projections/rebuild"), 503)


async def test_admin_rebuild(api_rm: Api) -> None:
    api = api_rm
    assert (await api.register(SEED_DEFINITION)).status == 201
    started = await api.client.post("/api/v1/admin/projections/rebuild")
    assert started.status == 202, await started.text()
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        status = await (await api.client.get("/api/v1/admin/projections/rebuild")).json()
        if not status["running"]:
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert status["error"] is None
    assert status["progress"]["phase"] == "done"
