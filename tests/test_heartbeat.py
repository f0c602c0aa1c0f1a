"""Role heartbeats in a real Redis, as `mwl-bridge status` shows them."""

from __future__ import annotations

import json
import time

import redis

from bridge.ops.cli import main
from bridge.ops.heartbeat import Heartbeat
from bridge.store.keys import Keys


def test_heartbeat_lives_refreshes_and_leaves(redis_client: redis.Redis, keys: Keys,
                                              redis_url: str, capsys) -> None:  # fmt: skip
    hb = Heartbeat(redis_client, keys, "scp", interval_s=0.05, ttl_s=0.3, instance="h1-7")
    hb.start()
    try:
        assert json.loads(redis_client.get(keys.heartbeat("scp", "h1-7")))["pid"] > 0
        time.sleep(0.5)  # longer than the TTL: only refreshing keeps it
        assert redis_client.exists(keys.heartbeat("scp", "h1-7"))
        assert main(["status", "--json", "--redis-url", redis_url]) == 0
        assert json.loads(capsys.readouterr().out)["instances"] == ["scp:h1-7"]
    finally:
        hb.stop()
    assert not redis_client.exists(keys.heartbeat("scp", "h1-7"))


def test_a_dead_process_expires(redis_client: redis.Redis, keys: Keys) -> None:
    hb = Heartbeat(redis_client, keys, "worker", ttl_s=0.2, instance="gone-1")
    assert hb.beat()
    assert redis_client.pttl(keys.heartbeat("worker", "gone-1")) <= 200
    deadline = time.monotonic() + 5
    while redis_client.exists(keys.heartbeat("worker", "gone-1")):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_role_runtime_serves_health_and_announces_the_role(redis_url: str, redis_client,
                                                          keys) -> None:  # fmt: skip
    import urllib.request

    from redis_server import free_port

    from bridge.core import metrics
    from bridge.core.settings import load_settings
    from bridge.ops.role_runtime import RoleRuntime

    port = free_port()
    settings = load_settings(
        {"redis.url": redis_url, "obs.metrics_port": str(port), "obs.metrics_host": "127.0.0.1"},
        env={},
    )
    rt = RoleRuntime.start(settings, "listener")
    try:
        assert len(redis_client.keys(keys.heartbeat("listener", "*"))) == 1
        metrics.register_readiness("mllp", lambda: True)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert json.loads(resp.read()) == {"ready": True,
                                               "checks": {"redis": True, "mllp": True}}  # fmt: skip
    finally:
        metrics.unregister_readiness("mllp")
        rt.stop()
    assert redis_client.keys(keys.heartbeat("listener", "*")) == []
    assert metrics.readiness() == {}
