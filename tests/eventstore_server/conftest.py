"""One local server (a subprocess) for this package, and a kurrentdbclient client per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from kurrentdbclient import AsyncKurrentDBClient

from tests.contract.harness import LocalServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    local = LocalServer(tmp_path_factory.mktemp("eventstore-server-checks"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
async def client(server: LocalServer) -> AsyncIterator[AsyncKurrentDBClient]:
    client = AsyncKurrentDBClient(server.url)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()
