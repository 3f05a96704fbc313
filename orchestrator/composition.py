"""The composition root: picks the concrete adapters and runs the roles of one process.

Roles: ``api`` (the HTTP API), ``engine`` (saga actors on the persistent subscription), ``projector``
(Redis read models); ``all`` runs the three. Every role serves ``/health/*`` and ``/metrics`` on the
configured port. With the embedded store, Redis is the bundled server (unless ``redis.url`` is set) and
the demo participants are registered for the brief's services (``demo.enabled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from orchestrator.api.app import create_app
from orchestrator.api.deps import ApiDeps, NodeInfo
from orchestrator.app.commands import SagaCommands
from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.engine.timers import TimerIndex
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.port import EventStore
from orchestrator.observability.metrics import EmbeddedStoreCollector, EngineMetrics
from orchestrator.settings import ServiceConfig, Settings

log = structlog.get_logger("orchestrator")


def _version() -> str:
    try:
        return version("saga-orchestrator")
    except PackageNotFoundError:
        return "0+unknown"


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, read_only: bool = False) -> AsyncIterator[EventStore]:
    """The configured event store: the embedded one, or KurrentDB / EventStoreDB for a connection URL."""
    url = settings.event_store.url
    store: EventStore
    if url == "embedded":
        store = await EmbeddedEventStore.open(
            settings.event_store.data_dir / "eventstore", read_only=read_only
        )
    else:
        from orchestrator.eventstore.kurrent import open_kurrent_store

        store = await open_kurrent_store(url)
    try:
        yield store
    finally:
        await store.close()


def roles_of(role: str) -> tuple[str, ...]:
    return ("api", "engine", "projector") if role == "all" else (role,)


async def serve(settings: Settings, role: str, *, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM / SIGINT; then stop taking work, let calls in flight finish, exit 0."""
    roles = roles_of(role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    embedded = settings.event_store.url == "embedded"
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        if isinstance(store, EmbeddedEventStore):
            registry.register(EmbeddedStoreCollector(store))
        services = dict(settings.services)
        if settings.demo.enabled == "on" or (settings.demo.enabled == "auto" and embedded):
            from orchestrator.demo import start_demo_services

            demo = await start_demo_services(settings.demo.host, settings.demo.port)
            stack.push_async_callback(demo.stop)
            for name, url in demo.base_urls.items():
                services.setdefault(name, ServiceConfig(base_url=url))
            log.info("demo_services", url=demo.url, services=sorted(demo.base_urls))
        redis_url = settings.redis.url
        if not redis_url and ("api" in roles or "projector" in roles):
            from projections.embedded_redis import EmbeddedRedis

            redis = EmbeddedRedis(settings.event_store.data_dir / "redis")
            redis_url = await asyncio.to_thread(redis.start)
            stack.callback(redis.stop)
        executor = ExecutorRouter(http=HttpExecutor(services))
        stack.push_async_callback(executor.close)
        node = NodeInfo(node_id=uuid.uuid4().hex[:12], version=_version(), roles=roles)
        engine: Engine | None = None
        if "engine" in roles:
            engine = Engine(
                store,
                executor,
                settings=settings.engine,
                timer_index=TimerIndex(settings.event_store.data_dir / f"timers-{settings.engine.group}.db"),
                acquire_caps_ms={n: s.pool_acquire_timeout_ms for n, s in services.items()},
                node_id=node.node_id,
                metrics=EngineMetrics(registry),
            )
        read_models = None
        projector = None
        if "projector" in roles:
            from projections.service import start_projector

            projector = await start_projector(
                store,
                redis_url,
                settings.redis.prefix,
                registry=registry,
                retention_days=settings.projections.retention_days,
            )
            stack.push_async_callback(projector.stop)
            read_models = projector.read_models
        elif "api" in roles:
            from projections.queries import ReadModels
            from projections.redis_store import RedisViewStore

            views = RedisViewStore.connect(redis_url, settings.redis.prefix)
            stack.push_async_callback(views.close)
            read_models = ReadModels(views)
        if engine is not None:
            await engine.start()
            # Stopped before anything it uses: calls in flight finish and are recorded first.
            stack.push_async_callback(engine.stop)
        tuning = engine.tuning if engine is not None else None
        commands = SagaCommands(
            store,
            tuning
            if tuning is not None
            else Engine.tuning_for(
                settings.engine, {n: s.pool_acquire_timeout_ms for n, s in services.items()}
            ),
            service_known=executor.knows,
        )
        app = create_app(
            ApiDeps(
                store=store,
                commands=commands,
                registry=registry,
                settings=settings,
                node=node,
                read_models=read_models if "api" in roles else None,
                engine=engine,
                projector=projector,
            )
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        log.info(
            "serving",
            roles=list(roles),
            event_store=settings.event_store.url if not embedded else "embedded",
            url=f"http://{settings.server.host}:{settings.server.port}",
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping", grace_s=settings.engine.shutdown_grace_s)
        await site.stop()
    log.info("stopped")
    return 0
