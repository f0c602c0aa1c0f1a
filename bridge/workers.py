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
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.worker import BaseWorker

from bridge import hl7in
from bridge.connections import sync_client
from bridge.errors import ConfigError
from bridge.keys import Keys
from bridge.logs import fields
from bridge.mapping.apply import MappingResult, map_message
from bridge.mapping.load import MappingRegistry
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
    except Exception:
        log.exception("maintenance.failed")


class _Maintained:
    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[misc]
        maintenance(context())


class BridgeWorker(_Maintained, Worker):
    """Forks a work horse per job: a crashing parse cannot take the worker down."""


class BridgeSimpleWorker(_Maintained, SimpleWorker):
    """Runs jobs in-process (no fork cost)."""


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
    worker = make_worker(ctx)
    log.info(
        "worker.start",
        extra=fields(
            queue=ctx.keys.queue_name(), burst=bool(args.burst), cls=type(worker).__name__
        ),
    )
    # with_scheduler: rq puts a retry with a backoff interval in its ScheduledJobRegistry,
    # and only a worker running the scheduler moves it back to the queue.
    worker.work(burst=bool(args.burst), logging_level=settings.obs.log_level, with_scheduler=True)
    if args.burst:
        maintenance(ctx)
    return 0
