"""Every use of rq's internals, in one place, behind a version guard.

Verified against rq **3.0.0** (:data:`VERIFIED_VERSIONS`). On any other version (or with
``MWL_BRIDGE_STOCK_LIBRARIES=1``) :data:`FAST` is False, one WARNING is logged at import
(:mod:`bridge.core.library_guard`) and the worker runs on rq's stock public API: rq's
own ``SimpleWorker``/``Worker`` classes with every per-job round trip rq makes, one
message per job (no batches: :func:`batch_keys` answers None), and the bridge's
maintenance step in a thread of the worker process instead of rq's maintenance hook.
Orders are applied the same (``tests/test_rq_compat.py`` runs both paths and compares
the stored items); the worker is slower (``bench/RESULTS.md``).

What the fast path does, and the internals it touches:

* **Lean bookkeeping** (:class:`BridgeSimpleWorker`): overrides of rq's non-public
  ``Worker`` methods (``heartbeat``, ``check_for_suspension``, ``set_state``,
  ``prepare_execution``, ``prepare_job_execution``, ``handle_execution_ended``,
  ``handle_job_success``) and private ``Job`` attributes (``_handle_success``,
  ``_status``, the ``_*_callback_name`` fields), ``rq.rate_limit.release_slot``.
* **The maintenance hook**: ``run_maintenance_tasks`` overridden to add the bridge's
  maintenance step (stuck-head recovery, worklist hygiene).
* **rq's key layout** (:func:`batch_keys`): the queue list, the job hash prefix and the
  workers-of-a-queue set, which the batch claim script reads and changes directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from bridge.core.library_guard import fast_path_allowed
from bridge.core.logs import fields

log = logging.getLogger(__name__)

VERIFIED_VERSIONS = ("3.0.0",)
#: Whether the fast paths below are used (decided once at import; tests flip it).
FAST = fast_path_allowed("rq", VERIFIED_VERSIONS)

#: Job functions the lean success path applies to: the one the listener enqueues, and
#: its name before the layout by stage (jobs already queued by an older release).
JOB_FUNCS = frozenset({"bridge.worker.jobs.process_message", "bridge.jobs.process_message"})
#: The bridge's maintenance step, called by the worker (set by :func:`make_worker`).
MaintenanceFn = Callable[[], None]


@dataclass(frozen=True)
class BatchKeys:
    """rq's own keys for one queue, as the batch claim script needs them."""

    queue: str  # the list of job ids waiting
    job_prefix: str  # a job's hash is this + its id
    workers: str  # the set of workers listening on the queue


def batch_keys(queue_name: str) -> BatchKeys | None:
    """rq's key layout for ``queue_name`` on the fast path; None on the stock path (a
    job then parses only its own message)."""
    if not FAST:
        return None
    return BatchKeys(
        queue=Queue.redis_queue_namespace_prefix + queue_name,
        job_prefix=Job.redis_job_namespace_prefix,
        workers=WORKERS_BY_QUEUE_KEY % queue_name,
    )


class _Maintained:
    bridge_maintenance: MaintenanceFn | None = None

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[misc]
        if self.bridge_maintenance is not None:
            self.bridge_maintenance()


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
        if job.func_name not in JOB_FUNCS or _has_callbacks(job):
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
        if job.func_name not in JOB_FUNCS or job.repeats_left or _has_callbacks(job):
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


class MaintenanceThread:
    """The stock path's maintenance: ``maintenance`` every ``interval_s`` in a daemon
    thread of the worker process, until :meth:`stop`."""

    def __init__(self, maintenance: MaintenanceFn, interval_s: float) -> None:
        self._maintenance = maintenance
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mwl-maintenance", daemon=True)

    def start(self) -> MaintenanceThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._maintenance()


def make_worker(
    queue: Queue,
    client: redis.Redis,
    worker_class: str,
    maintenance: MaintenanceFn,
    maintenance_interval_s: int,
    name: str | None = None,
) -> BaseWorker:
    """An rq worker on ``queue``: ``simple`` (in-process) or ``fork`` (a work horse per
    job); on the fast path with the lean bookkeeping (simple) and the bridge's step in
    rq's maintenance hook, on the stock path rq's classes as shipped (the caller runs
    :class:`MaintenanceThread` beside it)."""
    if FAST:
        cls: type[BaseWorker] = BridgeWorker if worker_class == "fork" else BridgeSimpleWorker
    else:
        cls = Worker if worker_class == "fork" else SimpleWorker
    worker = cls(
        [queue],
        connection=client,
        name=name,
        maintenance_interval=maintenance_interval_s,
        # An idle worker blocks in BLMOVE for worker_ttl - 15 s; keep it short so the
        # maintenance step (stuck-head recovery) runs about every interval.
        worker_ttl=max(16, maintenance_interval_s + 15),
        job_monitoring_interval=10,
    )
    if isinstance(worker, _Maintained):
        worker.bridge_maintenance = maintenance
    log.debug("worker.class", extra=fields(cls=cls.__name__, fast=FAST))
    return worker


def maintained_by_rq(worker: BaseWorker) -> bool:
    """Whether rq itself runs the bridge's maintenance step in this worker."""
    return isinstance(worker, _Maintained)
