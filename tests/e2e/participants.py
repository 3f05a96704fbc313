"""Real HTTP participants on loopback (aiohttp test servers) that follow the participant contract and can
be told to misbehave, recording every call they receive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True)
class Received:
    service: str
    action: str
    key: str
    attempt: int
    body: bytes
    #: the W3C trace context headers as sent ("" when absent)
    traceparent: str = ""
    tracestate: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Behaviour = Callable[[Received, int], "web.StreamResponse | None"]


@dataclass
class Participants:
    """One server; each service lives under ``/{service}``. ``script[(service, action)]`` is a list of
    answers used in turn (the last one repeats): an int status, "ok", "slow:<seconds>", "text:<body>" (a 2xx
    whose body is not JSON), or "reset"."""

    script: dict[tuple[str, str], list[str | int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    server: TestServer | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: called with every call as it arrives (tests observe the engine at that moment)
    observer: Callable[[Received], None] | None = None

    def url(self, service: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/{service}"

    def calls(self, service: str | None = None, action: str | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if (service is None or r.service == service) and (action is None or r.action == action)
        ]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        service, action = request.match_info["service"], request.match_info["action"]
        body = await request.read()
        got = Received(
            service,
            action,
            request.headers.get("Idempotency-Key", ""),
            int(request.headers.get("X-Saga-Attempt", "0")),
            body,
            request.headers.get("traceparent", ""),
            request.headers.get("tracestate", ""),
        )
        self.received.append(got)
        self.changed.set()
        if self.observer is not None:
            self.observer(got)
        answers = self.script.get((service, action), ["ok"])
        n = len(self.calls(service, action)) - 1
        answer = answers[min(n, len(answers) - 1)]
        if isinstance(answer, int):
            return web.json_response({"status": answer}, status=answer)
        if answer == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if answer.startswith("text:"):
            # Done, but answered with a body that is not JSON.
            return web.Response(text=answer.removeprefix("text:"), status=200)
        if answer.startswith("slow:"):
            await asyncio.sleep(float(answer.split(":", 1)[1]))
        return web.json_response({"done": action, "key": got.key})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{service}/{action}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
