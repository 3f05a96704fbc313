"""A minimal OTLP/HTTP trace receiver for the benchmarks: ``python -m bench.otlp_receiver [--port N]``.

``POST /v1/traces`` decodes the protobuf ``ExportTraceServiceRequest`` (opentelemetry-proto; gzip or
deflate bodies too), counts its spans by the resource's ``service.name`` and the span's name, and answers
an empty ``ExportTraceServiceResponse``, as a collector does; ``GET /counts`` returns what it has received
so far as JSON. It prints one line,
``LISTENING host:port``, when it accepts connections.

It runs as its own process (``ReceiverProcess``), so decoding is not charged to the process measured,
as a collector's work would not be.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import select
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ROOT = Path(__file__).resolve().parent.parent
LISTENING = "LISTENING "
START_TIMEOUT_S = 30.0
_PROTOBUF = "application/x-protobuf"


@dataclass
class Received:
    requests: int = 0
    spans: int = 0
    body_bytes: int = 0
    #: (service.name, span name) -> spans
    by_name: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: int = 0


RECEIVED = web.AppKey("received", Received)


def _body(raw: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


async def export(request: web.Request) -> web.Response:
    received = request.app[RECEIVED]
    raw = await request.read()
    try:
        message = ExportTraceServiceRequest.FromString(
            _body(raw, request.headers.get("Content-Encoding", "").lower())
        )
    except Exception as e:  # a malformed body: counted, and answered as a collector would (400)
        received.rejected += 1
        raise web.HTTPBadRequest(text=f"not an ExportTraceServiceRequest: {e}") from e
    received.requests += 1
    received.body_bytes += len(raw)
    for resource_spans in message.resource_spans:
        service = next(
            (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
        )
        for scope_spans in resource_spans.scope_spans:
            received.spans += len(scope_spans.spans)
            received.by_name.update((service, span.name) for span in scope_spans.spans)
    reply = ExportTraceServiceResponse().SerializeToString()
    return web.Response(body=reply, content_type=_PROTOBUF)


async def counts(request: web.Request) -> web.Response:
    r = request.app[RECEIVED]
    by_service: dict[str, dict[str, int]] = {}
    for (service, name), n in r.by_name.items():
        by_service.setdefault(service, {})[name] = n
    return web.json_response(
        {
            "requests": r.requests,
            "spans": r.spans,
            "body_bytes": r.body_bytes,
            "rejected": r.rejected,
            "by_service": by_service,
        }
    )


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    app[RECEIVED] = Received()
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/counts", counts)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"{LISTENING}{host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


class ReceiverProcess:
    """The receiver as a subprocess on a free port; ``endpoint`` is its base URL (the OTLP setting's
    shape: the exporter adds ``/v1/traces``), ``cpu_s()`` what it has used so far."""

    def __init__(self, log_path: Path) -> None:
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.otlp_receiver", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,  # bench is not an installed package: found from the checkout
        )
        line = self._first_line()
        if not line.startswith(LISTENING):
            self.stop()
            raise RuntimeError(f"the OTLP receiver did not start: {line!r} (log: {log_path})")
        self.endpoint = f"http://{line.removeprefix(LISTENING).strip()}"

    def _first_line(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.1)[0]:
                return self.process.stdout.readline().decode()
            if self.process.poll() is not None:
                return f"(exited with {self.process.returncode})"
        return "(no line within the start timeout)"

    async def counts(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.endpoint}/counts") as response:
            response.raise_for_status()
            found: dict[str, Any] = await response.json()
            return found

    def cpu_s(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


@contextlib.contextmanager
def receiver_process(log_path: Path) -> Iterator[ReceiverProcess]:
    receiver = ReceiverProcess(log_path)
    try:
        yield receiver
    finally:
        receiver.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
