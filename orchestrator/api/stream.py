"""``GET …/instances/{id}/stream``: a saga's events as server-sent events.

- Resumes from the revision after ``Last-Event-ID`` (or ``?last_event_id=``); one ``id:`` (the revision)
  per event, a ``retry:`` hint, keep-alive comments while nothing happens.
- Each client has a bounded queue. A client that falls that far behind is disconnected: it resumes with
  ``Last-Event-ID`` and reads from the store, which is cheaper than buffering for it without bound.
- A saga that is terminal, for a client that has seen its last event, answers 204 so an ``EventSource``
  stops reconnecting. After sending the terminal event the server ends the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable

from aiohttp import web

from orchestrator.api.common import deps, principal, saga_id_param, sagas, store_guard
from orchestrator.api.problems import invalid_field
from orchestrator.api.routes import SAGA_ID, TENANT_PROBLEMS, Param, Reply, Route
from orchestrator.eventstore.errors import EventStoreError
from orchestrator.eventstore.port import StreamSubscription
from orchestrator.eventstore.types import CaughtUp, RecordedEvent

#: in v1 a saga is terminal exactly when its last event is one of these (resolve appends them too)
TERMINAL_EVENTS = frozenset({"SagaCompleted", "SagaCompensated"})
_REVISION = re.compile(r"^\d{1,12}$")


class Feed:
    """Pumps one catch-up subscription into a bounded queue; overflow ends the feed."""

    END = object()

    def __init__(self, subscription: StreamSubscription, size: int, on_overflow: Callable[[], None]) -> None:
        self.queue: asyncio.Queue[RecordedEvent | CaughtUp | object] = asyncio.Queue(size)
        self.overflowed = False
        self.ended = False
        self._subscription = subscription
        self._on_overflow = on_overflow
        self._task = asyncio.create_task(self._pump(), name="sse-feed")

    async def _pump(self) -> None:
        try:
            async for item in self._subscription:
                try:
                    self.queue.put_nowait(item)
                except asyncio.QueueFull:
                    self.overflowed = True
                    self._on_overflow()
                    return
        except EventStoreError:
            pass  # dropped or closed: the client reconnects and resumes
        finally:
            self.ended = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(self.END)

    async def close(self) -> None:
        with contextlib.suppress(EventStoreError):
            await self._subscription.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


FEEDS: web.AppKey[set[Feed]] = web.AppKey("sse_feeds")


def _last_seen(request: web.Request) -> int | None:
    header = request.headers.get("Last-Event-ID")
    raw, field = (
        (header, "header.Last-Event-ID")
        if header is not None
        else (
            request.query.get("last_event_id"),
            "query.last_event_id",
        )
    )
    if raw is None or raw == "":
        return None
    if not _REVISION.match(raw):
        raise invalid_field(400, "invalid-last-event-id", field, "the revision of the last event seen")
    return int(raw)


def frame(saga_id: str, event: RecordedEvent) -> bytes:
    try:
        meta = json.loads(event.metadata) if event.metadata else {}
        data = json.loads(event.data)
    except ValueError:
        meta, data = {}, event.data.decode(errors="replace")
    payload = {
        "saga_id": saga_id,
        "revision": event.revision,
        "position": event.position.encode(),
        "type": event.type,
        "recorded_at": event.recorded_at.isoformat(),
        "actor": meta.get("actor") if isinstance(meta, dict) else None,
        "data": data,
    }
    # json.dumps escapes newlines, so the payload is one `data:` line.
    return f"id: {event.revision}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    saga_id = saga_id_param(request)
    d = deps(request)
    last_seen = _last_seen(request)
    who = principal(request)
    use = sagas(request)
    async with store_guard():
        head = await use.last_event(who, saga_id)
    if head.type in TERMINAL_EVENTS and last_seen is not None and last_seen >= head.revision:
        return web.Response(status=204)
    async with store_guard():
        subscription = await use.follow(who, saga_id, last_seen)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    transport = request.transport
    feed = Feed(subscription, d.sse_queue_size, lambda: transport.close() if transport else None)
    feeds = request.app[FEEDS]
    feeds.add(feed)
    getter: asyncio.Future[object] | None = None
    try:
        await response.prepare(request)
        await response.write(f"retry: {d.sse_retry_ms}\n\n".encode())
        while not feed.overflowed:
            if getter is None:
                getter = asyncio.ensure_future(feed.queue.get())
            # Wait without cancelling the getter on a keep-alive tick, so no event is ever lost.
            done, _ = await asyncio.wait({getter}, timeout=d.sse_keepalive_s)
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            item, getter = getter.result(), None
            if item is Feed.END:
                break
            if isinstance(item, RecordedEvent):
                await response.write(frame(saga_id, item))
                if item.type in TERMINAL_EVENTS:
                    break
    except ConnectionResetError:
        pass  # the client left (or was cut off for falling behind); it resumes with Last-Event-ID
    finally:
        if getter is not None:
            getter.cancel()
        feeds.discard(feed)
        await feed.close()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def close_streams(app: web.Application) -> None:
    """On shutdown: end every open stream so the server does not wait for clients that never leave."""
    feeds: set[Feed] = app[FEEDS]
    for feed in list(feeds):
        await feed.close()


def install(app: web.Application) -> None:
    app[FEEDS] = set()
    app.on_shutdown.append(close_streams)


_TEXT = {"type": "string"}

ROUTES = (
    Route(
        "GET",
        "/api/v1/sagas/instances/{id}/stream",
        stream,
        "streamSaga",
        "The saga's events as server-sent events (resume with Last-Event-ID)",
        "instances",
        {
            200: Reply(
                "an event stream; ends after the terminal event", media="text/event-stream", schema=_TEXT
            ),
            204: Reply("the saga is finished and the client has seen its last event"),
        },
        params=(
            SAGA_ID,
            Param("Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]{1,12}$"}),
            Param("last_event_id", "query", {"type": "string", "pattern": "^[0-9]{1,12}$"}),
        ),
        problems=(*TENANT_PROBLEMS, 404, 503),
    ),
)
