"""SSE: frames with one id per event, retry hint, keep-alives, resume with Last-Event-ID, 204 once the
client has seen the end of a finished saga, and the bounded per-client queue."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from orchestrator.api.stream import Feed
from orchestrator.eventstore.ids import new_events
from orchestrator.eventstore.types import NO_STREAM
from orchestrator.records.streams import saga_stream
from tests.api.conftest import INSTANCES, Api, ApiFactory, fields, problem
from tests.seed import SEED_DEFINITION, SEED_START


def parse(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(events as {id, data}, other lines: retry and comments)."""
    events: list[dict[str, Any]] = []
    other: list[str] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        if not lines:
            continue
        if any(line.startswith("id: ") for line in lines):
            frame = dict(line.split(": ", 1) for line in lines)
            events.append({"id": int(frame["id"]), "data": json.loads(frame["data"])})
        else:
            other.extend(lines)
    return events, other


async def read_stream(api: Api, saga_id: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    response = await api.client.get(f"{INSTANCES}/{saga_id}/stream", headers=headers or {})
    text = await asyncio.wait_for(response.text(), 20)
    return response.status, text


async def test_stream_of_a_finished_saga_then_204_then_resume(api: Api) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    saga_id = (await api.start(SEED_START))["saga_id"]
    await api.wait_for(saga_id, {"SagaCompleted"})
    history = await api.history(saga_id)

    status, text = await read_stream(api, saga_id)
    assert status == 200
    events, other = parse(text)
    assert other[0] == "retry: 2000"
    assert [e["id"] for e in events] == [e.revision for e in history]
    assert [e["data"]["type"] for e in events] == [e.type for e in history]
    assert events[0]["data"]["data"]["context"]["order_id"] == "order-123"
    assert all(e["data"]["saga_id"] == saga_id for e in events)

    last = history[-1].revision
    response = await api.client.get(f"{INSTANCES}/{saga_id}/stream", headers={"Last-Event-ID": str(last)})
    assert response.status == 204

    status, text = await read_stream(api, saga_id, {"Last-Event-ID": "2"})
    assert status == 200
    assert [e["id"] for e in parse(text)[0]] == list(range(3, last + 1))
    # EventSource cannot send headers on its first request; the query parameter does the same.
    response = await api.client.get(f"{INSTANCES}/{saga_id}/stream?last_event_id={last}")
    assert response.status == 204


async def test_live_stream_with_keep_alives(make_api: ApiFactory) -> None:
    api = await make_api(sse_keepalive_s=0.05)
    api.participants.script[("payment-service", "charge")] = ["slow:0.4"]
    assert (await api.register(SEED_DEFINITION)).status == 201
    saga_id = (await api.start(SEED_START))["saga_id"]
    status, text = await read_stream(api, saga_id)
    assert status == 200
    events, other = parse(text)
    assert ": keep-alive" in other
    assert events[-1]["data"]["type"] == "SagaCompleted"
    assert [e["id"] for e in events] == list(range(len(events)))


async def test_stream_refusals(api: Api) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    saga_id = (await api.start(SEED_START))["saga_id"]
    await problem(await api.client.get(f"{INSTANCES}/00000000-0000-0000-0000-000000000000/stream"), 404)
    await problem(await api.client.get(f"{INSTANCES}/not-a-uuid/stream"), 404)
    body = await problem(
        await api.client.get(f"{INSTANCES}/{saga_id}/stream", headers={"Last-Event-ID": "x"}), 400
    )
    assert fields(body) == ["header.Last-Event-ID"]


async def test_a_client_that_falls_behind_is_disconnected(api: Api) -> None:
    stream = saga_stream("00000000-0000-0000-0000-00000000feed")
    overflowed = asyncio.Event()
    feed = Feed(await api.store.subscribe_stream(stream), 2, overflowed.set)
    try:
        items = [("Note", json.dumps({"n": n}).encode(), b"{}") for n in range(5)]
        await api.store.append(stream, new_events(stream, NO_STREAM, items), expected=NO_STREAM)
        await asyncio.wait_for(overflowed.wait(), 10)
        assert feed.overflowed
        assert feed.queue.full()
    finally:
        await feed.close()
