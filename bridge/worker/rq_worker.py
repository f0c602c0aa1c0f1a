"""The ``worker`` verb: rq workers that parse, map and apply orders.

One queue only (``keys.queue_name()``), so rq uses its crash-safe BLMOVE dequeue. The
worker process builds a :class:`WorkerContext` once (settings, Redis client, mapping
files, warmed hl7apy models) and stashes it in this module before rq starts; forked
work horses inherit it. Maintenance every ``worker.maintenance_interval_s`` runs rq's
registry cleanup plus :meth:`~bridge.sequencer.Sequencer.recover` (stuck ingest head)
and purges finished worklist items whose retention ended. SIGTERM is rq's warm
shutdown: the current job finishes, then the worker exits.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.rate_limit import release_slot
from rq.registry import StartedJobRegistry
from rq.utils import now as rq_now
from rq.worker import BaseWorker, WorkerStatus

from bridge import hl7apy_speedups, hl7in, localzone
from bridge.connections import sync_client
from bridge.errors import ConfigError
from bridge.keys import Keys
from bridge.logs import fields, log_failure
from bridge.mapping.apply import MappingResult, map_message
from bridge.mapping.load import MappingRegistry
from bridge.role_runtime import RoleRuntime
from bridge.sequencer import Sequencer
from bridge.settings import Settings, load_settings
from bridge.store import WorklistStore

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    client: redis.Redis
    keys: Keys
    store: WorklistStore
    mappings: MappingRegistry
    sequencer: Sequencer

    def parse(self, message_id: str, meta: dict[str, Any]) -> MappingResult:
        """Decode, parse and map one message hash (``raw`` + MSH metadata)."""
        raw = meta.get("raw", b"")
        msh = hl7in.read_msh(raw)
        mapping = self.mappings.for_sender(msh.sending_app, msh.sending_facility)
        default_charset = mapping.default_charset or self.settings.worker.default_charset
        msg = hl7in.parse(raw, default_charset)
        return map_message(msg, mapping, self.settings.worker.local_timezone)


_CONTEXT: WorkerContext | None = None


def install(settings: Settings, client: redis.Redis | None = None) -> WorkerContext:
    """Build the process-wide context (call once per worker process, before forking)."""
    global _CONTEXT
    hl7apy_speedups.install()
    if not settings.redis.url and client is None:
        raise ConfigError("redis.url", "the worker needs a Redis URL (or run mwl-bridge run)")
    client = client or sync_client(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    store = WorklistStore(client, keys)
    mappings = MappingRegistry(settings.worker.mapping, settings.worker.sender_mappings)
    ctx = WorkerContext(settings, client, keys, store, mappings, None)  # type: ignore[arg-type]
    ctx.sequencer = Sequencer(client, keys, store, settings.worker, ctx.parse)
    _CONTEXT = ctx
    return ctx


def context() -> WorkerContext:
    return _CONTEXT or install(load_settings())


def maintenance(ctx: WorkerContext) -> None:
    """Stuck-head recovery and retention purge; errors are logged, never fatal."""
    try:
        ctx.sequencer.recover()
        purged = ctx.store.purge_expired(time.time())
        if purged:
            log.info("worklist.purged", extra=fields(items=purged))
    except Exception as exc:
        log_failure(log, "maintenance.failed", exc)


class _Maintained:
    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[misc]
        maintenance(context())


#: The one job function the listener enqueues; the lean success path applies only to it.
JOB_FUNC = "bridge.jobs.process_message"
#: A standalone worker heartbeat is skipped when the last one is younger than this. rq
#: beats 3 times per job (3 round trips each); the worker key lives worker_ttl + 60 s
#: (>= 76 s), and the suspension check below beats in its pipeline at least this often.
HEARTBEAT_MIN_INTERVAL_S = 5.0
#: ``rq suspend`` is noticed within this delay instead of being checked before each job.
SUSPENSION_CHECK_INTERVAL_S = 1.0


class _Lean:
    """rq bookkeeping without the round trips that carry no information for our jobs.

    Measured (bench/results/workers.md): stock rq 3.0 makes ~20 Redis round trips per job,
    each a separate fsync with ``appendfsync always``. Kept: dequeue (BLMOVE), job fetch,
    execution + started registry, status, success/failure bookkeeping, retries. Dropped:
    repeated worker heartbeats (throttled), the suspension check before every job
    (throttled), the idle-state write that repeats the one just made, the job heartbeat
    after it returned (it only matters while callbacks run; ours have none) and the
    WATCH/SMEMBERS for dependents (the listener never enqueues jobs that depend on ours).
    """

    _beat_at = float("-inf")
    _suspension_checked_at = float("-inf")
    _state_written: str | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        now_s = time.monotonic()
        if (
            pipeline is None
            and timeout is None
            and now_s - self._beat_at < HEARTBEAT_MIN_INTERVAL_S
        ):
            return
        super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        self._beat_at = now_s

    def check_for_suspension(self, burst: bool) -> None:
        now_s = time.monotonic()
        if now_s - self._suspension_checked_at < SUSPENSION_CHECK_INTERVAL_S:
            return
        self._suspension_checked_at = now_s
        super().check_for_suspension(burst)  # type: ignore[misc]

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == self._state_written:
            self._state = state
            return
        super().set_state(state, pipeline)  # type: ignore[misc]
        self._state_written = state

    _prepared: Any = None  # the execution's pipeline, sent with the job's preparation

    def prepare_execution(self, job: Job) -> Execution:
        # rq sends this (execution, started registry, BUSY) and prepare_job_execution's
        # (heartbeats, STARTED, LREM from the intermediate queue) as two MULTI/EXECs; in one
        # process they can be one. Nothing is written before both are queued.
        pipeline = self.connection.pipeline()  # type: ignore[attr-defined]
        ttl = self.get_heartbeat_ttl(job)  # type: ignore[attr-defined]
        execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)  # type: ignore[attr-defined]
        self.executions[execution.id] = execution  # type: ignore[attr-defined]
        self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
        self._prepared = pipeline
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        pipeline, self._prepared = self._prepared, None
        if pipeline is None:
            super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]
            return
        with pipeline:
            ttl = self.get_heartbeat_ttl(job)  # type: ignore[attr-defined]
            self.heartbeat(ttl, pipeline=pipeline)
            job.heartbeat(rq_now(), ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)  # type: ignore[attr-defined]
            pipeline.persist(job.key)
            if remove_from_intermediate_queue:
                queue = Queue(job.origin, connection=self.connection)  # type: ignore[attr-defined]
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            pipeline.execute()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        if job.func_name != JOB_FUNC or _has_callbacks(job):
            super().handle_execution_ended(job, queue, heartbeat_ttl)  # type: ignore[misc]
            return
        job.ended_at = rq_now()

    def handle_job_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> None:
        if job.func_name != JOB_FUNC or job.repeats_left or _has_callbacks(job):
            super().handle_job_success(job, queue, started_job_registry, execution)  # type: ignore[misc]
            return
        # rq's handle_job_success minus the dependents (WATCH + SMEMBERS), one MULTI/EXEC.
        assert job.started_at and job.ended_at
        with self.connection.pipeline() as pipeline:  # type: ignore[attr-defined]
            self.increment_successful_job_count(pipeline=pipeline)  # type: ignore[attr-defined]
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)  # type: ignore[attr-defined]
            result_ttl = job.get_result_ttl(self.default_result_ttl)  # type: ignore[attr-defined]
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipeline,
                    worker_name=self.name,  # type: ignore[attr-defined]
                    execution_id=execution.id,
                    execution_started_at=execution.created_at,
                    execution_ended_at=job.ended_at,
                )
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)  # type: ignore[attr-defined]
            # SimpleWorker.execute_job sets IDLE next; written here, that write is skipped.
            self.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            pipeline.execute()
        release_slot(job)


def _has_callbacks(job: Job) -> bool:
    return bool(
        job._success_callback_name or job._failure_callback_name or job._stopped_callback_name
    )


class BridgeWorker(_Maintained, Worker):
    """Forks a work horse per job: a crashing parse cannot take the worker down."""


class BridgeSimpleWorker(_Lean, _Maintained, SimpleWorker):
    """Runs jobs in-process (no fork cost), with the lean per-job bookkeeping."""


def make_worker(ctx: WorkerContext, name: str | None = None) -> BaseWorker:
    s = ctx.settings.worker
    cls = BridgeWorker if s.worker_class == "fork" else BridgeSimpleWorker
    queue = Queue(ctx.keys.queue_name(), connection=ctx.client)
    return cls(
        [queue],
        connection=ctx.client,
        name=name,
        maintenance_interval=s.maintenance_interval_s,
        # An idle worker blocks in BLMOVE for worker_ttl - 15 s; keep it short so the
        # maintenance step (stuck-head recovery) runs about every interval.
        worker_ttl=max(16, s.maintenance_interval_s + 15),
        job_monitoring_interval=10,
    )


def command(settings: Settings, args: argparse.Namespace) -> int:
    ctx = install(settings)
    hl7in.warm_up()  # load hl7apy's version models once, before work horses fork
    # Move everything loaded so far (hl7apy models, mappings, rq, redis-py) out of the
    # cyclic GC's reach: hl7apy's parse trees are cyclic and trigger full collections
    # that would otherwise rescan those long-lived objects (measured ~5 % of the parse).
    gc.collect()
    gc.freeze()
    worker = make_worker(ctx)
    zone = localzone.resolve(settings.worker.local_timezone)
    log.info(
        "worker.start",
        extra=fields(
            queue=ctx.keys.queue_name(),
            burst=bool(args.burst),
            cls=type(worker).__name__,
            zone=zone.name,
            zone_source=zone.source,
        ),
    )
    runtime = RoleRuntime.start(settings, "worker")  # heartbeat, /metrics, /readyz
    if isinstance(worker, BridgeSimpleWorker):
        # Not with fork: a work horse would not inherit the thread.
        ctx.sequencer.apply_in_background()
    try:
        # with_scheduler: rq puts a retry with a backoff interval in its
        # ScheduledJobRegistry, and only a worker running the scheduler moves it back.
        worker.work(
            burst=bool(args.burst), logging_level=settings.obs.log_level, with_scheduler=True
        )
        ctx.sequencer.close()  # what the background thread holds is applied first
        if args.burst:
            maintenance(ctx)
    finally:
        ctx.sequencer.close()
        runtime.stop()
    return 0
