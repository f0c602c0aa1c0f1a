"""The Redis side of ``/metrics`` and ``/readyz``: state read at scrape time.

:class:`RedisCollector` reads queue depth, rq job states, workers alive, worklist items
by status, dead letters and the outbound backlog from Redis whenever Prometheus scrapes
(rq-exporter does not support rq 3, hence our own collector); :func:`serve` starts a
role's HTTP endpoint (:class:`bridge.core.metrics.MetricsServer`) with it and a Redis
readiness check.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bridge.core import metrics
from bridge.core.logs import fields
from bridge.intake import deadletter
from bridge.outbound import report as outbound_report
from bridge.store.keys import Keys
from bridge.store.worklist_store import status_counts

log = logging.getLogger(__name__)


def redis_ping_check(client: redis.Redis) -> metrics.ReadinessCheck:
    def check() -> bool:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    return check


class RedisCollector(Collector):
    """Reads queue depth, rq job states, workers, items by status and dead letters at
    scrape time. Registry counts are read without rq's cleanup (a scrape must not move
    jobs between registries)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._keys = keys

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("mwl_redis_up", "1 if Redis answered this scrape, else 0.")
        try:
            families = list(self._collect())
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics.redis_unavailable", extra=fields(error=type(exc).__name__))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        from rq import Queue, Worker
        from rq.registry import (
            DeferredJobRegistry,
            FailedJobRegistry,
            FinishedJobRegistry,
            ScheduledJobRegistry,
            StartedJobRegistry,
        )

        name = self._keys.queue_name()
        queue = Queue(name, connection=self._r)
        depth = GaugeMetricFamily(
            "mwl_queue_depth", "Jobs waiting in the rq queue.", labels=["queue"]
        )
        depth.add_metric([name], queue.count)
        yield depth

        # With batches a job stands for up to worker.batch_size messages, so the queue
        # depth undercounts the work; the ingest line is what still waits to be applied.
        backlog = GaugeMetricFamily(
            "mwl_ingest_backlog", "Accepted (ACKed) messages not yet applied, in ACK order."
        )
        backlog.add_metric([], self._r.llen(self._keys.ingest_order))
        yield backlog

        jobs = GaugeMetricFamily(
            "mwl_rq_jobs", "rq jobs by registry state.", labels=["queue", "state"]
        )
        for state, cls in (
            ("started", StartedJobRegistry),
            ("failed", FailedJobRegistry),
            ("deferred", DeferredJobRegistry),
            ("scheduled", ScheduledJobRegistry),
            ("finished", FinishedJobRegistry),
        ):
            jobs.add_metric([name, state], cls(queue=queue).get_job_count(cleanup=False))
        yield jobs

        workers = GaugeMetricFamily(
            "mwl_workers_alive", "rq workers registered on the queue.", labels=["queue"]
        )
        workers.add_metric([name], Worker.count(connection=self._r, queue=queue))
        yield workers

        items = GaugeMetricFamily(
            "mwl_worklist_items",
            "Worklist items by Scheduled Procedure Step Status (hidden/finished included).",
            labels=["status"],
        )
        for status, size in sorted(status_counts(self._r, self._keys).items()):
            items.add_metric([status], size)
        yield items

        dead = GaugeMetricFamily("mwl_deadletters", "Dead letters kept.")
        dead.add_metric([], deadletter.count(self._r, self._keys))
        yield dead

        yield from self._outbound()

    def _outbound(self) -> Iterator[GaugeMetricFamily]:
        """Procedure status waiting for the RIS (bounded work: see outbound.report)."""
        from rq import Queue, Worker

        waiting = outbound_report.backlog(self._r, self._keys)
        backlog = GaugeMetricFamily(
            "mwl_outbound_backlog",
            "Outbound HL7 messages (procedure status to the RIS) waiting to be delivered, "
            "summed over the orders' lines.",
        )
        backlog.add_metric([], waiting.messages)
        yield backlog
        orders = GaugeMetricFamily(
            "mwl_outbound_orders_waiting", "Orders with outbound messages waiting."
        )
        orders.add_metric([], waiting.orders)
        yield orders
        oldest = GaugeMetricFamily(
            "mwl_outbound_oldest_age_seconds",
            "Age of the oldest outbound message waiting (0 when none); alert when it grows "
            "beyond a few retry intervals.",
        )
        oldest.add_metric([], waiting.oldest_age_s(time.time()))
        yield oldest
        name = self._keys.outbound_queue_name()
        workers = GaugeMetricFamily(
            "mwl_outbound_workers_alive", "rq workers registered on the outbound queue."
        )
        workers.add_metric(
            [], Worker.count(connection=self._r, queue=Queue(name, connection=self._r))
        )
        yield workers


def serve(
    host: str,
    port: int,
    client: redis.Redis | None = None,
    keys: Keys | None = None,
) -> metrics.MetricsServer:
    """Start the HTTP endpoint for this process (port 0 = any free port, see ``.port``).

    With ``client`` and ``keys`` the Redis state is exported too and ``/readyz`` checks
    that Redis answers. When ``PROMETHEUS_MULTIPROC_DIR`` is set, the served numbers are
    the sum over every process writing there.
    """
    multiproc_dir = os.environ.get(metrics.MULTIPROC_ENV)
    registry = metrics.aggregate_registry(multiproc_dir) if multiproc_dir else metrics.REGISTRY
    if client is not None and keys is not None:
        if registry is metrics.REGISTRY:
            registry = CollectorRegistry()
            registry.register(_Chain(metrics.REGISTRY))
        registry.register(RedisCollector(client, keys))
        metrics.register_readiness("redis", redis_ping_check(client))
    server = metrics.MetricsServer(host, port, registry).start()
    log.info("metrics.listening", extra=fields(host=host, port=server.port))
    return server


class _Chain(Collector):
    """Exposes another registry's metrics (so the Redis collector is added per server,
    never to the shared :data:`REGISTRY`)."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Any]:
        yield from self._inner.collect()
