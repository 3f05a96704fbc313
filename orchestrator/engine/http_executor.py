"""Step calls over HTTP, following the participant contract (design.md §0.9 and §4).

``POST {base_url}/{action}`` with the attempt's byte-identical JSON body and the headers
``Idempotency-Key``, ``X-Saga-Attempt``, ``X-Saga-Id``, ``X-Tenant-Id`` and ``traceparent`` (with tracing on,
the client span's, below the attempt's span; ``tracestate`` too when there is one). Redirects are
not followed. Each service has its own connection limit; the executor takes a slot (bounded by the
pool-acquire cap), then re-checks the attempt's send deadline and never sends past it, so two attempts
under one idempotency key are never in flight at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import aiohttp
from opentelemetry.trace import TracerProvider

from orchestrator.domain.outcomes import may_have_taken_effect
from orchestrator.engine.calls import CallResult, OutcomeKind, Phase, StepCall, classify
from orchestrator.engine.service_auth import TokenSigner, ssl_context
from orchestrator.observability.instrumentation import client_trace_configs
from orchestrator.settings import ServiceConfig

#: the largest step output accepted (events stay small; the API caps context likewise)
MAX_OUTPUT_BYTES = 256 * 1024


def parse_retry_after(value: str | None, cap: float, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP-date), capped; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), cap)


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to ``limit`` bytes. ``read(n)`` returns what has arrived so far, which for a larger body
    is only its first chunks: read until the end or the limit."""
    body = bytearray()
    while len(body) < limit:
        chunk = await content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class _Service:
    def __init__(self, name: str, config: ServiceConfig, tracer_provider: TracerProvider | None) -> None:
        self.name = name
        self.config = config
        self.signer = TokenSigner.load(name, config.token) if config.token is not None else None
        tls = ssl_context(name, config.tls) if config.tls is not None else None
        # Our own gate in front of aiohttp's pool, so waiting for a connection is bounded and observable.
        self.slots = asyncio.Semaphore(config.pool_limit)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=config.pool_limit,
                limit_per_host=config.pool_limit,
                ssl=tls if tls is not None else True,
            ),
            auto_decompress=True,
            # With tracing on, a client span below the attempt's span; it sends its own traceparent.
            trace_configs=client_trace_configs(tracer_provider) or None,
        )


class HttpExecutor:
    def __init__(
        self, services: Mapping[str, ServiceConfig], *, tracer_provider: TracerProvider | None = None
    ) -> None:
        self._configs = dict(services)
        self._services: dict[str, _Service] = {}
        self._tracer_provider = tracer_provider

    def knows(self, service: str) -> bool:
        return service in self._configs

    def attempt_budget(self, service: str, timeout: float) -> float:
        """Seconds an attempt may take at most before it is sent: the pool-acquire cap plus the timeout."""
        config = self._configs[service]
        return config.pool_acquire_timeout_ms / 1000 + timeout

    def _service(self, name: str) -> _Service:
        service = self._services.get(name)
        if service is None:
            service = self._services[name] = _Service(name, self._configs[name], self._tracer_provider)
        return service

    async def call(self, call: StepCall) -> CallResult:
        if call.service not in self._configs:
            return CallResult(
                OutcomeKind.MISCONFIGURED, None, error="unknown_service", detail=call.service, not_sent=True
            )
        service = self._service(call.service)
        config = service.config
        try:
            async with asyncio.timeout(config.pool_acquire_timeout_ms / 1000):
                await service.slots.acquire()
        except TimeoutError:
            return CallResult(
                OutcomeKind.TRANSIENT,
                None,
                error="pool_exhausted",
                detail=call.service,
                not_sent=True,
                withheld=True,
            )
        try:
            return await self._send(service, call)
        finally:
            service.slots.release()

    async def _send(self, service: _Service, call: StepCall) -> CallResult:
        config = service.config
        remaining = call.send_deadline - time.monotonic()
        # Never send past the deadline: the next attempt may already be allowed to start after it.
        if remaining <= call.timeout * 0.05:
            return CallResult(
                OutcomeKind.TRANSIENT, None, error="not_sent", detail="deadline", not_sent=True, withheld=True
            )
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": call.idempotency_key,
            "X-Saga-Attempt": str(call.attempt),
            "X-Saga-Id": call.saga_id,
            "X-Tenant-Id": call.tenant,
        }
        if call.traceparent:
            headers["traceparent"] = call.traceparent
        if config.auth is not None:
            headers[config.auth.header] = config.auth.value.get_secret_value()
        if service.signer is not None:
            headers[service.signer.settings.header] = f"Bearer {service.signer.token(call)}"
        timeout = aiohttp.ClientTimeout(
            total=min(call.timeout, remaining), sock_connect=config.connect_timeout_ms / 1000
        )
        url = f"{config.base_url}/{call.action}"
        try:
            async with service.session.post(
                url, data=call.body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                body = await _read_capped(response.content, MAX_OUTPUT_BYTES + 1)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), config.max_retry_after_s)
        except TimeoutError:
            return CallResult(OutcomeKind.TRANSIENT, None, error="timeout", detail=url, maybe_effective=True)
        except aiohttp.ClientConnectorError as e:
            # The connection was never established: nothing reached the participant.
            return CallResult(OutcomeKind.TRANSIENT, None, error="connection", detail=str(e), not_sent=True)
        except (aiohttp.ClientError, OSError) as e:
            # Connected, so the request may have been read and carried out before the connection broke.
            return CallResult(
                OutcomeKind.TRANSIENT, None, error="connection", detail=str(e), maybe_effective=True
            )
        kind = classify(status, call.phase, config.outcomes)
        if kind is not OutcomeKind.SUCCEEDED:
            return CallResult(
                kind,
                status,
                error=f"http_{status}",
                detail=body[:512].decode(errors="replace"),
                retry_after=retry_after,
                maybe_effective=call.phase is Phase.ACTION and may_have_taken_effect(status),
            )
        if call.phase is Phase.COMPENSATION:
            return CallResult(OutcomeKind.SUCCEEDED, status)  # a compensation's answer body is not used
        # From here on the participant said it did it: an unusable body suspends the saga (a contract
        # error), but the effect exists and a rollback must undo it.
        if len(body) > MAX_OUTPUT_BYTES:
            return CallResult(
                OutcomeKind.MISCONFIGURED,
                status,
                error="output_too_large",
                detail=f"{url}: 2xx body over {MAX_OUTPUT_BYTES} bytes",
                maybe_effective=True,
            )
        if not body.strip():
            return CallResult(OutcomeKind.SUCCEEDED, status, output=None)
        try:
            output = json.loads(body)
        except ValueError:
            return CallResult(
                OutcomeKind.MISCONFIGURED,
                status,
                error="bad_output",
                detail="2xx body is not JSON",
                maybe_effective=True,
            )
        return CallResult(OutcomeKind.SUCCEEDED, status, output=output)

    async def close(self) -> None:
        for service in self._services.values():
            await service.session.close()
        self._services.clear()
