"""The Redis the Redis-backed tests use: ``PARITY_TEST_REDIS_URL`` (``scripts/test.sh`` sets it,
starting ``redis-server`` when one is installed and none answers), else 127.0.0.1:6379. Where
none answers, those tests are skipped, saying so."""

from __future__ import annotations

import functools
import os

import pytest
import redis
from redis.exceptions import RedisError

REDIS_URL = os.environ.get("PARITY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@functools.cache
def _unavailable() -> str | None:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        return f"no Redis at {REDIS_URL} ({exc}); set PARITY_TEST_REDIS_URL or start redis-server"
    return None


def redis_url() -> str:
    """The test Redis's URL, or the calling test is skipped with the reason."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    return REDIS_URL
