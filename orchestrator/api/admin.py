"""Admin routes (the admin role; cross-tenant): projection rebuild (start, progress), persistent
subscription info, parked-event replay. The CLI drives these, since the embedded store is single-process
and tools that change things must go through the running service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from orchestrator.api.common import json_response, operations, principal, store_guard
from orchestrator.api.deps import REBUILD, RebuildState
from orchestrator.api.health import subscription_model
from orchestrator.api.models import Accepted, RebuildStatus, SubscriptionList
from orchestrator.api.problems import Problem
from orchestrator.api.routes import Param, Reply, Route
from orchestrator.app.ports import RebuildProgress
from orchestrator.eventstore.types import Position

log = structlog.get_logger("orchestrator.api")
BASE = "/api/v1/admin"


def jsonable(value: Any) -> Any:
    """Progress values are the projector's dataclasses; positions stay opaque tokens for clients."""
    if isinstance(value, Position):
        return value.encode()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _status(state: RebuildState, progress: RebuildProgress | None) -> RebuildStatus:
    running = state.task is not None and not state.task.done()
    shown = progress if progress is not None else state.last_progress
    body = jsonable(shown)
    return RebuildStatus(
        running=running, progress=body if isinstance(body, dict) else None, error=state.error
    )


async def _run_rebuild(
    state: RebuildState, rebuild: Callable[[Callable[[RebuildProgress], None]], Awaitable[RebuildProgress]]
) -> None:
    def on_progress(progress: RebuildProgress) -> None:
        state.last_progress = progress

    try:
        await rebuild(on_progress)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        state.error = str(e) or type(e).__name__
        log.exception("projection_rebuild_failed")


async def start_rebuild(request: web.Request) -> web.Response:
    use, who = operations(request), principal(request)
    use.rebuild_progress(who)  # the permission, and a projector on this node, before anything starts
    state = request.app[REBUILD]
    if state.task is not None and not state.task.done():
        raise Problem(409, "rebuild-running", "a rebuild is already running; follow its progress")
    state.error = None
    state.last_progress = None

    def rebuild(on_progress: Callable[[RebuildProgress], None]) -> Awaitable[RebuildProgress]:
        return use.rebuild(who, on_progress)

    state.task = asyncio.create_task(_run_rebuild(state, rebuild), name="projection-rebuild")
    return json_response(_status(state, None), 202, {"Location": f"{BASE}/projections/rebuild"})


async def rebuild_progress(request: web.Request) -> web.Response:
    progress = operations(request).rebuild_progress(principal(request))
    return json_response(_status(request.app[REBUILD], progress))


async def subscriptions(request: web.Request) -> web.Response:
    async with store_guard():
        infos = await operations(request).subscriptions(principal(request))
    return json_response(SubscriptionList(items=[subscription_model(i) for i in infos]))


async def replay_parked(request: web.Request) -> web.Response:
    group = request.match_info["group"]
    async with store_guard():
        await operations(request).replay_parked(principal(request), group)
    return json_response(
        Accepted(status="accepted", detail=f"parked events of {group!r} are redelivered"), 202
    )


async def rebuild_context(app: web.Application) -> AsyncIterator[None]:
    """Owns the rebuild task: cancelled and awaited when the app stops."""
    app[REBUILD] = RebuildState()
    yield
    task = app[REBUILD].task
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_ADMIN = (401, 403)

ROUTES = (
    Route(
        "POST",
        BASE + "/projections/rebuild",
        start_rebuild,
        "startRebuild",
        "Rebuild the read models into a new generation, then switch (blue/green)",
        "admin",
        {202: Reply("started", RebuildStatus)},
        problems=(*_ADMIN, 400, 409, 503),
    ),
    Route(
        "GET",
        BASE + "/projections/rebuild",
        rebuild_progress,
        "getRebuild",
        "Progress of the current (or last) rebuild",
        "admin",
        {200: Reply("progress", RebuildStatus)},
        problems=(*_ADMIN, 400, 503),
    ),
    Route(
        "GET",
        BASE + "/subscriptions",
        subscriptions,
        "listSubscriptions",
        "Persistent subscription groups: checkpoint, in flight, parked, connections",
        "admin",
        {200: Reply("groups", SubscriptionList)},
        problems=(*_ADMIN, 400, 503),
    ),
    Route(
        "POST",
        BASE + "/subscriptions/{group}/replay-parked",
        replay_parked,
        "replayParked",
        "Deliver a group's parked events again",
        "admin",
        {202: Reply("replay started", Accepted)},
        params=(Param("group", "path", {"type": "string"}, True),),
        problems=(*_ADMIN, 400, 404, 503),
    ),
)
