"""Fixtures of the integration tests."""

from tests.redis_fixtures import redis_prefix, redis_server, redis_url, views

__all__ = ["redis_prefix", "redis_server", "redis_url", "views"]
