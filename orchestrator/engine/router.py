"""Routes a step call to the in-process handler registered for its (service, action), else over HTTP."""

from __future__ import annotations

from orchestrator.engine.calls import CallResult, OutcomeKind, StepCall
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.inprocess import InProcessExecutor


class ExecutorRouter:
    def __init__(self, http: HttpExecutor | None = None, local: InProcessExecutor | None = None) -> None:
        self.http = http
        self.local = local or InProcessExecutor()

    def knows(self, service: str) -> bool:
        """Whether definitions may name ``service`` (registration rejects unknown services)."""
        return self.local.knows(service) or (self.http is not None and self.http.knows(service))

    async def call(self, call: StepCall) -> CallResult:
        if self.local.handles(call.service, call.action):
            return await self.local.call(call)
        if self.http is not None and self.http.knows(call.service):
            return await self.http.call(call)
        return CallResult(
            OutcomeKind.MISCONFIGURED, None, error="unknown_service", detail=call.service, not_sent=True
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
