"""Requests this server cannot serve: counted, logged, and written to a report file that the test
fixtures read, so a test that depends on something unimplemented fails instead of passing by luck.

Every method of every service the client knows but this server does not implement ends here with
UNIMPLEMENTED — never UNAVAILABLE or another code the client or the adapter would retry for ever.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import structlog

log = structlog.get_logger("orchestrator.eventstore.server")

UNIMPLEMENTED = "unimplemented"
#: an exception no mapping in ``status`` knows: a bug of this server (answered UNKNOWN, as .NET does)
INTERNAL = "internal"


class Accounting:
    def __init__(self, report: Path | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._report = report
        self._lock = threading.Lock()

    def record(self, kind: str, method: str, detail: str = "") -> None:
        self.counts[(kind, method)] += 1
        log.warning("eventstore_server_refused", kind=kind, method=method, detail=detail)
        if self._report is None:
            return
        line = json.dumps({"kind": kind, "method": method, "detail": detail, "at": time.time()})
        # Written (and flushed) before the call is answered: whoever sees the status can see the line.
        with self._lock, self._report.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def total(self, kind: str | None = None) -> int:
        return sum(n for (k, _), n in self.counts.items() if kind is None or k == kind)


class UnimplementedHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The last generic handler: any method no registered service claimed."""

    def __init__(self, accounting: Accounting) -> None:
        self._accounting = accounting

    def service(self, handler_call_details: Any) -> Any:
        method = str(handler_call_details.method)
        accounting = self._accounting

        # stream-stream fits every call shape on the wire; nothing is read, the call ends at once.
        async def refuse(_requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            accounting.record(UNIMPLEMENTED, method)
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"Method {method} is not implemented by this server"
            )
            yield b""  # pragma: no cover - abort raises; this only makes the function a generator

        return grpc.stream_stream_rpc_method_handler(refuse)
