"""The ``worker`` verb: rq workers that parse, map and apply orders.

One queue only (``keys.queue_name()``), so rq uses its crash-safe BLMOVE dequeue. The
worker process builds a :class:`WorkerContext` once (settings, Redis client, mapping
files, warmed hl7apy models) and stashes it in this module before rq starts; forked
work horses inherit it. Maintenance every ``worker.maintenance_interval_s`` runs rq's
registry cleanup plus :meth:`~bridge.worker.sequencer.Sequencer.recover` (stuck ingest
head) and a worklist hygiene pass (:mod:`bridge.worker.hygiene`: retention purge and idle
timeout, under the apply lock). SIGTERM is rq's warm
shutdown: the current job finishes, then the worker exits. What rq itself must do for
that (hooks, key layout, lean bookkeeping) is in :mod:`bridge.worker.rq_compat`.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.worker import BaseWorker

from bridge.core import localzone
from bridge.core.codes import Hl7Error
from bridge.core.errors import ConfigError, MessageRejected
from bridge.core.logs import fields, log_failure
from bridge.core.settings import Settings, load_settings
from bridge.hl7 import hl7apy_compat
from bridge.hl7 import parse as hl7parse
from bridge.hl7.charsets import CharsetError, Decision, check_settings
from bridge.intake.submit import INTERNAL_MPPS
from bridge.store.connections import sync_client
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import migrations, rq_compat
from bridge.worker.hygiene import Hygiene, PassResult
from bridge.worker.mapping.apply import MappingResult, MppsEvent, map_message
from bridge.worker.mapping.load import MappingRegistry
from bridge.worker.sequencer import Sequencer

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    client: redis.Redis
    keys: Keys
    store: WorklistStore
    mappings: MappingRegistry
    sequencer: Sequencer
    hygiene: Hygiene
    #: Epoch seconds now: the time of plans and of hygiene passes (tests inject one).
    clock: Callable[[], float] = field(default=time.time)

    def parse(self, message_id: str, meta: dict[str, Any]) -> MappingResult:
        """Decode, parse and map one message hash (``raw`` + MSH metadata).

        Decoded with the listener's recorded decision (``charset_used``), so what it
        checked at ACK time is what is read here; a hash written by an older release
        has none, and the listener's rule is applied here with the same settings."""
        raw = meta.get("raw", b"")
        if meta.get("message_type") == INTERNAL_MPPS.encode():
            return _mpps_result(raw)
        recorded = meta.get("charset_used")
        decision = None
        if recorded:
            try:
                decision = Decision.from_record(recorded)
            except CharsetError as exc:
                raise MessageRejected(
                    exc.reason, Hl7Error.TABLE_VALUE_NOT_FOUND, exc.location
                ) from None
        m = self.settings.mllp
        msg = hl7parse.parse(raw, decision, m.default_charset, m.sender_charsets)
        msh = msg.segments[0]
        mapping = self.mappings.for_sender(msh.field(3).strip(), msh.field(4).strip())
        return map_message(msg, mapping, self.settings.worker.local_timezone)


def _mpps_result(raw: bytes) -> MappingResult:
    """An internal MPPS message (the SCP's payload, JSON) as the outcome the planner
    applies; a payload that does not read is a rejection (dead letter), never a guess."""
    try:
        event = MppsEvent.from_payload(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageRejected(
            f"MPPS message unreadable ({type(exc).__name__})", Hl7Error.DATA_TYPE, ""
        ) from None
    return MappingResult(event.calling_ae, [], [], "", "", "", [], None, event)


_CONTEXT: WorkerContext | None = None


def install(
    settings: Settings,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> WorkerContext:
    """Build the process-wide context (call once per worker process, before forking)."""
    global _CONTEXT
    hl7apy_compat.install()
    check_settings(settings.mllp)  # the worker decodes old messages with these defaults
    if not settings.redis.url and client is None:
        raise ConfigError("redis.url", "the worker needs a Redis URL (or run mwl-bridge run)")
    client = client or sync_client(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    store = WorklistStore(client, keys)
    mappings = MappingRegistry(settings.worker.mapping, settings.worker.sender_mappings)
    hygiene = Hygiene(client, keys, store, settings.worker)
    ctx = WorkerContext(settings, client, keys, store, mappings, None, hygiene, clock)  # type: ignore[arg-type]
    ctx.sequencer = Sequencer(client, keys, store, settings.worker, ctx.parse, clock)
    if settings.outbound.host:
        # Status messages follow the default mapping's template: an MPPS has no sender
        # whose mapping could apply, and there is one RIS to tell.
        template = mappings.default.status_messages
        if template is None:
            raise ConfigError("outbound.host", "is set but the mapping file has no "
                              "status_messages section (see mappings/ihe-rad.yaml)")  # fmt: skip
        ctx.sequencer.planner.status_template = template
        ctx.sequencer.outbound = settings.outbound
    # Before the first message is applied: a store written by an earlier release is
    # brought to this release's layout (once, under the apply lock; if another worker
    # holds it, the first apply does it: acquire.lua refuses an old layout).
    migrations.upgrade(client, keys)
    _CONTEXT = ctx
    return ctx


def context() -> WorkerContext:
    return _CONTEXT or install(load_settings())


def maintenance(ctx: WorkerContext, now: float | None = None) -> PassResult | None:
    """Stuck-head recovery, then a worklist hygiene pass at ``now`` (default: the
    context's clock); errors are logged, never fatal. Returns what the hygiene pass did
    (None when it failed)."""
    try:
        ctx.sequencer.recover()
    except Exception as exc:
        log_failure(log, "maintenance.failed", exc)
    try:
        result = ctx.hygiene.run(ctx.clock() if now is None else now)
        if result.head_parsed:
            # A worker stored an outcome while the pass held the lock and left it to us.
            ctx.sequencer.drain()
        return result
    except Exception as exc:
        log_failure(log, "hygiene.failed", exc)
        return None


def make_worker(ctx: WorkerContext, name: str | None = None) -> BaseWorker:
    s = ctx.settings.worker
    return rq_compat.make_worker(
        Queue(ctx.keys.queue_name(), connection=ctx.client),
        ctx.client,
        s.worker_class,
        lambda: maintenance(ctx),
        s.maintenance_interval_s,
        name=name,
    )


def work(ctx: WorkerContext, burst: bool = False) -> int:
    """Run an rq worker on the ingest queue until SIGTERM (or, with ``burst``, until the
    queue is empty), then apply what the background thread still holds."""
    settings = ctx.settings
    hl7parse.warm_up()  # load hl7apy's version models once, before work horses fork
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
            burst=burst,
            cls=type(worker).__name__,
            zone=zone.name,
            zone_source=zone.source,
        ),
    )
    if settings.worker.worker_class == "simple":
        # Not with fork: a work horse would not inherit the thread.
        ctx.sequencer.apply_in_background()
    beside = None
    if not rq_compat.maintained_by_rq(worker):
        beside = rq_compat.MaintenanceThread(
            lambda: maintenance(ctx), settings.worker.maintenance_interval_s
        ).start()
    try:
        # with_scheduler: rq puts a retry with a backoff interval in its
        # ScheduledJobRegistry, and only a worker running the scheduler moves it back.
        worker.work(burst=burst, logging_level=settings.obs.log_level, with_scheduler=True)
        ctx.sequencer.close()  # what the background thread holds is applied first
        if burst:
            maintenance(ctx)
    finally:
        if beside is not None:
            beside.stop()
        ctx.sequencer.close()
    return 0
