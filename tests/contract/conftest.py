"""Fixtures of the contract suite: one parametrised ``harness`` (and ``store``) per adapter.

Every test in this package runs against the embedded store and through the KurrentDB adapter: against a
live KurrentDB/EventStoreDB server when ``EVENTSTORE_URL`` is set, else against the local server
(``orchestrator.eventstore.server``), started once per session as a subprocess. On the local server a
test fails if the server refused a request it made (unimplemented) or failed on one (a server bug).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.eventstore import EventStore, RecordedEvent
from tests.contract.harness import (
    EVENTSTORE_URL,
    LOCAL_SERVER,
    EmbeddedHarness,
    KurrentHarness,
    LocalServer,
    LocalServerHarness,
    StoreHarness,
)
from tests.contract.support import Collect, Collector, Names


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("eventstore-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=[pytest.param("embedded", id="embedded"), pytest.param("kurrent", id="kurrent")])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreHarness]:
    harness: StoreHarness
    server: LocalServer | None = None
    if request.param == "embedded":
        harness = EmbeddedHarness(tmp_path / "store")
    elif os.environ.get(EVENTSTORE_URL):
        harness = KurrentHarness(os.environ[EVENTSTORE_URL])
    else:
        server = request.getfixturevalue("local_server")
        harness = LocalServerHarness(server)
    refused_before = len(server.refused()) if server is not None else 0
    try:
        yield harness
    finally:
        await harness.dispose()
    if server is not None:
        refused = server.refused()[refused_before:]
        if refused:
            pytest.fail(f"the local event store server refused or failed requests of this test: {refused}")


@pytest.fixture
async def store(harness: StoreHarness) -> EventStore:
    return await harness.create()


@pytest.fixture
def names() -> Names:
    return Names.fresh()


@pytest.fixture
async def collect(harness: StoreHarness) -> AsyncIterator[Collect]:
    """Start a :class:`Collector` on a subscription; every collector is closed before the stores are."""
    collectors: list[Collector] = []

    def start(
        subscription: Any, *, on_event: Callable[[RecordedEvent], Awaitable[None]] | None = None
    ) -> Collector:
        collector = Collector(subscription, on_event=on_event)
        collectors.append(collector)
        return collector

    try:
        yield start
    finally:
        for collector in collectors:
            await collector.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not os.environ.get(EVENTSTORE_URL):
        terminalreporter.write_line(f"contract suite: {LOCAL_SERVER}")
