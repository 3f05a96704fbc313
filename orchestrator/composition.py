"""The composition root: picks the concrete adapters and runs the roles of one process.

Roles: ``api`` (the HTTP API), ``engine`` (saga actors on the persistent subscription), ``projector``
(Redis read models); ``all`` runs the three. Every role serves ``/health/*`` and ``/metrics`` on the
configured port. With the embedded store, Redis is the bundled server (unless ``redis.url`` is set) and
the demo participants are registered for the brief's services (``demo.enabled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from orchestrator.api.app import create_app
from orchestrator.api.deps import ApiDeps, NodeInfo
from orchestrator.api.jwt_auth import JwtVerifier, KeyConfigError
from orchestrator.app.audit import AuditTrail
from orchestrator.app.commands import SagaCommands
from orchestrator.cluster import ClusterConfigError, ClusterNode, NodeRecord, check_store
from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.engine.service_auth import ServiceKeyError, json_jwks, public_der, signers, ssl_context
from orchestrator.engine.timers import TimerIndex
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.port import EventStore
from orchestrator.observability import tracing_setup
from orchestrator.observability.instrumentation import grpc_client_spans, instrument_redis
from orchestrator.observability.metrics import EmbeddedStoreCollector, EngineMetrics
from orchestrator.observability.tracing import SagaTracer
from orchestrator.settings import ServiceConfig, Settings

if TYPE_CHECKING:
    from projections.service import ProjectorService

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


@contextlib.asynccontextmanager
async def open_tracing(settings: Settings) -> AsyncIterator[TracerProvider | None]:
    """The process's tracer provider (None: tracing off), with spans for the KurrentDB adapter's gRPC calls
    when the store is one; shut down (flushed) when the process stops."""
    if not tracing_setup.enabled(settings.observability.tracing):
        yield None
        return
    chosen = tracing_setup.plan(settings.observability.tracing)
    for what in chosen.ignored:
        log.warning("tracing_setting_ignored", detail=what)
    provider = tracing_setup.build_provider(chosen)
    log.info("tracing", **chosen.describe())
    try:
        with contextlib.ExitStack() as instrumented:
            if settings.event_store.url != "embedded":
                # Set up before open_store, so the adapter's channels (a reconnect's too) carry it.
                instrumented.enter_context(grpc_client_spans(provider))
            yield provider
    finally:
        # Flushing may wait for the exporter (bounded by its timeout): not on the event loop.
        await asyncio.to_thread(provider.shutdown)


def warn_about_auth(settings: Settings, roles: tuple[str, ...]) -> None:
    """Say it loudly when the API is open to everyone beyond this machine, or a secret goes unused."""
    auth = settings.auth
    if "api" in roles and auth.mode == "none" and not is_loopback(settings.server.host):
        log.warning(
            "auth_none_on_a_network_address",
            host=settings.server.host,
            detail="auth.mode is none: anyone who reaches this port is every tenant's admin; use jwt, or "
            "trusted-header behind a gateway, or listen on 127.0.0.1",
        )
    if auth.mode != "jwt" and auth.jwt.secret is not None:
        log.info("auth_jwt_secret_not_used", detail=f"auth.jwt.secret is set but auth.mode is {auth.mode}")


def check_service_keys(settings: Settings, services: dict[str, ServiceConfig]) -> bytes:
    """Load every service's signing key and TLS files (a ServiceKeyError names the setting), refuse a
    signing key whose public half also verifies this service's inbound tokens, and return the JWKS the
    participants verify the engine's tokens with."""
    for name, config in services.items():
        if config.tls is not None:
            ssl_context(name, config.tls)
    inbound: set[bytes] = set()
    if settings.auth.mode == "jwt":
        verifier = JwtVerifier(settings.auth.jwt)
        inbound = {public_der(k) for k in verifier.static_keys}
    for name, signer in signers(services).items():
        if public_der(signer.key.public_key()) in inbound:
            raise ServiceKeyError(
                f"services.{name}.token.private_key_file: its public key also verifies inbound tokens "
                "(auth.jwt); use a key of its own"
            )
    return json_jwks(services)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def node_record(settings: Settings, node: NodeInfo) -> NodeRecord:
    """What this node announces in cluster mode: its address is the configured one (the host name when it
    listens on every interface); its start time is for people only."""
    host = settings.server.host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising the wildcard, not binding to it
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    return NodeRecord(
        node.node_id, node.version, node.roles, f"http://{host}:{settings.server.port}", started
    )


def node_state(engine: Engine | None, projector: ProjectorService | None) -> Callable[[], dict[str, Any]]:
    """What this node reports of itself with each cluster heartbeat (``/health/cluster`` on any node shows
    it): its engine's timer firer and consumer, its projector's rebuild."""

    def report() -> dict[str, Any]:
        state: dict[str, Any] = {}
        if engine is not None:
            state["timers"] = {
                "running": engine.timers_running,
                "fired_total": engine.timers_fired,
                "actors": engine.active_actors,
            }
            state["consuming"] = engine.consuming
        if projector is not None:
            lag = projector.lag_seconds
            state["projector"] = {
                "active": projector.active,
                "rebuilding": projector.rebuilding,
                "lag_s": round(lag, 3) if lag is not None else None,
            }
        return state

    return report


def roles_of(role: str) -> tuple[str, ...]:
    return ("api", "engine", "projector") if role == "all" else (role,)


async def serve(settings: Settings, role: str, *, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM / SIGINT; then stop taking work, let calls in flight finish, exit 0 (2 when a
    configured key or certificate cannot be used, or cluster mode cannot run on the configured store)."""
    try:
        return await _serve(settings, role, ready)
    except (KeyConfigError, ServiceKeyError, ClusterConfigError) as e:
        log.error("configuration_error", detail=str(e))
        return 2


async def _serve(settings: Settings, role: str, ready: asyncio.Event | None) -> int:
    roles = roles_of(role)
    check_store(settings.cluster.enabled, settings.event_store.url, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    embedded = settings.event_store.url == "embedded"
    warn_about_auth(settings, roles)
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        # Entered first, left last: spans of the shutdown still reach the exporter.
        provider = await stack.enter_async_context(open_tracing(settings))
        tracer = SagaTracer(provider)
        store = await stack.enter_async_context(open_store(settings))
        if isinstance(store, EmbeddedEventStore):
            registry.register(EmbeddedStoreCollector(store))
        services = dict(settings.services)
        if settings.demo.enabled == "on" or (settings.demo.enabled == "auto" and embedded):
            from orchestrator.demo import start_demo_services

            demo = await start_demo_services(settings.demo.host, settings.demo.port, tracer_provider=provider)
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
        # Keys and certificates for calls to participants: checked now, not at the first call.
        service_jwks = check_service_keys(settings, services)
        executor = ExecutorRouter(http=HttpExecutor(services, tracer_provider=provider))
        stack.push_async_callback(executor.close)
        node = NodeInfo(node_id=uuid.uuid4().hex[:12], version=_version(), roles=roles)
        cluster: ClusterNode | None = None
        if settings.cluster.enabled:
            cluster = ClusterNode(
                store,
                settings.cluster,
                node_record(settings, node),
                name=settings.engine.group,
                registry=registry,
            )
        engine: Engine | None = None
        if "engine" in roles:
            engine_settings = settings.engine
            if cluster is not None and not engine_settings.max_subscribers:
                # The group's subscriber limit sized for the deployment (when the group is created).
                engine_settings = engine_settings.model_copy(
                    update={"max_subscribers": settings.cluster.nodes}
                )
            engine = Engine(
                store,
                executor,
                settings=engine_settings,
                timer_index=TimerIndex(settings.event_store.data_dir / f"timers-{settings.engine.group}.db"),
                acquire_caps_ms={n: s.pool_acquire_timeout_ms for n, s in services.items()},
                node_id=node.node_id,
                metrics=EngineMetrics(registry),
                tracer=tracer,
                # Cluster mode: each node fires the due timers of its shards (and any nobody owns).
                placement=cluster,
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
            # The projector's role also derives the audit log from the streams (one role owns it).
            deriver = asyncio.create_task(
                AuditTrail(store, operations_tenant=settings.auth.operations).derive_forever(),
                name="audit-deriver",
            )
            stack.push_async_callback(_cancel, deriver)
            # Its queries' commands, below the request that asks (its own batches start no trace).
            instrument_redis(projector.views.client, provider)
        elif "api" in roles:
            from projections.queries import ReadModels
            from projections.redis_store import RedisViewStore

            views = RedisViewStore.connect(redis_url, settings.redis.prefix)
            stack.push_async_callback(views.close)
            instrument_redis(views.client, provider)
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
            tracer=tracer,
        )
        if cluster is not None:
            cluster.membership.report = node_state(engine, projector)
            await cluster.start()
            # Stopped first thing on shutdown (below); this covers a start that fails later on.
            stack.push_async_callback(cluster.stop)
            log.info(
                "cluster_mode", node_id=node.node_id, lease_ms=settings.cluster.lease_ms, one_node=embedded
            )
        app = create_app(
            ApiDeps(
                service_jwks=service_jwks,
                store=store,
                commands=commands,
                registry=registry,
                settings=settings,
                node=node,
                read_models=read_models if "api" in roles else None,
                engine=engine,
                projector=projector,
                cluster=cluster,
                tracer_provider=provider,
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
        if cluster is not None:
            # Release the lease and leave before anything else: the others take over at their next read.
            await cluster.stop()
        await site.stop()
    log.info("stopped")
    return 0
