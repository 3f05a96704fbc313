"""Fixtures of the contract suite: one parametrised ``harness`` (and ``store``) per adapter.

Every test in this package runs against the embedded store, and against a live KurrentDB/EventStoreDB
server when ``EVENTSTORE_URL`` is set (skipped with a visible reason otherwise).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.eventstore import EventStore, RecordedEvent
from tests.contract.harness import (
    EVENTSTORE_URL,
    NO_SERVER,
    EmbeddedHarness,
    KurrentHarness,
    StoreHarness,
)
from tests.contract.support import Collect, Collector, Names


@pytest.fixture(
    params=[
        pytest.param("embedded", id="embedded"),
        pytest.param(
            "kurrent",
            id="kurrent",
            marks=pytest.mark.skipif(not os.environ.get(EVENTSTORE_URL), reason=NO_SERVER),
        ),
    ]
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreHarness]:
    harness: StoreHarness
    if request.param == "embedded":
        harness = EmbeddedHarness(tmp_path / "store")
    else:
        harness = KurrentHarness(os.environ[EVENTSTORE_URL])
    try:
        yield harness
    finally:
        await harness.dispose()


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
        terminalreporter.write_line(f"contract suite: {NO_SERVER}")
