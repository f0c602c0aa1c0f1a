"""Metrics endpoint on real sockets: counters after traffic, Redis state, health, readiness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from bridge.core import metrics
from bridge.intake import deadletter
from bridge.intake.deadletter import DeadLetter
from bridge.ops import redis_metrics
from bridge.store.item import SPS, WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore


def item(n: int, status: str = "SCHEDULED") -> WorklistItem:
    return WorklistItem(
        item_id=f"it{n}",
        attrs={
            "PatientID": f"P{n}",
            SPS: [
                {
                    "ScheduledProcedureStepStartDate": "20260705",
                    "ScheduledProcedureStepStartTime": "101500",
                    "Modality": "CT",
                    "ScheduledStationAETitle": "CT1",
                    "ScheduledProcedureStepStatus": status,
                }
            ],
        },
    )


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def server(redis_client: redis.Redis, keys: Keys) -> Iterator[metrics.MetricsServer]:
    srv = redis_metrics.serve("127.0.0.1", 0, redis_client, keys)
    yield srv
    srv.close()
    metrics.unregister_readiness("redis")


def test_metrics_after_traffic(server, redis_client: redis.Redis, keys: Keys) -> None:
    base = f"http://127.0.0.1:{server.port}"
    _, before = get(base + "/metrics")
    acks_before = samples(before).get(("mwl_acks_total", (("code", "AA"),)), 0.0)

    metrics.MESSAGES_RECEIVED.labels(message_type="ORM^O01").inc(3)
    metrics.ACKS.labels(code="AA").inc(2)
    metrics.ACKS.labels(code="AR").inc()
    metrics.FRAMES_REJECTED.labels(reason="too_large").inc()
    metrics.MAPPING_FAILURES.labels(reason="required_field").inc()
    metrics.CFIND_REQUESTS.labels(status="success").inc()
    metrics.CFIND_DURATION.observe(0.003)
    metrics.ASSOCIATIONS_OPEN.inc()

    store = WorklistStore(redis_client, keys)
    store.upsert(item(1))
    store.upsert(item(2))
    store.upsert(item(3, status="COMPLETED"))
    deadletter.put(redis_client, keys, DeadLetter(raw=b"MSH|junk", reason="no PID", stage="worker"))
    q = Queue(keys.queue_name(), connection=redis_client)
    q.enqueue("builtins.len", "abc")
    q.enqueue("builtins.len", "de")
    redis_client.rpush(keys.ingest_order, "m1", "m2", "m3")

    status, text = get(base + "/metrics")
    # The gauge is process-wide: undo the fake association, or a later test that waits
    # for it to return to 0 (test_scp) fails when the whole suite runs in one process.
    metrics.ASSOCIATIONS_OPEN.dec()
    assert status == 200
    got = samples(text)
    assert got[("mwl_acks_total", (("code", "AA"),))] == acks_before + 2
    assert got[("mwl_messages_received_total", (("message_type", "ORM^O01"),))] >= 3
    assert got[("mwl_frames_rejected_total", (("reason", "too_large"),))] >= 1
    assert got[("mwl_mapping_failures_total", (("reason", "required_field"),))] >= 1
    assert got[("mwl_cfind_requests_total", (("status", "success"),))] >= 1
    assert got[("mwl_cfind_duration_seconds_bucket", (("le", "0.005"),))] >= 1
    assert got[("mwl_associations_open", ())] >= 1
    assert got[("mwl_redis_up", ())] == 1
    assert got[("mwl_queue_depth", (("queue", "mwl-ingest"),))] == 2
    assert got[("mwl_ingest_backlog", ())] == 3
    assert got[("mwl_rq_jobs", (("queue", "mwl-ingest"), ("state", "failed")))] == 0
    assert got[("mwl_workers_alive", (("queue", "mwl-ingest"),))] == 0
    assert got[("mwl_worklist_items", (("status", "SCHEDULED"),))] == 2
    assert got[("mwl_worklist_items", (("status", "COMPLETED"),))] == 1
    assert got[("mwl_worklist_items", (("status", "ARRIVED"),))] == 0  # every defined term
    assert got[("mwl_deadletters", ())] == 1


def test_health_and_readiness(server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert get(base + "/healthz") == (200, "ok\n")
    status, body = get(base + "/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True, "checks": {"redis": True}}

    bound = {"value": False}
    metrics.register_readiness("mllp", lambda: bound["value"])
    try:
        status, body = get(base + "/readyz")
        assert status == 503
        assert json.loads(body)["checks"] == {"redis": True, "mllp": False}
        bound["value"] = True
        assert get(base + "/readyz")[0] == 200
    finally:
        metrics.unregister_readiness("mllp")
    assert get(base + "/nothing")[0] == 404


def test_redis_down_makes_readyz_503_and_up_0(keys: Keys) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis_server import free_port

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    srv = redis_metrics.serve("127.0.0.1", 0, dead, keys)
    try:
        base = f"http://127.0.0.1:{srv.port}"
        assert get(base + "/healthz")[0] == 200
        status, body = get(base + "/readyz")
        assert status == 503 and json.loads(body)["checks"]["redis"] is False
        got = samples(get(base + "/metrics")[1])
        assert got[("mwl_redis_up", ())] == 0
        assert ("mwl_queue_depth", (("queue", "mwl-ingest"),)) not in got
    finally:
        srv.close()
        metrics.unregister_readiness("redis")


def test_counters_of_child_processes_are_summed(tmp_path: Path) -> None:
    """What the supervisor serves under `mwl-bridge run`: the sum over its children."""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    code = (
        "from bridge.core import metrics;"
        "metrics.ACKS.labels(code='AA').inc(2);"
        "metrics.CFIND_DURATION.observe(0.01)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    srv = metrics.MetricsServer("127.0.0.1", 0, metrics.aggregate_registry(str(tmp_path))).start()
    try:
        got = samples(get(f"http://127.0.0.1:{srv.port}/metrics")[1])
        assert got[("mwl_acks_total", (("code", "AA"),))] == 4
        assert got[("mwl_cfind_duration_seconds_count", ())] == 2
    finally:
        srv.close()


def test_metrics_port_in_use_is_a_config_error(capsys) -> None:
    import socket

    from bridge.ops.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["run", "--metrics-port", str(port), "--redis-url", "redis://127.0.0.1:1/0",
                     "--workers", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mwl-bridge: invalid setting obs.metrics_port: cannot listen")
