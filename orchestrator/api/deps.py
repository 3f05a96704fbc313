"""What the API is built from (:class:`ApiDeps`) and the typed application and request keys.

The API reaches the read side and the engine only through the application layer's ports
(``orchestrator.app.ports``), so the composition root decides what serves reads (or that nothing does:
then every read endpoint answers 503); handlers call the use cases (``orchestrator.app.Sagas``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from orchestrator.api.principal import Authenticator, Principal
from orchestrator.app.api_keys import ApiKeys
from orchestrator.app.audit import AuditTrail
from orchestrator.app.commands import SagaCommands
from orchestrator.app.operations import Operations
from orchestrator.app.ports import EngineStatus, Projector, ReadModels, RebuildProgress
from orchestrator.app.sagas import Sagas
from orchestrator.cluster.view import ClusterView
from orchestrator.eventstore.port import EventStore
from orchestrator.settings import Settings


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    version: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApiDeps:
    store: EventStore
    commands: SagaCommands
    registry: CollectorRegistry
    settings: Settings
    node: NodeInfo
    #: None: this process serves no reads (every read endpoint answers 503)
    read_models: ReadModels | None = None
    #: None: no engine in this process (commands are still appended; another node's engine acts)
    engine: EngineStatus | None = None
    #: None: no projector in this process (admin rebuild answers 503)
    projector: Projector | None = None
    #: None: cluster mode is off (``/health/cluster`` describes this node only)
    cluster: ClusterView | None = None
    #: None: tracing off (no server spans)
    tracer_provider: TracerProvider | None = None
    #: the JWKS participants verify the engine's per-call tokens with (``/.well-known/jwks.json``)
    service_jwks: bytes = b'{"keys": []}'
    sse_keepalive_s: float = 15.0
    #: events buffered per SSE client; a client that falls further behind is disconnected and resumes
    sse_queue_size: int = 256
    sse_retry_ms: int = 2_000
    #: the longest a read with ``min_position`` waits for the read model
    read_wait_max_s: float = 5.0
    #: read model this many store positions behind the head: ``/health`` says degraded
    lag_degraded_positions: int = 1_000


@dataclass
class RebuildState:
    task: asyncio.Task[None] | None = None
    last_progress: RebuildProgress | None = None
    error: str | None = None


DEPS = web.AppKey("deps", ApiDeps)
SAGAS = web.AppKey("sagas", Sagas)
OPERATIONS = web.AppKey("operations", Operations)
REBUILD = web.AppKey("rebuild", RebuildState)
PRINCIPAL = web.RequestKey("principal", Principal)
AUTH = web.AppKey("auth", Authenticator)
API_KEYS = web.AppKey("api_keys", ApiKeys)
AUDIT = web.AppKey("audit", AuditTrail)
