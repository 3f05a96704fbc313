"""Saga benchmark over gRPC: the production path, with the store in another process.

The local KurrentDB-compatible server (``python -m orchestrator.eventstore.server``, the embedded store
behind the KurrentDB gRPC protocol) runs as its own subprocess; this process runs the engine, the commands
and the clients exactly as ``bench.sagas`` does, but on the KurrentDB adapter, so every append, read,
delivery and ack crosses gRPC. The embedded variant runs at the same levels in the same run, so the cost of
the hop is a measured ratio, and so does the store's own bound over gRPC: the saga's commit shape appended
through the adapter by as many concurrent writers, with no engine.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.sagas import THROUGHPUT_HEADER, Counters, Rig, closed_loop, throughput_row
from orchestrator.eventstore import NO_STREAM, Expected, NewEvent, new_events
from orchestrator.eventstore.kurrent import open_kurrent_store
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.server import LISTENING

#: events per append of one saga: SagaStarted, StepStarted, (outcome + next intent) x2, outcome + end
SHAPE = (1, 1, 2, 2, 2)
START_TIMEOUT_S = 30.0


class CountingStore:
    """The port over ``inner``, counting appends and their events (the server's own counters are in
    another process)."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.appends = 0
        self.events = 0

    async def append(self, stream: str, events: Sequence[NewEvent], *, expected: Expected) -> Any:
        result = await self.inner.append(stream, events, expected=expected)
        self.appends += 1
        self.events += len(events)
        return result

    def counters(self) -> Counters:
        return Counters(self.appends, self.events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def process_cpu_s(pid: int) -> float:
    """The CPU seconds process ``pid`` has used so far (all its threads, user + system)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class ServerProcess:
    """The local server as a subprocess on a free port; ``cpu_s()`` is what it has used so far."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._log = (directory / "server.log").open("wb")
        command = [sys.executable, "-m", "orchestrator.eventstore.server"]
        self.process = subprocess.Popen(
            [*command, "--data-dir", str(directory / "data"), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        line = self._first_line()
        if not line.startswith(LISTENING):
            self.stop()
            raise RuntimeError(f"the event store server did not start: {line!r} (log: {directory})")
        self.url = f"esdb://{line.removeprefix(LISTENING).strip()}?tls=false"

    def _first_line(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.1)[0]:
                return self.process.stdout.readline().decode()
            if self.process.poll() is not None:
                return f"(exited with {self.process.returncode})"
        return "(no line within the start timeout)"

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

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


@contextmanager
def server_process(directory: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(directory)
    try:
        yield server
    finally:
        server.stop()


def _opener(url: str) -> Callable[[], Awaitable[tuple[EventStore, Callable[[], Counters]]]]:
    async def open_store() -> tuple[EventStore, Callable[[], Counters]]:
        store = CountingStore(await open_kurrent_store(url))
        return store, store.counters  # type: ignore[return-value]  # the port, by delegation

    return open_store


async def grpc_bound(url: str, writers: int, seconds: float) -> dict[str, Any]:
    """The store's ceiling over gRPC: ``writers`` concurrent loops, each appending one saga's commit shape
    (a new stream with NO_STREAM, then exact revisions) through the adapter, nothing else."""
    store = await open_kurrent_store(url)
    data = b'{"step":"reserve-inventory","attempt":1,"output":{"ok":true}}' * 2
    meta = b'{"tenant":"bench"}' * 4
    counter = itertools.count()
    sagas = appends = 0
    stop_at = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal sagas, appends
        while time.perf_counter() < stop_at:
            stream = f"bound-{next(counter):09d}"
            revision = -1  # the adapter's appends do not say the stream's revision: count it here
            for n in SHAPE:
                expected: Expected = NO_STREAM if revision < 0 else revision
                events = new_events(stream, expected, [("StepSucceeded", data, meta)] * n)
                await store.append(stream, events, expected=expected)
                revision += n
                appends += 1
            sagas += 1

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - t0
    finally:
        await store.close()
    return {
        "writers": writers,
        "seconds": elapsed,
        "sagas_per_s": sagas / elapsed,
        "appends_per_s": appends / elapsed,
    }


async def _measure(root: Path, quick: bool) -> dict[str, Any]:
    # Shorter and lower than bench.sagas (8 s, up to 512): over gRPC a level needs one saga per client
    # at least, and the whole benchmark stays within about 40 s, so it is part of the default run.
    seconds = 0.6 if quick else 6.0
    levels = (8,) if quick else (64, 256)
    context = {"order_id": "o-1", "amount": 99.99}
    out: dict[str, Any] = {"throughput": [], "config": {"seconds_per_level": seconds}}
    with server_process(root / "server") as server:
        for inflight in levels:
            async with Rig(root / f"embedded-{inflight}", decline=False) as rig:
                await closed_loop(rig, min(inflight, 16), 0.3, {"warm": True})
                figures = await closed_loop(rig, inflight, seconds, context)
            out["throughput"].append({"variant": "ok", **figures})
            async with Rig(root / f"grpc-{inflight}", decline=False, open_store=_opener(server.url)) as rig:
                await closed_loop(rig, min(inflight, 16), 0.3, {"warm": True})
                cpu0 = server.cpu_s()
                figures = await closed_loop(rig, inflight, seconds, context)
                figures["server_cpu_ms_per_saga"] = (server.cpu_s() - cpu0) * 1000 / figures["sagas"]
            out["throughput"].append({"variant": "ok(grpc)", **figures})
        out["bound"] = await grpc_bound(server.url, levels[-1], seconds / 2)
    top = {t["variant"]: t for t in out["throughput"] if t["inflight"] == levels[-1]}
    out["bound"]["ratio"] = top["ok(grpc)"]["sagas_per_s"] / out["bound"]["sagas_per_s"]
    out["grpc_vs_embedded"] = top["ok(grpc)"]["sagas_per_s"] / top["ok"]["sagas_per_s"]
    return out


def run(*, quick: bool, data_root: Path) -> dict[str, Any]:
    data_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="grpc-", dir=data_root))
    try:
        result = asyncio.run(_measure(root, quick))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = {"cores": os.cpu_count(), "disk": str(data_root.resolve())}
    result["mode"] = "quick" if quick else "full"
    return result


def render(r: dict[str, Any]) -> str:
    out = [
        f"Saga benchmark over gRPC ({r['mode']} mode): the same saga and engine on the KurrentDB adapter, "
        f"the store in the local server's own process (embedded store behind gRPC), beside the embedded "
        f"store in-process; {r['machine']['cores']} cores",
        "",
        THROUGHPUT_HEADER,
    ]
    out += [throughput_row(t) for t in r["throughput"]]
    b = r["bound"]
    out += [""]
    out += [
        f"server process at {t['inflight']} in flight: {t['server_cpu_ms_per_saga']:.2f} cpu ms/saga"
        for t in r["throughput"]
        if "server_cpu_ms_per_saga" in t
    ]
    out += [
        f"store bound over gRPC (the commit shape appended by {b['writers']} concurrent writers through the "
        f"adapter, no engine): {b['sagas_per_s']:,.0f} sagas/s, {b['appends_per_s']:,.0f} appends/s; "
        f"ok(grpc) at the top level is {b['ratio']:.2f} of it",
        f"ok(grpc) / ok (embedded) at the top level: {r['grpc_vs_embedded']:.2f}",
    ]
    return "\n".join(out)
