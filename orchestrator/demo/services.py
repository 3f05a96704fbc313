"""The brief's three participants as one aiohttp application, each under its own path prefix.

| service               | action       | compensation            |
|-----------------------|--------------|-------------------------|
| ``order-service``     | ``validate`` | ``cancel-validation``   |
| ``inventory-service`` | ``reserve``  | ``release-reservation`` |
| ``payment-service``   | ``charge``   | ``refund``              |

They follow the participant contract (README, design.md §0.9): a repeated ``Idempotency-Key`` gets the
recorded answer (byte-identical), a different body under a known key gets 422 naming the mismatch, a second
call while one is in flight gets 409, a compensation that arrives first leaves a tombstone (the late
action gets 422 "compensated before it arrived"), and a compensation of an unknown action answers 404.
Failure switches come from the saga's context (``orchestrator.demo.switches``). Control routes:
``GET /demo/state[?saga_id=]``, ``POST /demo/reset``, ``POST /demo/fix`` (``{"saga_id": …}`` optional).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from opentelemetry.trace import TracerProvider

from orchestrator.demo.ledger import Answer, problem
from orchestrator.demo.state import Call, DemoState
from orchestrator.demo.switches import NO_SWITCHES, Mode, SwitchError, Switches, parse_switches
from orchestrator.observability.instrumentation import server_middleware

log = structlog.get_logger("orchestrator.demo")

STATE = web.AppKey("demo_state", DemoState)
Sleep = Callable[[float], Awaitable[None]]
#: how a "slow" call waits; tests inject a gate so they never depend on wall-clock timing
SLEEP: web.AppKey[Sleep] = web.AppKey("demo_sleep")
#: calls still being processed (shielded from handler cancellation), cancelled at shutdown
TASKS: web.AppKey[set[asyncio.Task[tuple[Answer, bool]]]] = web.AppKey("demo_tasks")

#: (service, operation) -> True for a compensation
OPERATIONS: Mapping[tuple[str, str], bool] = {
    ("order-service", "validate"): False,
    ("order-service", "cancel-validation"): True,
    ("inventory-service", "reserve"): False,
    ("inventory-service", "release-reservation"): True,
    ("payment-service", "charge"): False,
    ("payment-service", "refund"): True,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _parse(service: str, operation: str, request: web.Request, body: bytes) -> Call | Answer:
    """The call, or a 400 naming what breaks the contract (not recorded: nothing was decided)."""
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return problem(
            400, "missing-idempotency-key", "Missing header", "Idempotency-Key is required", record=False
        )
    try:
        attempt = int(request.headers.get("X-Saga-Attempt", "1"))
        payload = json.loads(body)
    except ValueError as e:
        return problem(400, "malformed-request", "Malformed request", str(e), record=False)
    if not isinstance(payload, dict):
        return problem(
            400, "malformed-request", "Malformed request", "the body must be a JSON object", record=False
        )
    saga_id = payload.get("saga_id") or request.headers.get("X-Saga-Id", "")
    tenant = request.headers.get("X-Tenant-Id", "default")
    return Call(service, operation, key, attempt, str(saga_id), tenant, body, payload)


async def _decide(state: DemoState, sleep: Sleep, call: Call, compensation: bool) -> tuple[Answer, bool]:
    """The answer for a parsed call and whether it is a replay of a recorded one."""
    ledger = state.ledgers[call.service]
    mismatch = ledger.check_body(call.key, call.body)
    if mismatch is not None:
        return mismatch, False
    recorded = ledger.answers.get(call.key)
    if recorded is not None:
        return recorded, True
    if call.key in ledger.in_flight:
        return problem(
            409,
            "in-flight",
            "Already in flight",
            f"a call under Idempotency-Key {call.key} is still being processed",
            record=False,
            retry_after=1,
        ), False
    switches: Switches
    try:
        switches = parse_switches(call.input)
    except SwitchError as e:
        if not compensation:
            answer = problem(422, "invalid-demo-switch", "Invalid demo switch", str(e))
            ledger.record(call.key, answer)
            return answer, False
        switches = NO_SWITCHES  # an undo must not fail on a typo the action already reported
    ledger.in_flight.add(call.key)
    try:
        if not compensation and switches.on(call.service, Mode.SLOW):
            # The effect is decided after the delay, so a compensation that arrives meanwhile (the engine
            # gave the attempt up) leaves a tombstone that this action then honours.
            await sleep(switches.slow_ms / 1000)
        answer = state.compensate(call, switches) if compensation else state.act(call, switches)
    finally:
        ledger.in_flight.discard(call.key)
    if answer.record:
        ledger.record(call.key, answer)
    return answer, False


def _respond(answer: Answer, *, replayed: bool = False) -> web.Response:
    response = web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)
    if answer.retry_after is not None:
        response.headers["Retry-After"] = str(answer.retry_after)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def _process(
    app: web.Application, service: str, operation: str, compensation: bool, parsed: Call | Answer
) -> tuple[Answer, bool]:
    state = app[STATE]
    if isinstance(parsed, Answer):
        answer, replayed, call = parsed, False, None
    else:
        call = parsed
        answer, replayed = await _decide(state, app[SLEEP], call, compensation)
    state.note_call(call, answer.status, replayed=replayed, service=service, op=operation)
    (log.debug if answer.status < 300 else log.info)(
        "demo_call",
        service=service,
        operation=operation,
        status=answer.status,
        replayed=replayed,
        saga_id=call.saga_id if call else None,
        attempt=call.attempt if call else None,
    )
    return answer, replayed


def _participant(service: str, operation: str, compensation: bool) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        parsed = _parse(service, operation, request, await request.read())
        # A real participant finishes what it started when the caller hangs up (the caller's timeout is
        # exactly the case the tombstone exists for), so the work is shielded from handler cancellation.
        task = asyncio.create_task(_process(request.app, service, operation, compensation, parsed))
        tasks = request.app[TASKS]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        answer, replayed = await asyncio.shield(task)
        return _respond(answer, replayed=replayed)

    return handle


async def _cancel_unfinished(app: web.Application) -> AsyncIterator[None]:
    yield
    unfinished: list[asyncio.Task[tuple[Answer, bool]]] = [*app[TASKS]]
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)


async def _state(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE].snapshot(request.query.get("saga_id") or None))


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    log.info("demo_reset")
    return web.json_response({"status": "reset"})


async def _fix(request: web.Request) -> web.StreamResponse:
    saga_id: Any = request.query.get("saga_id")
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return _respond(problem(400, "malformed-request", "Malformed request", "body is not JSON"))
        if isinstance(body, dict):
            saga_id = body.get("saga_id", saga_id)
    if saga_id is not None and not isinstance(saga_id, str):
        return _respond(problem(400, "malformed-request", "Malformed request", "saga_id must be a string"))
    fixed = request.app[STATE].fix(saga_id or None)
    log.info("demo_fixed", sagas=fixed)
    return web.json_response({"fixed": fixed})


async def _health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


def create_demo_app(
    state: DemoState | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    """The three demo services (under ``/order-service``, ``/inventory-service``, ``/payment-service``)
    and the control routes under ``/demo``; with a tracer provider, each call they receive is a server span
    continuing the ``traceparent`` the engine sent."""
    app = web.Application(middlewares=[server_middleware(tracer_provider)] if tracer_provider else [])
    app[STATE] = state if state is not None else DemoState()
    app[SLEEP] = sleep
    app[TASKS] = set()
    app.cleanup_ctx.append(_cancel_unfinished)
    for (service, operation), compensation in OPERATIONS.items():
        app.router.add_post(f"/{service}/{operation}", _participant(service, operation, compensation))
    app.router.add_get("/demo/state", _state)
    app.router.add_post("/demo/reset", _reset)
    app.router.add_post("/demo/fix", _fix)
    for path in ("/health", "/health/live", "/health/ready"):
        app.router.add_get(path, _health)
    return app


@dataclass(frozen=True)
class DemoServices:
    """The demo app serving on a socket: ``base_urls`` is what the service registry needs."""

    url: str
    base_urls: dict[str, str]
    state: DemoState
    _runner: web.AppRunner

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_demo_services(
    host: str = "127.0.0.1", port: int = 0, *, tracer_provider: TracerProvider | None = None
) -> DemoServices:
    """Serve the demo app in this process (the embedded default runs them next to the orchestrator)."""
    app = create_demo_app(tracer_provider=tracer_provider)
    # A "slow" call may be sleeping at shutdown; waiting for it would only delay the process's exit.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104 - comparing, not binding
    url = f"http://{shown}:{bound_port}" if ":" not in shown else f"http://[{shown}]:{bound_port}"
    base_urls = {service: f"{url}/{service}" for service, _ in OPERATIONS}
    return DemoServices(url, base_urls, app[STATE], runner)
