"""Shared fixtures: one real redis-server per test run, flushed before each test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from mllp_harness import mllp  # noqa: F401  (fixture shared by the listener tests)
from redis_server import RedisServer

from bridge.core.settings import RedisSettings, Settings, load_settings
from bridge.scp.server import MwlScp
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore

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


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> WorklistStore:
    return WorklistStore(redis_client, keys)


@pytest.fixture
def start_scp(redis_url: str) -> Iterator[Callable[..., MwlScp]]:
    """Start in-process SCPs on free ports (``scp.<name>=value`` as keyword arguments,
    ``url=`` for another Redis); all are stopped after the test."""
    started: list[MwlScp] = []

    def start(url: str = redis_url, **scp: Any) -> MwlScp:
        flags = {"redis.url": url, "scp.host": "127.0.0.1", "scp.port": 0}
        flags.update({f"scp.{k}": v for k, v in scp.items()})
        server = MwlScp(load_settings(flags, env={}))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace_s=0)
