"""The intake contract the workers, dead-letter replay and tools rely on."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import pytest
import redis
from rq import Queue

from bridge.core.errors import StoreUnavailable
from bridge.intake.submit import (
    INTERNAL_MPPS,
    JOB_FUNC,
    AppResult,
    IntakeRecord,
    SubmitKind,
    queue_internal,
    submit,
)
from bridge.store.keys import Keys

RAW = b"MSH|^~\\&|RIS|RAD|MWL|HOSP|20260705||ORM^O01|C1|P|2.3\rPID|1\r"


def record(control_id: str = "C1", raw: bytes = RAW) -> IntakeRecord:
    return IntakeRecord(
        raw=raw,
        received_at=time.time(),
        peer="127.0.0.1:5555",
        sending_app="RIS",
        sending_facility="RAD",
        receiving_app="MWL",
        receiving_facility="HOSP",
        control_id=control_id,
        message_type="ORM^O01",
        version="2.3",
    )


def test_new_duplicate_conflict(redis_client: redis.Redis, keys: Keys) -> None:
    first = submit(redis_client, keys, record(), dedupe_ttl_s=60, max_retries=3)
    assert first.kind is SubmitKind.NEW and len(first.message_id) == 32
    again = submit(redis_client, keys, record(), dedupe_ttl_s=60, max_retries=3)
    assert (again.kind, again.message_id) == (SubmitKind.DUPLICATE, first.message_id)
    other = submit(redis_client, keys, record(raw=RAW + b"X"), dedupe_ttl_s=60, max_retries=3)
    assert (other.kind, other.message_id) == (SubmitKind.CONFLICT, first.message_id)
    assert redis_client.lrange(keys.ingest_order, 0, -1) == [first.message_id.encode()]
    job = Queue(keys.queue_name(), connection=redis_client).fetch_job(f"msg-{first.message_id}")
    assert job is not None
    assert (job.func_name, job.args, job.retries_left) == (JOB_FUNC, (first.message_id,), 3)
    assert job.retry_intervals == [1, 5, 15, 30, 60]
    assert job.result_ttl == 3600 and job.failure_ttl == 7 * 86400
    assert redis_client.ttl(keys.dedupe("RIS|RAD", "C1")) <= 60


def test_hash_fields(redis_client: redis.Redis, keys: Keys) -> None:
    rec = dataclasses.replace(record(), charset="8859/1", ack_mode="application")
    mid = submit(redis_client, keys, rec, dedupe_ttl_s=60, max_retries=3).message_id
    h = {k.decode(): v for k, v in redis_client.hgetall(keys.message(mid)).items()}
    assert h["raw"] == RAW
    assert float(h["received_at"]) == rec.received_at
    assert h["charset"] == b"8859/1" and h["ack_mode"] == b"application"
    assert set(h) == {
        "raw", "received_at", "peer", "sending_app", "sending_facility", "receiving_app",
        "receiving_facility", "control_id", "message_type", "version", "charset",
        "processing_id", "ack_mode",
    }  # fmt: skip


def test_concurrent_resends_are_queued_once(redis_client: redis.Redis, keys: Keys) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: submit(redis_client, keys, record("C9"), dedupe_ttl_s=60, max_retries=3),
                range(16),
            )
        )
    assert sorted(r.kind for r in results).count(SubmitKind.NEW) == 1
    assert {r.message_id for r in results} == {results[0].message_id}
    assert redis_client.llen(keys.ingest_order) == 1


def test_queue_internal_in_an_open_multi_writes_only_its_own_commands(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The caller's transaction holds the message, the ingest entry and the job, and
    nothing else: rq's server-version INFO must not be queued into it (it was, and the
    enqueue failed parsing the pipeline as a version string)."""
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.multi()
        pipe.set("mine", "1")
        mid = queue_internal(pipe, keys, INTERNAL_MPPS, {"kind": "mpps", "ü": "1"},
                             source="CT1", control_id="1.2.3:IN PROGRESS", max_retries=3,
                             received_at=12.5)  # fmt: skip
        replies = pipe.execute()
    assert not any(isinstance(r, dict) and "redis_version" in r for r in replies)
    assert redis_client.lrange(keys.ingest_order, 0, -1) == [mid.encode()]
    h = redis_client.hgetall(keys.message(mid))
    assert h[b"raw"] == '{"kind": "mpps", "ü": "1"}'.encode()
    assert (h[b"message_type"], h[b"control_id"]) == (b"MPPS", b"1.2.3:IN PROGRESS")
    job = Queue(keys.queue_name(), connection=redis_client).fetch_job(f"msg-{mid}")
    assert job is not None and (job.func_name, job.args) == (JOB_FUNC, (mid,))


def test_redis_down_is_store_unavailable() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with pytest.raises(StoreUnavailable):
        submit(client, Keys(), record(), dedupe_ttl_s=60, max_retries=3)


def test_app_result_json_roundtrip() -> None:
    res = AppResult(ok=False, code=101, text="PID-3 missing", location="PID-3")
    assert AppResult.from_json(res.to_json()) == res
