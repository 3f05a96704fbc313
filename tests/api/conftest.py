"""The API under test, built from real components: the embedded store in a temporary directory, an engine
calling real HTTP participants on loopback, and — when the read side is available — the projector on the
bundled Redis. Requests go through aiohttp's test client over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from orchestrator.api.app import create_app
from orchestrator.api.deps import ApiDeps, NodeInfo
from orchestrator.app.commands import SagaCommands
from orchestrator.domain.state import SagaState
from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore import RecordedEvent
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.types import Position
from orchestrator.observability.metrics import EngineMetrics
from orchestrator.observability.tracing import SagaTracer
from orchestrator.records.streams import saga_stream
from orchestrator.settings import AuthSettings, EngineSettings, ServerSettings, ServiceConfig, Settings
from tests.e2e.participants import Participants
from tests.redis_fixtures import redis_prefix, redis_server, redis_url
from tests.seed import seed_definition

__all__ = ["redis_prefix", "redis_server", "redis_url"]

SERVICES = ("order-service", "inventory-service", "payment-service")
DEFINITIONS = "/api/v1/sagas/definitions"
INSTANCES = "/api/v1/sagas/instances"
WAITING = {"SagaCompleted", "SagaCompensated", "SagaDeadLettered", "SagaSuspended"}

JSON_HEADERS = {"Content-Type": "application/json"}


def fast_definition(name: str = "fast-order", **overrides: Any) -> dict[str, Any]:
    """The seed's steps with fast retries (failure paths must not wait seconds between attempts)."""
    return seed_definition(name=name, **overrides)


@dataclass
class Api:
    client: TestClient[Any, Any]
    store: EmbeddedEventStore
    participants: Participants
    commands: SagaCommands
    engine: Engine
    registry: CollectorRegistry
    deps: ApiDeps
    projector: Any = None
    tenant_headers: dict[str, str] = field(default_factory=dict)

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> ClientResponse:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await self.client.post(path, data=data, headers={**JSON_HEADERS, **(headers or {})})

    async def register(self, definition: Any, headers: dict[str, str] | None = None) -> ClientResponse:
        return await self.post(DEFINITIONS, definition, headers)

    async def start(self, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.post(INSTANCES, body, headers)
        assert response.status == 201, await response.text()
        found: dict[str, Any] = await response.json()
        return found

    async def history(self, saga_id: str) -> list[RecordedEvent]:
        return list(await self.store.read_stream(saga_stream(saga_id)))

    async def wait_for(
        self, saga_id: str, types: set[str] = WAITING, within: float = 20.0, tenant: str = "default"
    ) -> SagaState:
        """Follow the saga's stream until an event of ``types`` arrives after the current head."""
        sub = await self.store.subscribe_stream(saga_stream(saga_id))

        async def until() -> None:
            async for item in sub:
                if isinstance(item, RecordedEvent) and item.type in types:
                    return

        try:
            await asyncio.wait_for(until(), within)
        finally:
            await sub.close()
        state, _ = await self.commands.load(tenant, saga_id)
        return state

    async def head(self) -> Position | None:
        return await self.store.head_position()

    async def snapshot(self) -> list[tuple[str, int, str]]:
        """Every event a request wrote (the engine's own appends excluded: it keeps working meanwhile; so
        are audit records, which a refused request is expected to leave: tests/api/test_audit.py)."""
        found: list[tuple[str, int, str]] = []
        async for batch in self.store.read_all():
            for e in batch:
                if e.stream.startswith("audit-"):
                    continue
                if not json.loads(e.metadata).get("actor", "").startswith("engine:"):
                    found.append((e.stream, e.revision, e.type))
        return found


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    """Build one API (several may run in one test); everything is stopped at the end."""
    closers: list[Callable[[], Awaitable[None]]] = []

    async def make(
        *,
        mode: str | AuthSettings = "none",
        max_body_bytes: int = 256 * 1024,
        redis: tuple[str, str] | None = None,
        tracer_provider: TracerProvider | None = None,
        **deps_overrides: Any,
    ) -> Api:
        base = tmp_path / f"api-{len(closers)}"
        participants = Participants()
        await participants.start()
        closers.append(participants.close)
        store = await EmbeddedEventStore.open(base / "store")
        closers.append(store.close)
        services = {
            s: ServiceConfig(base_url=participants.url(s), pool_acquire_timeout_ms=200) for s in SERVICES
        }
        settings = Settings(
            services=services,
            auth=mode if isinstance(mode, AuthSettings) else AuthSettings(mode=mode),  # type: ignore[arg-type]
            server=ServerSettings(max_body_bytes=max_body_bytes),
            engine=EngineSettings(kick_ms=500, deadline_slack_ms=300),
        )
        registry = CollectorRegistry()
        router = ExecutorRouter(http=HttpExecutor(services, tracer_provider=tracer_provider))
        tracer = SagaTracer(tracer_provider)
        engine = Engine(
            store,
            router,
            settings=settings.engine,
            data_dir=base,
            acquire_caps_ms={s: 200 for s in SERVICES},
            metrics=EngineMetrics(registry),
            tracer=tracer,
        )
        await engine.start()

        async def stop_engine() -> None:
            await engine.stop(grace=2)
            await router.close()

        closers.append(stop_engine)
        commands = SagaCommands(store, engine.tuning, service_known=router.knows, tracer=tracer)
        projector = None
        if redis is not None:
            from projections.service import start_projector

            projector = await start_projector(store, redis[0], redis[1], registry=registry)
            closers.append(projector.stop)
        wiring: dict[str, Any] = {
            "read_models": projector.read_models if projector is not None else None,
            "engine": engine,
            "projector": projector,
            "tracer_provider": tracer_provider,
            **deps_overrides,
        }
        deps = ApiDeps(
            store=store,
            commands=commands,
            registry=registry,
            settings=settings,
            node=NodeInfo("node-test", "0.1.0", ("api", "engine")),
            **wiring,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(deps), host="127.0.0.1"))
        await client.start_server()
        closers.append(client.close)
        return Api(client, store, participants, commands, engine, registry, deps, projector)

    yield make
    for close in reversed(closers):
        await close()


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


@pytest.fixture
async def api_rm(make_api: ApiFactory, redis_url: str, redis_prefix: str) -> Api:
    """The API with the read side (the projector on the bundled Redis)."""
    return await make_api(redis=(redis_url, redis_prefix))


async def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    """Assert a problem+json answer with ``status``; return its body."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/problem+json", response.content_type
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status
    assert body["type"].startswith("urn:saga-orchestrator:problem:")
    assert body["title"]
    assert body["detail"]
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body.get("errors", [])]
