"""Health: ``/health/live`` checks nothing external; ``/health/ready`` means this process can serve its
role (the event store answers); ``/health`` adds the read model and its lag (``degraded``, never a
readiness failure: stale reads are better than no node at all); ``/health/cluster`` describes this node and,
in cluster mode, every live node of its membership view, the leader and its epoch, and the shard
assignment (readiness never depends on another node).
Also ``/metrics``, the Prometheus exposition of the process registry (404 when switched off), in the plain
text format or OpenMetrics as the scraper asks, with ``saga_dependency_up`` probed at each scrape."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from aiohttp import web

from orchestrator.api.common import deps, json_response
from orchestrator.api.deps import ApiDeps
from orchestrator.api.models import (
    ClusterReport,
    HealthCheck,
    HealthReport,
    LeaderReport,
    LiveReport,
    NodeReport,
    ShardAssignmentReport,
    SubscriptionModel,
    TimerState,
)
from orchestrator.api.problems import Problem
from orchestrator.api.routes import Reply, Route
from orchestrator.app.ports import ReadModelUnavailable
from orchestrator.cluster.view import ClusterStatus
from orchestrator.eventstore.errors import EventStoreError
from orchestrator.eventstore.types import Position, SubscriptionInfo
from orchestrator.observability.metrics import dependency_family, exposition

PING_TIMEOUT_S = 2.0
Status = Literal["ok", "degraded", "down"]


async def _store_check(d: ApiDeps) -> HealthCheck:
    try:
        await asyncio.wait_for(d.store.ping(), PING_TIMEOUT_S)
    except (EventStoreError, TimeoutError, OSError) as e:
        return HealthCheck(status="down", detail=str(e) or type(e).__name__)
    return HealthCheck(status="ok")


async def _read_model_position(d: ApiDeps) -> tuple[HealthCheck, Position | None]:
    if d.read_models is None:
        return HealthCheck(status="absent", detail="this node serves no read models"), None
    try:
        position = await asyncio.wait_for(d.read_models.position(), PING_TIMEOUT_S)
    except (ReadModelUnavailable, ConnectionError, TimeoutError, OSError) as e:
        return HealthCheck(status="down", detail=str(e) or type(e).__name__), None
    return HealthCheck(status="ok"), position


async def live(_: web.Request) -> web.Response:
    return json_response(LiveReport(status="ok"))


async def ready(request: web.Request) -> web.Response:
    store = await _store_check(deps(request))
    status: Status = "ok" if store.status == "ok" else "down"
    return json_response(HealthReport(status=status, checks={"store": store}), 200 if status == "ok" else 503)


async def health(request: web.Request) -> web.Response:
    d = deps(request)
    store = await _store_check(d)
    read_model, applied = await _read_model_position(d)
    lag: int | None = None
    checks = {"store": store, "read_model": read_model}
    if store.status == "ok" and read_model.status == "ok":
        try:
            head = await d.store.head_position()
        except EventStoreError:
            head = None
        if head is not None:
            lag = max(0, head.commit - (applied.commit if applied is not None else 0))
            if lag > d.lag_degraded_positions:
                checks["projection_lag"] = HealthCheck(
                    status="degraded", detail=f"the read model is {lag} positions behind the store"
                )
    status: Status
    if store.status != "ok":
        status = "down"
    elif read_model.status == "down" or "projection_lag" in checks:
        status = "degraded"
    else:
        status = "ok"
    report = HealthReport(status=status, checks=checks, projection_lag_positions=lag)
    return json_response(report, 503 if status == "down" else 200)


def subscription_model(info: SubscriptionInfo) -> SubscriptionModel:
    return SubscriptionModel(
        group=info.group,
        status=info.status,
        checkpoint=info.checkpoint.encode() if info.checkpoint is not None else None,
        in_flight=info.in_flight,
        parked=info.parked,
        connections=info.connections,
        strategy=info.settings.strategy.value,
        max_retry_count=info.settings.max_retry_count,
        message_timeout_s=info.settings.message_timeout,
    )


async def cluster(request: web.Request) -> web.Response:
    d = deps(request)
    store = await _store_check(d)
    redis, _ = await _read_model_position(d)
    subscription: SubscriptionModel | None = None
    timers: TimerState | None = None
    if d.engine is not None:
        if store.status == "ok":
            try:
                subscription = subscription_model(await d.store.get_subscription_info(d.engine.group))
            except EventStoreError:
                subscription = None
        timers = TimerState(
            running=d.engine.timers_running,
            fired_total=d.engine.timers_fired,
            actors=d.engine.active_actors,
        )
    node = NodeReport(
        node_id=d.node.node_id,
        version=d.node.version,
        roles=list(d.node.roles),
        store=store,
        redis=redis,
        subscription=subscription,
        timers=timers,
    )
    status: Status
    if store.status != "ok":
        status = "down"
    elif redis.status == "down":
        status = "degraded"
    else:
        status = "ok"
    if d.cluster is None:
        return json_response(ClusterReport(status=status, cluster=False, node=node, nodes=[node]))
    return json_response(_cluster_report(status, node, d.cluster.status()))


def _cluster_report(status: Status, own: NodeReport, view: ClusterStatus) -> ClusterReport:
    """The membership view of this node, with this node's own checks on its own entry. Nothing here
    waits for another node: the view is what this node last read from the store."""
    members: list[NodeReport] = []
    me: NodeReport | None = None
    for member in view.members:
        cluster_fields = {
            "address": member.node.address,
            "started_at": member.node.started_at,
            "liveness": member.liveness,
            "heartbeat_age_ms": member.heartbeat_age_ms,
            "leader": member.leader,
            "shards": list(member.shards),
            "reported": dict(member.state) or None,
        }
        if member.node.node_id == view.node_id:
            me = own.model_copy(update=cluster_fields)
            members.append(me)
        else:
            members.append(
                NodeReport(
                    node_id=member.node.node_id,
                    version=member.node.version,
                    roles=list(member.node.roles),
                    store=None,
                    redis=None,
                    subscription=None,
                    timers=None,
                ).model_copy(update=cluster_fields)
            )
    if me is None:
        # Its own heartbeats are not in the store (yet, or any more): the others do not see it either.
        owned = view.assignment.owned(view.node_id) if view.assignment is not None else ()
        me = own.model_copy(
            update={"liveness": "absent", "leader": view.leader.this_node, "shards": list(owned)}
        )
    leader = LeaderReport(
        node_id=view.leader.node_id,
        epoch=view.leader.epoch,
        lease_ms=view.leader.lease_ms,
        expires_in_ms=view.leader.expires_in_ms,
    )
    assignment = None
    if view.assignment is not None:
        assignment = ShardAssignmentReport(
            epoch=view.assignment.epoch,
            leader=view.assignment.holder,
            shards=view.assignment.shards,
            by_node={n: list(owned) for n, owned in sorted(view.assignment.by_node.items())},
        )
    return ClusterReport(
        status=status, cluster=True, node=me, nodes=members, leader=leader, assignment=assignment
    )


async def _reachable(d: ApiDeps) -> dict[str, bool]:
    """The event store, and Redis where this process serves reads, probed as ``/health`` probes them."""
    with contextlib.ExitStack() as quiet:
        if d.tracer_provider is not None:
            # A scrape every few seconds is not worth a trace of Redis commands each.
            from opentelemetry.instrumentation.utils import suppress_instrumentation

            quiet.enter_context(suppress_instrumentation())
        store, (read_model, _) = await asyncio.gather(_store_check(d), _read_model_position(d))
    found = {"event_store": store.status == "ok"}
    if read_model.status != "absent":
        found["redis"] = read_model.status == "ok"
    return found


async def metrics(request: web.Request) -> web.Response:
    d = deps(request)
    if not d.settings.observability.metrics_enabled:
        raise Problem(404, "not-found", "metrics are switched off (observability.metrics_enabled)")
    measured = dependency_family(await _reachable(d))
    body, content_type = exposition(d.registry, request.headers.get("Accept", ""), [measured])
    return web.Response(body=body, headers={"Content-Type": content_type})


ROUTES = (
    Route(
        "GET",
        "/health",
        health,
        "health",
        "ok, degraded (read model down or lagging) or down (event store unreachable)",
        "health",
        {200: Reply("ok or degraded", HealthReport), 503: Reply("down", HealthReport)},
        tenant_scoped=False,
    ),
    Route(
        "GET",
        "/health/live",
        live,
        "live",
        "Liveness: the process answers (checks nothing external)",
        "health",
        {200: Reply("alive", LiveReport)},
        tenant_scoped=False,
    ),
    Route(
        "GET",
        "/health/ready",
        ready,
        "ready",
        "Readiness: the event store answers",
        "health",
        {200: Reply("ready", HealthReport), 503: Reply("not ready", HealthReport)},
        tenant_scoped=False,
    ),
    Route(
        "GET",
        "/health/cluster",
        cluster,
        "cluster",
        "This node (id, version, roles, store and Redis reachability, subscription, timer firer) and, in "
        "cluster mode, every live node, the leader and its epoch, and the timer shard assignment",
        "health",
        {200: Reply("the cluster report", ClusterReport)},
        tenant_scoped=False,
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "metrics",
        "Prometheus exposition (OpenMetrics, with exemplars, for Accept: application/openmetrics-text)",
        "health",
        {200: Reply("text exposition format, or OpenMetrics", media="text/plain", schema={"type": "string"})},
        problems=(404,),
        tenant_scoped=False,
    ),
)
