"""Strict request and response models: what the API accepts and answers, and what OpenAPI publishes.

Requests forbid unknown fields and coerce nothing (``"3"`` is not ``3``), so a typo is an error rather
than a silently different request. The read-model shapes come from ``projections.views``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.domain.definitions import NAME_PATTERN
from orchestrator.records.streams import CLIENT_ID

SagaStatusName = Literal["running", "compensating", "completed", "compensated", "dead_lettered", "suspended"]
CommandName = Literal["abort", "retry", "skip", "resolve", "resume"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- requests --------------------------------------------------------------------------------------------


class StartSagaRequest(_Request):
    """The brief's start payload; ``version`` and ``saga_id`` (a client-chosen id) are optional."""

    saga_name: str = Field(pattern=NAME_PATTERN, description="the definition to run")
    context: dict[str, Any] = Field(default_factory=dict, description="the saga's input, a JSON object")
    version: str | None = Field(None, max_length=64, description="a definition version; default: the latest")
    saga_id: str | None = Field(
        None,
        pattern=CLIENT_ID.pattern,
        description="a client-chosen id; starting again with it returns the same saga",
    )


class InterventionRequest(_Request):
    reason: str = Field(min_length=1, max_length=2_000, description="why; recorded with the actor")
    step: str | None = Field(None, pattern=NAME_PATTERN, description="the step to act on, where it matters")


# --- responses -------------------------------------------------------------------------------------------


class FieldProblemModel(_Response):
    field: str
    problem: str


class ProblemModel(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblemModel] | None = None
    instance: str | None = None


class DefinitionRegistered(_Response):
    name: str
    version: str
    hash: str
    created: bool
    #: opaque ``$all`` position token of the registration
    position: str | None
    definition: dict[str, Any]


class DefinitionVersionInfo(_Response):
    version: str
    hash: str


class DefinitionVersions(_Response):
    name: str
    latest: str
    versions: list[DefinitionVersionInfo]


class DefinitionDetail(_Response):
    name: str
    version: str
    hash: str
    definition: dict[str, Any]


class SagaStartedResponse(_Response):
    """The same body for the first start (201) and every repeat of it (200)."""

    saga_id: str
    client_id: str | None
    status: SagaStatusName
    saga_name: str
    version: str
    position: str | None


class InterventionResult(_Response):
    saga_id: str
    command: CommandName
    #: False: this Idempotency-Key was applied before; nothing was appended now
    applied: bool
    revision: int
    position: str | None
    idempotency_key: str


class EventRecord(_Response):
    revision: int
    position: str
    type: str
    recorded_at: str
    data: Any
    actor: str | None
    causation_id: str | None
    correlation_id: str | None
    schema_version: str | None


class EventHistory(_Response):
    saga_id: str
    items: list[EventRecord]
    #: pass as ``from_revision`` for the next page; None when this page reached the end
    next_from_revision: int | None


class HealthCheck(_Response):
    status: Literal["ok", "degraded", "down", "absent"]
    detail: str | None = None


class HealthReport(_Response):
    status: Literal["ok", "degraded", "down"]
    checks: dict[str, HealthCheck]
    projection_lag_positions: int | None = None


class LiveReport(_Response):
    status: Literal["ok"]


class SubscriptionModel(_Response):
    group: str
    status: str
    checkpoint: str | None
    in_flight: int
    parked: int
    connections: int
    strategy: str
    max_retry_count: int
    message_timeout_s: float


class TimerState(_Response):
    running: bool
    fired_total: int
    actors: int


class NodeReport(_Response):
    node_id: str
    version: str
    roles: list[str]
    #: this node's own checks; null for another node (ask that node)
    store: HealthCheck | None
    redis: HealthCheck | None
    subscription: SubscriptionModel | None
    timers: TimerState | None
    # --- cluster mode only (null without it), from the membership view of the node answering
    address: str | None = None
    #: the node's own wall clock at its start, for people (no node compares it)
    started_at: str | None = None
    #: alive: its heartbeat moved within half the lease; suspect: later (it leaves the view at the lease);
    #: absent: this node's own heartbeats are not reaching the store (only ever said of itself)
    liveness: Literal["alive", "suspect", "absent"] | None = None
    #: since the answering node saw this node's heartbeat move, on the answering node's clock
    heartbeat_age_ms: int | None = None
    leader: bool | None = None
    #: the timer shards the latest assignment gives this node
    shards: list[int] | None = None
    #: what the node reported of itself with its latest heartbeat (its timer firer and consumer, its
    #: projector), so every node's state is on every node's answer, at most one heartbeat old
    reported: dict[str, Any] | None = None


class LeaderReport(_Response):
    #: null: no node may act as leader now (none yet, released, or expired as the answering node sees it)
    node_id: str | None
    #: the latest lease epoch seen: the fencing token, the revision of the lease's acquisition
    epoch: int | None
    lease_ms: int
    #: how long the answering node still counts the lease as held (the leader: how long it may act)
    expires_in_ms: int | None


class ShardAssignmentReport(_Response):
    #: the epoch of the leader that wrote it (older than the lease's epoch until the new leader writes)
    epoch: int
    leader: str
    shards: int
    by_node: dict[str, list[int]]


class ClusterReport(_Response):
    status: Literal["ok", "degraded", "down"]
    #: false: cluster mode is off, and this report describes the answering node only
    cluster: bool
    #: the answering node, with its own checks, subscription and timer firer
    node: NodeReport
    #: cluster mode: every live node of the answering node's membership view (itself with its own
    #: checks); without it: the answering node only
    nodes: list[NodeReport]
    #: null without cluster mode
    leader: LeaderReport | None = None
    assignment: ShardAssignmentReport | None = None


class SubscriptionList(_Response):
    items: list[SubscriptionModel]


class RebuildStatus(_Response):
    running: bool
    progress: dict[str, Any] | None
    error: str | None


class Accepted(_Response):
    status: Literal["accepted"]
    detail: str


# --- API keys --------------------------------------------------------------------------------------------


class CreateApiKeyRequest(_Request):
    name: str = Field(min_length=1, max_length=100, description="what the key is for (shown in lists)")
    roles: list[str] = Field(min_length=1, max_length=4, description="its scopes: roles within the tenant")
    expires_in_s: int | None = Field(
        None, ge=60, le=5 * 365 * 24 * 3600, description="seconds until it expires; none: never"
    )


class RotateApiKeyRequest(_Request):
    grace_s: int = Field(0, ge=0, le=7 * 24 * 3600, description="how long the previous secret still works")


class RevokeApiKeyRequest(_Request):
    reason: str = Field("", max_length=500, description="why; recorded")


class ApiKeyModel(_Response):
    key_id: str
    name: str
    roles: list[str]
    status: Literal["active", "expired", "revoked"]
    created_at: str
    created_by: str
    expires_at: str | None
    rotated_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class IssuedApiKey(_Response):
    key: ApiKeyModel
    #: the secret, shown this once: only its hash is kept
    secret: str


class ApiKeyList(_Response):
    items: list[ApiKeyModel]


# --- audit -----------------------------------------------------------------------------------------------


class AuditRecordModel(_Response):
    at: str
    tenant: str
    actor: str
    auth: str
    action: str
    result: Literal["ok", "denied"]
    saga_id: str | None = None
    target: str | None = None
    detail: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    source: str | None = None
    source_position: str | None = None


class AuditPageModel(_Response):
    items: list[AuditRecordModel]
    next_cursor: str | None
