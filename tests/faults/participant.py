"""Contract-following participants with a ledger, on a real aiohttp server on loopback, that misbehave on
purpose (seeded, or scripted per (service, action)) and record every call.

The contract (design.md §0.9): one result per idempotency key — a repeat gets the recorded answer and
nothing is applied again; an action applies an effect filed under its key; a compensation undoes the
effect of every action key it names (``action_idempotency_keys``, else the single
``action_idempotency_key``) and leaves a tombstone for each key not seen yet, so a later action under that
key is refused with 422. A second call under a key still being worked on gets 409 ("in flight").

Faults, per call: ``busy`` (503 before doing anything), ``reject`` (422, a business rejection; only for
the actions listed as rejectable, only for a key not seen before), ``hang`` (sleep past the step timeout,
then do the work), and, after the work is done, ``bad_body`` (2xx with a body that is not JSON),
``oversize`` (2xx with a body over 256 KiB), ``reset_after`` (close the connection without an answer) and
``gateway`` (502 or 504 as a gateway in front of the service would). A fault is counted only when it
actually shaped a call's handling (``bad_body`` drawn for a 422 answer is not).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.faults.checker import Call, Effect

#: larger than the engine's limit on a step's output (256 KiB)
OVERSIZE_BYTES = 300 * 1024


class ParticipantFault(StrEnum):
    BAD_BODY = "bad_body"
    OVERSIZE = "oversize"
    RESET_AFTER = "reset_after"
    GATEWAY = "gateway"
    HANG = "hang"
    BUSY = "busy"
    REJECT = "reject"


@dataclass(frozen=True)
class ParticipantRates:
    """Probability of each fault per call (they are exclusive; the sum stays below 1)."""

    bad_body: float = 0.0
    oversize: float = 0.0
    reset_after: float = 0.0
    gateway: float = 0.0
    hang: float = 0.0
    busy: float = 0.0
    reject: float = 0.0
    #: how long a hanging call sleeps before it does its work: longer than any step timeout in use
    hang_s: float = 1.5


NO_FAULTS = ParticipantRates()


class FaultParticipants:
    """One server; each service lives under ``/{service}`` and each action under ``/{service}/{action}``."""

    def __init__(
        self,
        seed: int = 0,
        rates: ParticipantRates = NO_FAULTS,
        *,
        rejectable: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.random = random.Random(seed)
        self.rates = rates
        self.rejectable = set(rejectable)
        #: faults to inject, in turn, on the next calls to (service, action); None means "no fault"
        self.script: dict[tuple[str, str], deque[ParticipantFault | None]] = {}
        self.calls: list[Call] = []
        #: the ledger: action key -> its effect
        self.effects: dict[str, Effect] = {}
        #: one result per idempotency key: (status, JSON body)
        self.results: dict[str, tuple[int, bytes]] = {}
        self.tombstones: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self._working: set[str] = set()
        self._work: set[asyncio.Future[web.StreamResponse]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        #: called with each call as it arrives, before it is handled (tests act at that moment)
        self.observer: Callable[[Call], None] | None = None
        self.server: TestServer | None = None

    # --- set-up ------------------------------------------------------------------------------------------
    def inject(self, service: str, action: str, *faults: ParticipantFault | None) -> None:
        """Script the next calls to ``service``/``action`` (one entry per call, then the seeded rates)."""
        self.script.setdefault((service, action), deque()).extend(faults)

    async def idle(self, within: float) -> None:
        """Return once no call is being worked on (hanging ones included); TimeoutError after ``within``."""
        await asyncio.wait_for(self._idle.wait(), within)

    def url(self, service: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/{service}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{service}/{action}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        for work in list(self._work):
            work.cancel()
        if self._work:
            await asyncio.wait(set(self._work))

    # --- one call ----------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        service, action = request.match_info["service"], request.match_info["action"]
        body = await request.read()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        call = Call(
            service=service,
            action=action,
            saga_id=request.headers.get("X-Saga-Id") or str(payload.get("saga_id", "")),
            key=request.headers.get("Idempotency-Key", ""),
            attempt=int(request.headers.get("X-Saga-Attempt", "0")),
            body=body,
            compensation="action_idempotency_key" in payload or "action_idempotency_keys" in payload,
        )
        self.calls.append(call)
        self.in_flight += 1
        self._idle.clear()
        if self.observer is not None:
            self.observer(call)
        # The test server cancels a handler whose client went away; a real service finishes its work.
        work = asyncio.ensure_future(self._serve(request, call, payload))
        self._work.add(work)
        work.add_done_callback(lambda _: self._finished(call, work))
        return await asyncio.shield(work)

    def _finished(self, call: Call, work: asyncio.Future[web.StreamResponse]) -> None:
        self._work.discard(work)
        call.done = True
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def _serve(self, request: web.Request, call: Call, payload: dict[str, Any]) -> web.StreamResponse:
        if not call.key or not payload:
            return self._answer(call, 400, {"error": "no idempotency key or no JSON body"})
        if call.key in self._working:
            return self._answer(call, 409, {"error": "this idempotency key is in flight"})
        fault = self._choose(call.service, call.action)
        if fault is ParticipantFault.BUSY:
            return self._answer(call, 503, {"error": "busy"}, fault)
        if fault is ParticipantFault.HANG:
            self._working.add(call.key)
            try:
                await asyncio.sleep(self.rates.hang_s)
            finally:
                self._working.discard(call.key)
            self._hit(call, fault)
        # The work itself: no await from here to the answer, so it is atomic with respect to other calls.
        if call.compensation:
            status, answer = self._compensate(call, payload)
        else:
            status, answer = self._act(call, fault)
        ok = 200 <= status < 300
        if fault is ParticipantFault.BAD_BODY and ok and not call.compensation:
            self._hit(call, fault)
            return self._send(request, call, web.Response(status=status, text=f"{call.action} OK"))
        if fault is ParticipantFault.OVERSIZE and ok and not call.compensation:
            self._hit(call, fault)
            pad = json.dumps({"ok": True, "pad": "x" * OVERSIZE_BYTES})
            return self._send(request, call, web.Response(status=status, text=pad))
        if fault is ParticipantFault.RESET_AFTER:
            self._hit(call, fault)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client: the connection is gone
        if fault is ParticipantFault.GATEWAY:
            self._hit(call, fault)
            status = self.random.choice((502, 504))
            return self._send(request, call, web.json_response({"error": "bad gateway"}, status=status))
        return self._send(
            request, call, web.Response(status=status, body=answer, content_type="application/json")
        )

    def _choose(self, service: str, action: str) -> ParticipantFault | None:
        queue = self.script.get((service, action))
        if queue:
            return queue.popleft()
        roll = self.random.random()
        for kind in ParticipantFault:
            rate: float = getattr(self.rates, kind.value)
            if roll < rate:
                return kind
            roll -= rate
        return None

    def _hit(self, call: Call, fault: ParticipantFault) -> None:
        call.fault = fault.value
        self.counts[fault.value] += 1

    def _act(self, call: Call, fault: ParticipantFault | None) -> tuple[int, bytes]:
        key = call.key
        if key in self.results:
            return self.results[key]  # a repeat: the recorded answer, nothing applied again
        if key in self.tombstones:
            result = (422, _json({"error": "compensated before it arrived", "key": key}))
        elif fault is ParticipantFault.REJECT and (call.service, call.action) in self.rejectable:
            self._hit(call, fault)
            result = (422, _json({"error": "rejected", "key": key}))
        else:
            self.effects[key] = Effect(key, call.service, call.action, call.saga_id, call.step or "")
            call.applied = True
            result = (200, _json({"ok": True, "service": call.service, "action": call.action, "key": key}))
        self.results[key] = result
        return result

    def _compensate(self, call: Call, payload: dict[str, Any]) -> tuple[int, bytes]:
        if call.key in self.results:
            return self.results[call.key]
        names = payload.get("action_idempotency_keys") or [payload.get("action_idempotency_key")]
        undone: list[str] = []
        for name in (n for n in names if isinstance(n, str)):
            effect = self.effects.get(name)
            if effect is not None:
                if not effect.undone:
                    effect.undone_by = call.key
                    undone.append(name)
            elif name not in self.results:
                self.tombstones.add(name)  # the action has not arrived (or is still in flight): refuse it
        call.undone = tuple(undone)
        result = (200, _json({"undone": undone, "key": call.key}))
        self.results[call.key] = result
        return result

    def _answer(
        self, call: Call, status: int, body: dict[str, Any], fault: ParticipantFault | None = None
    ) -> web.Response:
        if fault is not None:
            self._hit(call, fault)
        call.status = status
        return web.json_response(body, status=status)

    @staticmethod
    def _send(request: web.Request, call: Call, response: web.Response) -> web.Response:
        # A client that gave up (its timeout passed during a hang) never sees this answer.
        transport = request.transport
        call.status = None if transport is None or transport.is_closing() else response.status
        return response


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
