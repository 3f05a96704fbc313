"""One harness per adapter: the contract suite's single factory hook (``create()``), plus what differs
between a private store and a shared server (``restart()``, ``shared``, timing and size slack).

Adapters are imported inside the harness, so collecting the suite never depends on them.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.eventstore import EventStore, EventStoreError, SubscriptionNotFound

EVENTSTORE_URL = "EVENTSTORE_URL"
LOCAL_SERVER = (
    "EVENTSTORE_URL not set: the KurrentDB lane runs against the local server "
    "(python -m orchestrator.eventstore.server over the embedded store)"
)


class StoreHarness(ABC):
    """Creates stores of one adapter for one test and disposes of them (and of its groups) afterwards."""

    name: ClassVar[str]
    #: Other test runs use the same store at the same time: assert only on what this test wrote.
    shared: ClassVar[bool] = False
    #: Bytes below MAX_APPEND_SIZE (counted as NewEvent.size) under which an append must be accepted.
    append_size_slack: ClassVar[int] = 0
    #: Seconds a redelivery may come after its message timeout (a server checks timeouts on a tick).
    redelivery_slack: ClassVar[float] = 0.5
    #: Whether :meth:`restart` can simulate a process restart.
    can_restart: ClassVar[bool] = False

    def __init__(self) -> None:
        self._stores: list[EventStore] = []
        self._groups: list[str] = []

    async def create(self) -> EventStore:
        """Open a store on this test's data (the same data on every call)."""
        store = await self._open()
        self._stores.append(store)
        return store

    async def restart(self, store: EventStore) -> EventStore | None:
        """Simulate a process restart: close ``store`` and open the same data again.

        ``None`` when the adapter cannot be restarted from a test (``store`` is then left open).
        """
        return None

    def track_group(self, group: str) -> None:
        """Remember a persistent subscription group to delete when the test ends."""
        self._groups.append(group)

    async def dispose(self) -> None:
        try:
            # An embedded store's directory is discarded with tmp_path; a server keeps groups for ever.
            if self.shared and self._groups:
                await self._delete_groups()
        finally:
            for store in reversed(self._stores):
                with suppress(EventStoreError):
                    await store.close()

    async def _delete_groups(self) -> None:
        store = await self._open()  # the test's own stores may be closed by now
        try:
            for group in self._groups:
                with suppress(SubscriptionNotFound):
                    await store.delete_subscription(group)
        finally:
            with suppress(EventStoreError):
                await store.close()

    @abstractmethod
    async def _open(self) -> EventStore: ...


class EmbeddedHarness(StoreHarness):
    name = "embedded"
    can_restart = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self._data_dir = data_dir

    async def _open(self) -> EventStore:
        from orchestrator.eventstore.embedded import EmbeddedEventStore

        store: EventStore = await EmbeddedEventStore.open(self._data_dir)
        return store

    async def restart(self, store: EventStore) -> EventStore | None:
        await store.close()
        return await self.create()


class KurrentHarness(StoreHarness):
    name = "kurrent"
    # One server for the whole session (a live one, or the local one started by the fixtures).
    shared = True
    # The server counts an event type twice (UTF-16) where NewEvent.size counts its UTF-8 bytes once.
    append_size_slack = 4096
    # The server looks for timed-out messages on a one-second clock tick.
    redelivery_slack = 2.0

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url

    async def _open(self) -> EventStore:
        from orchestrator.eventstore.kurrent import open_kurrent_store

        store: EventStore = await open_kurrent_store(self._url)
        return store


class LocalServerHarness(KurrentHarness):
    """The KurrentDB adapter on the local server, which a test may restart (the session's one server:
    tests run one at a time)."""

    can_restart = True

    def __init__(self, server: LocalServer) -> None:
        super().__init__(server.url)
        self._server = server

    async def restart(self, store: EventStore) -> EventStore | None:
        await store.close()
        self._server.restart()
        return await self.create()


class LocalServer:
    """The local KurrentDB-compatible server as a subprocess (never a fork: gRPC objects belong to the
    process and event loop that made them). Requests it refuses are read back from its report file."""

    START_TIMEOUT = 30.0

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.report = directory / "refused.jsonl"
        self._log = directory / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0

    def start(self, port: int = 0) -> str:
        command = [
            sys.executable,
            "-m",
            "orchestrator.eventstore.server",
            "--data-dir",
            str(self.data_dir),
        ]
        command += ["--port", str(port), "--report", str(self.report)]
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, env=dict(os.environ)
            )
        line = self._first_line()
        from orchestrator.eventstore.server import LISTENING

        if not line.startswith(LISTENING):
            self.stop()
            raise RuntimeError(f"local event store server did not start: {line!r}; log: {self.log_tail()}")
        address = line.removeprefix(LISTENING).strip()
        self.port = int(address.rsplit(":", 1)[1])
        self.url = f"esdb://{address}?tls=false"
        return self.url

    @property
    def data_dir(self) -> Path:
        """The embedded store the server serves (open it only while the server is stopped)."""
        return self._directory / "data"

    def restart(self) -> None:
        """Stop the process (gracefully: the store checkpoints and closes) and start it again on the
        same data and port, so that clients holding the URL reconnect to it."""
        self.stop()
        self.start(self.port)

    def _first_line(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._process.stdout], [], [], 0.1)
            if ready:
                return self._process.stdout.readline().decode()
            if self._process.poll() is not None:
                return f"(exited with {self._process.returncode})"
        return "(no line within the start timeout)"

    def refused(self) -> list[dict[str, Any]]:
        """Requests the server refused (unimplemented) or failed on (a bug of the server), so far."""
        if not self.report.exists():
            return []
        return [json.loads(line) for line in self.report.read_text(encoding="utf-8").splitlines() if line]

    def log_tail(self, lines: int = 20) -> str:
        if not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
