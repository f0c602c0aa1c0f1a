"""The long-running roles as CLI verbs: ``listen``, ``worker``, ``scp``.

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

from bridge.core import metrics
from bridge.core.logs import fields
from bridge.core.settings import Settings
from bridge.mllp import listener
from bridge.ops.role_runtime import RoleRuntime
from bridge.scp.server import MwlScp
from bridge.store import redis_checks
from bridge.worker import rq_worker

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
