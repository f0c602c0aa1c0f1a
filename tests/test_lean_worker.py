"""The lean rq bookkeeping of BridgeSimpleWorker keeps rq's records right: finished jobs
with their results, empty started registry, retries for transient failures, suspension,
and the per-order round trip budget measured in bench/results/workers.md."""

from __future__ import annotations

import dataclasses
import logging

import redis
from intake_helpers import submit
from orm_builder import orm
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.suspension import resume, suspend

from bridge.core.errors import StoreUnavailable
from bridge.core.settings import Settings
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_worker as workers
from bridge.worker.rq_compat import BridgeSimpleWorker


def _batch_size(settings: Settings, n: int) -> Settings:
    return dataclasses.replace(settings, worker=dataclasses.replace(settings.worker, batch_size=n))


def _work(ctx: workers.WorkerContext) -> workers.BaseWorker:
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    worker = workers.make_worker(ctx)
    assert isinstance(worker, BridgeSimpleWorker)
    worker.work(burst=True, logging_level="WARNING")
    return worker


def test_lean_success_keeps_rq_records(redis_client: redis.Redis, settings: Settings) -> None:
    settings = _batch_size(settings, 1)
    mids = [
        submit(redis_client, settings, orm(placer=f"L{i}", filler=f"LF{i}").encode())
        for i in range(5)
    ]
    ctx = workers.install(settings, redis_client)
    redis_client.config_resetstat()
    worker = _work(ctx)
    calls = {k: v["calls"] for k, v in redis_client.info("commandstats").items()}
    keys = Keys()
    queue = Queue(keys.queue_name(), connection=redis_client)
    assert WorklistStore(redis_client, keys).count() == 5
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert redis_client.llen(queue.intermediate_queue_key) == 0
    assert sorted(FinishedJobRegistry(queue=queue).get_job_ids()) == sorted(
        f"msg-{m}" for m in mids
    )
    for mid in mids:
        job = Job.fetch(f"msg-{mid}", connection=redis_client)
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value() == "parsed"
    assert redis_client.hget(worker.key, "successful_job_count") == b"5"
    assert redis_client.hget(worker.key, "state") == b"idle"
    # Round-trip budget per order (each write one fsync with appendfsync always): one
    # MULTI/EXEC to start the job, one to finish it, two scripts of ours (store+acquire,
    # apply+pop). Stock rq 3.0 sends ~20 round trips per job on its own.
    assert calls.get("cmdstat_exec", 0) <= 2 * 5 + 3  # + register birth/death
    assert calls.get("cmdstat_evalsha", 0) <= 2 * 5 + 2  # + first calls: NOSCRIPT, load


def test_a_job_takes_the_jobs_queued_behind_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """worker.batch_size: the first job parses the messages of the jobs behind it (their
    jobs are taken off the queue), applies them in ACK order and pays rq's bookkeeping
    once; the batch record is gone once the outcomes are stored."""
    settings = _batch_size(settings, 4)
    mids = [
        submit(redis_client, settings, orm(placer=f"B{i}", filler=f"BF{i}").encode())
        for i in range(6)
    ]
    ctx = workers.install(settings, redis_client)
    redis_client.config_resetstat()
    _work(ctx)
    calls = {k: v["calls"] for k, v in redis_client.info("commandstats").items()}
    keys = Keys()
    queue = Queue(keys.queue_name(), connection=redis_client)
    assert WorklistStore(redis_client, keys).count() == 6
    assert redis_client.llen(keys.ingest_order) == 0
    # Two jobs ran (4 + 2 messages); the four taken jobs no longer exist.
    assert sorted(FinishedJobRegistry(queue=queue).get_job_ids()) == sorted(
        [f"msg-{mids[0]}", f"msg-{mids[4]}"]
    )
    for taken in (*mids[1:4], mids[5]):
        assert not redis_client.exists(Job.key_for(f"msg-{taken}"))
        assert redis_client.hget(keys.message(taken), "leader") in (
            mids[0].encode(), mids[4].encode()
        )  # fmt: skip
    assert not redis_client.keys(keys.batch("*"))
    # Applied in ACK order: the sequence numbers follow the submission order.
    store = WorklistStore(redis_client, keys)
    all_ids = [m.decode() for m in redis_client.zrange(keys.index_start, 0, -1)]
    items = sorted(store.load(all_ids), key=lambda it: it.seq)
    assert [it.attrs["PlacerOrderNumberImagingServiceRequest"] for it in items] == [
        f"B{i}" for i in range(6)
    ]
    # Per job: one MULTI/EXEC to start, one to finish; scripts: claim, store+acquire,
    # then one apply+pop per message.
    assert calls.get("cmdstat_exec", 0) <= 2 * 2 + 3
    assert calls.get("cmdstat_evalsha", 0) <= 2 * 2 + 6 + 3


def test_transient_failure_is_retried_not_finished(
    redis_client: redis.Redis, settings: Settings
) -> None:
    mid = submit(redis_client, settings, orm().encode())
    ctx = workers.install(settings, redis_client)

    def redis_gone(message_id: str, meta: dict[str, object]) -> object:
        raise StoreUnavailable("simulated: redis unreachable while mapping")

    ctx.sequencer.parse_fn = redis_gone  # type: ignore[assignment]
    try:
        _work(ctx)
    finally:
        workers.install(settings, redis_client)
    queue = Queue(Keys().queue_name(), connection=redis_client)
    job = Job.fetch(f"msg-{mid}", connection=redis_client)
    assert job.get_status() == JobStatus.SCHEDULED  # rq's Retry with backoff
    assert job.retries_left == settings.worker.max_retries - 1
    assert f"msg-{mid}" in ScheduledJobRegistry(queue=queue).get_job_ids()
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert redis_client.llen(Keys().ingest_order) == 1  # still in line, nothing lost


def test_suspended_worker_takes_no_job(redis_client: redis.Redis, settings: Settings) -> None:
    submit(redis_client, settings, orm().encode())
    ctx = workers.install(settings, redis_client)
    suspend(redis_client)
    try:
        _work(ctx)
    finally:
        resume(redis_client)
    assert redis_client.llen(Keys().ingest_order) == 1
    _work(ctx)
    assert redis_client.llen(Keys().ingest_order) == 0
