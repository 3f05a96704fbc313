"""Steps implemented as in-process callables, registered by (service, action).

They follow the same rules as HTTP participants: the callable gets the attempt's byte-identical request
(parsed) and its idempotency key; it returns the output (JSON-able) for success, raises
:class:`StepRejected` for a business rejection or :class:`StepTransient` for "try again"; any other
exception is a bug in our own code and suspends the saga (never compensation). As over HTTP, a call is not
started past its attempt's send deadline, and one that outlasts the step timeout is abandoned with its
effect unknown.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.engine.calls import CallResult, OutcomeKind, StepCall


class StepRejected(Exception):
    """A business rejection from an in-process step (like HTTP 422)."""


class StepTransient(Exception):
    """A transient failure from an in-process step (like HTTP 503); ``retry_after`` in seconds."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class InProcessRequest:
    saga_id: str
    tenant: str
    step: str
    attempt: int
    idempotency_key: str
    body: Any


Handler = Callable[[InProcessRequest], Awaitable[Any]]


class InProcessExecutor:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def register(self, service: str, action: str, handler: Handler) -> None:
        self._handlers[(service, action)] = handler

    def knows(self, service: str) -> bool:
        return any(s == service for s, _ in self._handlers)

    def handles(self, service: str, action: str) -> bool:
        return (service, action) in self._handlers

    async def call(self, call: StepCall) -> CallResult:
        handler = self._handlers.get((call.service, call.action))
        if handler is None:
            return CallResult(
                OutcomeKind.MISCONFIGURED,
                None,
                error="unknown_action",
                detail=f"{call.service}/{call.action}",
                not_sent=True,
            )
        if call.send_deadline - time.monotonic() <= call.timeout * 0.05:
            return CallResult(
                OutcomeKind.TRANSIENT, None, error="not_sent", detail="deadline", not_sent=True, withheld=True
            )
        request = InProcessRequest(
            call.saga_id, call.tenant, call.step, call.attempt, call.idempotency_key, json.loads(call.body)
        )
        try:
            async with asyncio.timeout(call.timeout):
                output = await handler(request)
        except TimeoutError:
            return CallResult(
                OutcomeKind.TRANSIENT, None, error="timeout", detail=call.action, maybe_effective=True
            )
        except StepRejected as e:
            return CallResult(OutcomeKind.REJECTED, None, error="rejected", detail=str(e))
        except StepTransient as e:
            return CallResult(
                OutcomeKind.TRANSIENT, None, error="transient", detail=str(e), retry_after=e.retry_after
            )
        except Exception as e:
            return CallResult(
                OutcomeKind.CRASHED, None, error="internal", detail=repr(e), maybe_effective=True
            )
        return CallResult(OutcomeKind.SUCCEEDED, 200, output=output)
