"""The multi-process harness: the roles as separate processes (``orchestrator.dev.Deployment``) on a store
chosen by parameter, engines tuned for tests, participants served from the test process, and what a test
reads back from the processes (their node ids and metrics) and from the store (the saga histories).

Stores (the ``store`` fixture's parameters): ``local-server``, the KurrentDB-compatible server as its own
process; ``kurrentdb`` when ``EVENTSTORE_URL`` names a real server (shared: everything here is filtered to
what the test itself started). A later store (PostgreSQL) adds its ``StoreProcess`` here.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.dev import Deployment, ExternalStore, LocalServer, StoreProcess, Topology
from orchestrator.eventstore import StreamNotFound
from orchestrator.eventstore.types import RecordedEvent
from orchestrator.records.streams import saga_stream
from tests.system.service import outside_settings

EVENTSTORE_URL = "EVENTSTORE_URL"
#: the engine's settings for tests: short kicks and deadline slack, deliveries back soon after a crash
ENGINE_ENV = {
    "SAGA_ENGINE__KICK_MS": "500",
    "SAGA_ENGINE__DEADLINE_SLACK_MS": "300",
    "SAGA_ENGINE__MESSAGE_TIMEOUT_S": "2",
    "SAGA_ENGINE__SHUTDOWN_GRACE_S": "5",
    "SAGA_LOG_FORMAT": "json",
    "SAGA_LOG_LEVEL": "WARNING",
}
ACQUIRE_CAP_MS = 200


def stores() -> list[Any]:
    """The stores a deployment test runs on."""
    return [
        pytest.param("local-server", id="local-server"),
        pytest.param(
            "kurrentdb",
            id="kurrentdb",
            marks=pytest.mark.skipif(
                not os.environ.get(EVENTSTORE_URL), reason=f"{EVENTSTORE_URL} is not set: no real server"
            ),
        ),
    ]


def store_process(name: str) -> StoreProcess:
    return ExternalStore(os.environ[EVENTSTORE_URL]) if name == "kurrentdb" else LocalServer()


class LogFiles:
    """Each process's lines in ``directory/NAME.log`` (read one when a test fails)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, line: str) -> None:
        with (self.directory / f"{name}.log").open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / f"{name}.log"
        return "\n".join(path.read_text(encoding="utf-8").splitlines()[-lines:]) if path.exists() else ""


def deployment(
    directory: Path,
    store: StoreProcess,
    services: Mapping[str, str],
    *,
    topology: Topology,
    **environment: str,
) -> tuple[Deployment, LogFiles]:
    """Roles on ``store`` calling ``services`` (name -> base URL), in a consumer group of their own."""
    logs = LogFiles(directory / "logs")
    env = {
        **ENGINE_ENV,
        "SAGA_ENGINE__GROUP": f"orchestrator-{uuid.uuid4().hex[:8]}",
        **environment,
    }
    registry = {n: {"base_url": u, "pool_acquire_timeout_ms": ACQUIRE_CAP_MS} for n, u in services.items()}
    return (
        Deployment(
            directory,
            topology=topology,
            store=store,
            services=registry,
            demo=False,
            environment=env,
            # The harness's environment, not the developer's: no SAGA_* setting of theirs reaches a role.
            base_environment=outside_settings(),
            sink=logs,
        ),
        logs,
    )


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples on one process's ``/metrics`` whose labels include ``labels``."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m["value"])
    return total


async def node_id(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health/cluster") as response:
        body = await response.json()
    return str(body["node"]["node_id"])


async def histories(store_url: str, saga_ids: Iterable[str]) -> dict[str, list[RecordedEvent]]:
    """The streams of these sagas, read over the store's client protocol (as a separate reader would)."""
    from orchestrator.eventstore.kurrent import open_kurrent_store

    store = await open_kurrent_store(store_url)
    try:
        out: dict[str, list[RecordedEvent]] = {}
        for saga_id in saga_ids:
            try:
                out[saga_id] = list(await store.read_stream(saga_stream(saga_id)))
            except StreamNotFound:
                out[saga_id] = []
        return out
    finally:
        await store.close()


async def eventually(
    condition: Callable[[], Any], *, within: float, every: float = 0.25, what: str = "the condition"
) -> Any:
    """Poll an async ``condition`` until it returns something truthy (bounded by ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {within:.0f} s")
        await asyncio.sleep(every)  # polling other processes' progress, bounded by the deadline


def writers(history: Sequence[RecordedEvent]) -> list[str]:
    """The ``actor`` of each event's metadata, in order (engines write as ``engine:NODE``)."""
    import json

    return [str(json.loads(e.metadata or b"{}").get("actor", "")) for e in history]


def print_logs(deploy: Deployment, logs: LogFiles) -> None:
    """The tail of every process's log (when a test fails, the cause is often in another process)."""
    for name in ("eventstore", *sorted(deploy.roles)):
        print(f"--- {name}\n{logs.tail(name)}")
