"""Shared fixtures: one real redis-server per test run, flushed before each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from redis_server import RedisServer

from bridge.keys import Keys
from bridge.settings import RedisSettings, Settings, load_settings

SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session's redis-server, emptied before the test (restarted if a
    previous test stopped it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    return Keys("mwl")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Defaults pointed at the test Redis, ignoring the developer's environment."""
    return load_settings({"redis.url": redis_url}, env={})


@pytest.fixture
def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings(url=redis_url)
