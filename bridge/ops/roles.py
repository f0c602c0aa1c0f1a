"""The long-running roles as CLI verbs: ``listen``, ``worker``, ``scp``, ``outbound``.

Each verb checks its settings first (a ConfigError is exit code 2, before anything
starts), then the Redis server (:mod:`bridge.store.redis_checks`: a server that may evict
ACKed orders is refused, one that may lose them on a crash is logged at WARNING), then
runs the stage's own loop inside a :class:`RoleRuntime` (heartbeat,
``/metrics``, ``/readyz``), so no stage imports ``ops``. ``mwl-bridge run`` starts these
verbs as its children (:mod:`bridge.ops.supervisor`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from rq import Queue

from bridge.core import metrics
from bridge.core.errors import ConfigError
from bridge.core.logs import fields, log_failure
from bridge.core.settings import Settings
from bridge.mllp import listener
from bridge.ops.heartbeat import instance_id
from bridge.ops.role_runtime import RoleRuntime
from bridge.outbound import delivery, sweep
from bridge.scp.server import MwlScp
from bridge.store import redis_checks
from bridge.worker import rq_compat, rq_worker

log = logging.getLogger(__name__)


@contextmanager
def running_role(settings: Settings, role: str) -> Iterator[RoleRuntime]:
    runtime = RoleRuntime.start(settings, role)  # heartbeat, /metrics, /readyz
    try:
        yield runtime
    finally:
        runtime.stop()


def listen_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl-bridge listen``: serve until SIGINT/SIGTERM, then drain and exit 0."""
    listener.check_settings(settings)
    redis_checks.check_at_start(settings.redis)
    with running_role(settings, "listener"):
        return asyncio.run(listener.serve_until_signal(settings))


def worker_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl-bridge worker [--burst]``: an rq worker until SIGTERM (rq's warm shutdown:
    the current job finishes first) or, with ``--burst``, until the queue is empty."""
    ctx = rq_worker.install(settings)
    redis_checks.check_at_start(settings.redis)
    with running_role(settings, "worker"):
        return rq_worker.work(ctx, burst=bool(args.burst))


def scp_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl-bridge scp``: serve until SIGINT/SIGTERM, then shut down cleanly."""
    scp = MwlScp(settings)
    redis_checks.check_at_start(settings.redis)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("scp.signal", extra=fields(signal=signal.Signals(signum).name))
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running_role(settings, "scp"):
            try:
                scp.start()
                metrics.register_readiness("scp", scp.is_serving)
                while not stop.wait(1.0):
                    pass
            finally:
                metrics.unregister_readiness("scp")
                scp.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def outbound_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl-bridge outbound [--burst]``: deliver procedure status messages to the RIS.

    An rq worker on ``keys.outbound_queue_name()`` only, apart from the ingest workers:
    a send waits for the network (up to ``outbound.connect_timeout_s`` +
    ``ack_timeout_s`` against an unreachable RIS), which must never hold up the parsing
    and applying of orders, and one queue per worker keeps rq's crash-safe BLMOVE
    dequeue on both queues (with two queues rq pops with BLPOP). Its maintenance step
    (every ``worker.maintenance_interval_s``) runs rq's own and the outbound sweep; its
    scheduler moves the retries that are due back to the queue. ``mwl-bridge run``
    starts one when ``outbound.host`` is set."""
    if not settings.outbound.host:
        raise ConfigError("outbound.host", "is empty: procedure status delivery is off")
    ctx = delivery.install(settings)
    redis_checks.check_at_start(settings.redis)
    with running_role(settings, "outbound"):
        return deliver(ctx, burst=bool(args.burst))


def outbound_maintenance(ctx: delivery.DeliveryContext) -> None:
    """The delivery process's step: re-queue orders nobody works on (never fatal)."""
    try:
        sweep.sweep(ctx.client, ctx.keys, ctx.out, ctx.clock())
    except Exception as exc:
        log_failure(log, "outbound.sweep_failed", exc)


def deliver(ctx: delivery.DeliveryContext, burst: bool = False) -> int:
    """Run the delivery worker until SIGTERM (rq's warm shutdown: the send in flight
    finishes first) or, with ``burst``, until its queue is empty."""
    interval = ctx.settings.worker.maintenance_interval_s
    worker = rq_compat.make_worker(
        Queue(ctx.keys.outbound_queue_name(), connection=ctx.client),
        ctx.client,
        "simple",
        lambda: outbound_maintenance(ctx),
        interval,
    )
    delivery.report_destination(ctx, instance_id())
    log.info(
        "outbound.start",
        extra=fields(
            queue=ctx.keys.outbound_queue_name(), destination=ctx.destination,
            tls=ctx.out.tls, burst=burst,
        ),
    )  # fmt: skip
    beside = None
    if not rq_compat.maintained_by_rq(worker):
        beside = rq_compat.MaintenanceThread(lambda: outbound_maintenance(ctx), interval).start()
    try:
        # with_scheduler: retries are scheduled jobs; only a worker of this queue running
        # rq's scheduler moves them back when they are due.
        worker.work(burst=burst, logging_level=ctx.settings.obs.log_level, with_scheduler=True)
    finally:
        if beside is not None:
            beside.stop()
    return 0
