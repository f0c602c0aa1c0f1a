"""Run real rq workers over submitted messages (in-process SimpleWorker, burst)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from intake_helpers import submit

from bridge.core.settings import Settings
from bridge.store.item import WorklistItem
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_worker as workers


def run(
    client: redis.Redis,
    settings: Settings,
    *messages: str | bytes,
    ack_mode: str = "commit",
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Submit ``messages`` in order (as the listener would), then drain them with a real
    rq SimpleWorker in burst mode (its plans and maintenance at ``clock``'s time).
    Returns the message ids."""
    ids = [
        submit(
            client, settings, m.encode("latin-1") if isinstance(m, str) else m, ack_mode=ack_mode
        )
        for m in messages
    ]
    ctx = workers.install(settings, client, clock=clock)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    worker = workers.make_worker(ctx)
    worker.work(burst=True, logging_level="WARNING")
    return ids


def items(client: redis.Redis, settings: Settings) -> list[WorklistItem]:
    ctx = workers.context()
    store = WorklistStore(client, ctx.keys)
    ids = sorted(m.decode() for m in client.zrange(ctx.keys.index_start, 0, -1))
    return list(store.load(ids))
