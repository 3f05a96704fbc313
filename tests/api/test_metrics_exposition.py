"""``/metrics``: content negotiation between the plain text format and OpenMetrics, step-duration
exemplars that name the attempt's trace, and the dependency probes taken at each scrape."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from orchestrator.api.app import create_app
from orchestrator.app.ports import ReadModelUnavailable
from orchestrator.eventstore.types import Position
from orchestrator.settings import ObservabilitySettings
from tests.api.conftest import Api, ApiFactory, problem
from tests.seed import SEED_DEFINITION, SEED_START

#: what Prometheus 2.x sends when it scrapes
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _traced(**provider_args: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(**provider_args)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _completed_saga(api: Api) -> str:
    assert (await api.register(SEED_DEFINITION)).status == 201
    saga_id: str = (await api.start(SEED_START))["saga_id"]
    await api.wait_for(saga_id, {"SagaCompleted"})
    return saga_id


async def _scrape(api: Api, accept: str | None) -> tuple[str, str]:
    response = await api.client.get("/metrics", headers={"Accept": accept} if accept is not None else {})
    assert response.status == 200, await response.text()
    return response.headers["Content-Type"], await response.text()


def _step_buckets_with_exemplars(openmetrics: str) -> list[Sample]:
    families = {f.name: f for f in parse_openmetrics(openmetrics)}
    return [
        s
        for s in families["saga_step_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.exemplar is not None
    ]


async def test_step_durations_carry_the_attempts_trace_as_exemplars(make_api: ApiFactory) -> None:
    provider, exporter = _traced()
    api = await make_api(tracer_provider=provider)
    await _completed_saga(api)
    await until(
        lambda: len([s for s in exporter.get_finished_spans() if s.name.startswith("saga.step ")]) == 3
    )
    steps = [s for s in exporter.get_finished_spans() if s.name.startswith("saga.step ")]
    attempts = {
        (format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
        for s in steps
        if s.context is not None
    }
    assert len({trace for trace, _ in attempts}) == 1  # the saga is one trace

    content_type, body = await _scrape(api, PROMETHEUS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    found = _step_buckets_with_exemplars(body)
    # One observation per step, each in one bucket (the smallest that holds it): three exemplars.
    assert len(found) == 3
    assert {(e.labels["trace_id"], e.labels["span_id"]) for e in (s.exemplar for s in found) if e} == attempts
    for sample in found:
        assert sample.exemplar is not None
        assert sample.labels["phase"] == "action"
        assert sample.labels["outcome"] == "succeeded"
        assert sample.exemplar.value <= float(sample.labels["le"])

    # The same registry in the plain text format: no exemplars (the format has none), same series.
    content_type, plain = await _scrape(api, "text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# {" not in plain
    assert "# EOF" not in plain
    plain_step = next(f for f in parse_text(plain) if f.name == "saga_step_duration_seconds")
    assert all(s.exemplar is None for s in plain_step.samples)
    assert sum(1 for s in plain_step.samples if s.name.endswith("_count") and s.value == 1) == 3


async def test_an_unsampled_trace_leaves_no_exemplar(make_api: ApiFactory) -> None:
    provider, _ = _traced(sampler=ALWAYS_OFF)
    api = await make_api(tracer_provider=provider)
    await _completed_saga(api)
    _, body = await _scrape(api, OPENMETRICS)
    families = {f.name: f for f in parse_openmetrics(body)}
    assert any(s.name.endswith("_count") for s in families["saga_step_duration_seconds"].samples)
    assert _step_buckets_with_exemplars(body) == []


async def test_without_tracing_there_is_no_exemplar(api: Api) -> None:
    await _completed_saga(api)
    _, body = await _scrape(api, OPENMETRICS)
    assert _step_buckets_with_exemplars(body) == []


async def test_content_negotiation(api: Api) -> None:
    cases = {
        None: "text/plain; version=0.0.4",
        "*/*": "text/plain; version=0.0.4",
        "text/plain": "text/plain; version=0.0.4",
        "application/json": "text/plain; version=0.0.4",
        "application/openmetrics-text": "application/openmetrics-text; version=1.0.0",
        OPENMETRICS: "application/openmetrics-text; version=1.0.0",
        PROMETHEUS_ACCEPT: "application/openmetrics-text; version=1.0.0",
        "text/plain, application/openmetrics-text": "application/openmetrics-text; version=1.0.0",
        # The scraper's preferences are honoured, and OpenMetrics' old draft is not served as 1.0.0.
        "text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5": "text/plain; version=0.0.4",
        "application/openmetrics-text;q=0": "text/plain; version=0.0.4",
        "application/openmetrics-text; version=0.0.1": "text/plain; version=0.0.4",
    }
    for accept, expected in cases.items():
        content_type, body = await _scrape(api, accept)
        assert content_type.startswith(expected), (accept, content_type)
        assert ("# EOF" in body) == expected.startswith("application/openmetrics-text"), accept
        # Each body parses in its own format.
        parse = parse_openmetrics if expected.startswith("application/openmetrics-text") else parse_text
        assert "saga_step_duration_seconds" in {f.name for f in parse(body)}


async def test_switched_off_metrics_answer_404_in_every_format(api: Api) -> None:
    off = ObservabilitySettings(metrics_enabled=False)
    deps = dataclasses.replace(
        api.deps,
        settings=api.deps.settings.model_copy(update={"observability": off}),
        registry=CollectorRegistry(),  # the app registers its own metrics in it
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(deps), host="127.0.0.1"))
    await client.start_server()
    try:
        for accept in (None, "text/plain", OPENMETRICS):
            response = await client.get("/metrics", headers={"Accept": accept} if accept else {})
            await problem(response, 404)
    finally:
        await client.close()


def _dependencies(body: str) -> dict[str, float]:
    family = next(f for f in parse_text(body) if f.name == "saga_dependency_up")
    return {s.labels["dependency"]: s.value for s in family.samples}


async def test_the_scrape_probes_the_event_store(api: Api) -> None:
    _, body = await _scrape(api, None)
    # No read model in this process: Redis is none of its business.
    assert _dependencies(body) == {"event_store": 1.0}
    await api.engine.stop(grace=0)
    await api.store.close()
    _, body = await _scrape(api, None)
    assert _dependencies(body) == {"event_store": 0.0}


class _RedisDown:
    async def position(self) -> Position | None:
        raise ReadModelUnavailable("Redis is unreachable")


async def test_the_scrape_probes_redis_where_reads_are_served(api_rm: Api, make_api: ApiFactory) -> None:
    _, body = await _scrape(api_rm, None)
    assert _dependencies(body) == {"event_store": 1.0, "redis": 1.0}
    down = await make_api(read_models=_RedisDown())
    _, body = await _scrape(down, OPENMETRICS)
    families = {f.name: f for f in parse_openmetrics(body)}
    assert {s.labels["dependency"]: s.value for s in families["saga_dependency_up"].samples} == {
        "event_store": 1.0,
        "redis": 0.0,
    }
