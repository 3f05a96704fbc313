"""The HTTP executor against real aiohttp servers on loopback: headers, body, outcome table, deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.engine.actor import to_step_outcome
from orchestrator.engine.calls import OutcomeKind, Phase, StepCall, classify
from orchestrator.engine.http_executor import MAX_OUTPUT_BYTES, HttpExecutor, parse_retry_after
from orchestrator.settings import ServiceConfig


@pytest.mark.parametrize(
    ("status", "phase", "kind"),
    [
        (200, Phase.ACTION, OutcomeKind.SUCCEEDED),
        (204, Phase.COMPENSATION, OutcomeKind.SUCCEEDED),
        (404, Phase.COMPENSATION, OutcomeKind.SUCCEEDED),
        (410, Phase.COMPENSATION, OutcomeKind.SUCCEEDED),
        (404, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (401, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (400, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (415, Phase.COMPENSATION, OutcomeKind.MISCONFIGURED),
        (302, Phase.ACTION, OutcomeKind.MISCONFIGURED),
        (422, Phase.ACTION, OutcomeKind.REJECTED),
        (402, Phase.ACTION, OutcomeKind.REJECTED),
        (418, Phase.ACTION, OutcomeKind.REJECTED),
        (422, Phase.COMPENSATION, OutcomeKind.REJECTED),
        (409, Phase.ACTION, OutcomeKind.TRANSIENT),
        (408, Phase.ACTION, OutcomeKind.TRANSIENT),
        (425, Phase.ACTION, OutcomeKind.TRANSIENT),
        (429, Phase.ACTION, OutcomeKind.TRANSIENT),
        (500, Phase.ACTION, OutcomeKind.TRANSIENT),
        (503, Phase.COMPENSATION, OutcomeKind.TRANSIENT),
    ],
)
def test_outcome_table(status: int, phase: Phase, kind: OutcomeKind) -> None:
    assert classify(status, phase) is kind


def test_outcome_overrides_win() -> None:
    assert classify(409, Phase.ACTION, {"409": "rejected"}) is OutcomeKind.REJECTED


def test_retry_after_seconds_date_and_cap() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", 300) == 7.0
    assert parse_retry_after("7000", 300) == 300.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), 300, now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), 300, now) == 0.0
    assert parse_retry_after("soon", 300) is None
    assert parse_retry_after(None, 300) is None


class Participant:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: dict[str, web.StreamResponse] = {}
        self.delay = 0.0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        action = request.match_info["action"]
        if action == "redirect":
            raise web.HTTPFound("/elsewhere")
        if action == "busy":
            return web.Response(status=503, headers={"Retry-After": "3"})
        if action == "reject":
            return web.json_response({"type": "declined"}, status=422)
        if action == "nojson":
            return web.Response(text="charged OK", status=200)
        if action == "big":
            return web.json_response({"blob": "y" * (MAX_OUTPUT_BYTES - 100)})
        if action == "huge":
            return web.Response(body=b'"' + b"x" * MAX_OUTPUT_BYTES + b'"', status=200)
        if action.startswith("status-"):
            return web.Response(status=int(action.removeprefix("status-")))
        return web.json_response({"echo": json.loads(body)["step"]})


@pytest.fixture
async def participant() -> AsyncIterator[tuple[Participant, str]]:
    p = Participant()
    app = web.Application()
    app.router.add_post("/{action}", p.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield p, f"http://127.0.0.1:{server.port}"
    await server.close()


def _call(action: str, *, phase: Phase = Phase.ACTION, timeout: float = 5.0, attempt: int = 1) -> StepCall:
    body = json.dumps({"saga_id": "s-1", "step": "reserve", "input": {"n": 1}}).encode()
    return StepCall(
        tenant="acme",
        saga_id="s-1",
        step="reserve",
        service="inventory",
        action=action,
        phase=phase,
        attempt=attempt,
        idempotency_key="key-1",
        body=body,
        timeout=timeout,
        send_deadline=time.monotonic() + timeout + 1,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


async def test_success_sends_the_contract_headers_and_body(participant: tuple[Participant, str]) -> None:
    p, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    call = _call("reserve", attempt=2)
    result = await executor.call(call)
    await executor.close()
    assert result.kind is OutcomeKind.SUCCEEDED
    assert result.output == {"echo": "reserve"}
    path, headers, body = p.requests[0]
    assert path == "/reserve"
    assert body == call.body
    assert headers["Idempotency-Key"] == "key-1"
    assert headers["X-Saga-Attempt"] == "2"
    assert headers["X-Saga-Id"] == "s-1"
    assert headers["X-Tenant-Id"] == "acme"
    assert headers["traceparent"].startswith("00-0af7")


async def test_redirects_are_not_followed(participant: tuple[Participant, str]) -> None:
    p, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    result = await executor.call(_call("redirect"))
    await executor.close()
    assert result.kind is OutcomeKind.MISCONFIGURED
    assert result.status == 302
    assert [r[0] for r in p.requests] == ["/redirect"]


async def test_transient_answer_carries_retry_after(participant: tuple[Participant, str]) -> None:
    _, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    busy = await executor.call(_call("busy"))
    reject = await executor.call(_call("reject"))
    nojson = await executor.call(_call("nojson"))
    nojson_comp = await executor.call(_call("nojson", phase=Phase.COMPENSATION))
    await executor.close()
    assert (busy.kind, busy.status, busy.retry_after) == (OutcomeKind.TRANSIENT, 503, 3.0)
    assert (reject.kind, reject.error) == (OutcomeKind.REJECTED, "http_422")
    assert (nojson.kind, nojson.error) == (OutcomeKind.MISCONFIGURED, "bad_output")
    assert nojson_comp.kind is OutcomeKind.SUCCEEDED


async def test_timeout_is_transient(participant: tuple[Participant, str]) -> None:
    p, url = participant
    p.delay = 2.0
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    result = await executor.call(_call("slow", timeout=0.2))
    await executor.close()
    assert (result.kind, result.error) == (OutcomeKind.TRANSIENT, "timeout")
    assert result.maybe_effective  # the request left: the participant may have done it


@pytest.mark.parametrize(
    ("action", "kind", "error"),
    [
        ("nojson", OutcomeKind.MISCONFIGURED, "bad_output"),
        ("huge", OutcomeKind.MISCONFIGURED, "output_too_large"),
    ],
)
async def test_an_unusable_2xx_may_have_taken_effect(
    participant: tuple[Participant, str], action: str, kind: OutcomeKind, error: str
) -> None:
    """Regression: a 2xx whose body is not JSON or too large suspended the saga as "no effect", so an
    abort then skipped the refund. The participant said it did it: a rollback must undo it."""
    _, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    result = await executor.call(_call(action))
    await executor.close()
    assert (result.kind, result.error) == (kind, error)
    assert result.maybe_effective
    outcome = to_step_outcome(_call(action), result)
    assert outcome.outcome_unknown


async def test_a_large_output_under_the_cap_is_read_whole(participant: tuple[Participant, str]) -> None:
    """Regression: one ``read(n)`` returned only the chunks that had arrived, so a large valid body was
    cut short and taken for "not JSON"."""
    _, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    result = await executor.call(_call("big"))
    await executor.close()
    assert result.kind is OutcomeKind.SUCCEEDED
    assert len(result.output["blob"]) == MAX_OUTPUT_BYTES - 100


@pytest.mark.parametrize(
    ("status", "maybe_effective"),
    [(502, True), (504, True), (409, True), (503, False), (500, False), (429, False), (422, False)],
)
async def test_which_failed_answers_may_have_taken_effect(
    participant: tuple[Participant, str], status: int, maybe_effective: bool
) -> None:
    """A gateway's 502/504 cannot know what the service behind it did; 409 means the same key is still in
    flight. A 503, 429 or a business rejection says the participant did not do it."""
    _, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url)})
    result = await executor.call(_call(f"status-{status}"))
    compensation = await executor.call(_call(f"status-{status}", phase=Phase.COMPENSATION))
    await executor.close()
    assert result.maybe_effective is maybe_effective
    assert not compensation.maybe_effective


async def test_connection_refused_is_transient_and_not_sent() -> None:
    executor = HttpExecutor({"inventory": ServiceConfig(base_url="http://127.0.0.1:9")})
    result = await executor.call(_call("reserve"))
    await executor.close()
    assert result.kind is OutcomeKind.TRANSIENT
    assert result.not_sent
    assert not result.withheld  # the participant is down: each such attempt counts against the retries


async def test_never_sends_past_the_deadline(participant: tuple[Participant, str]) -> None:
    p, url = participant
    executor = HttpExecutor({"inventory": ServiceConfig(base_url=url, pool_limit=1)})
    late = _call("reserve")
    late = StepCall(**{**{f: getattr(late, f) for f in late.__dataclass_fields__}, "send_deadline": 0.0})
    result = await executor.call(late)
    await executor.close()
    assert result.not_sent
    assert result.withheld  # the engine's own window closed: not a retry used up
    assert not result.maybe_effective
    assert p.requests == []


async def test_a_full_pool_waits_at_most_the_acquire_cap(participant: tuple[Participant, str]) -> None:
    p, url = participant
    p.delay = 1.0
    executor = HttpExecutor(
        {"inventory": ServiceConfig(base_url=url, pool_limit=1, pool_acquire_timeout_ms=100)}
    )
    first = asyncio.ensure_future(executor.call(_call("reserve")))
    await asyncio.wait_for(p.arrived.wait(), 5)  # the first call now holds the only slot
    second = await executor.call(_call("reserve"))
    assert (second.kind, second.error, second.not_sent) == (OutcomeKind.TRANSIENT, "pool_exhausted", True)
    assert second.withheld
    assert (await first).kind is OutcomeKind.SUCCEEDED
    await executor.close()
    assert len(p.requests) == 1


async def test_unknown_service_is_a_configuration_error() -> None:
    executor = HttpExecutor({})
    result = await executor.call(_call("reserve"))
    assert (result.kind, result.error) == (OutcomeKind.MISCONFIGURED, "unknown_service")
