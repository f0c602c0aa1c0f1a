"""Stuck-head recovery: the ingest head waits unparsed because its worker died.

rq would re-run the job only after the job heartbeat expires (~90 s) plus a maintenance
pass; instead every worker's maintenance step calls :meth:`HeadRecovery.recover` (every
``worker.maintenance_interval_s``), which notes since when the head waits and parses it
itself after ``worker.stuck_head_s``, bringing the head's batch along one message at a
time. The attempt is counted first, so a message that kills its worker every time is
dead-lettered after ``worker.max_retries`` instead of blocking every later order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from bridge.core.errors import StoreUnavailable
from bridge.core.logs import fields
from bridge.core.settings import WorkerSettings
from bridge.store.keys import Keys

log = logging.getLogger(__name__)


class HeadRecovery:
    """The recovery part of :class:`~bridge.worker.sequencer.Sequencer`."""

    r: redis.Redis
    keys: Keys
    settings: WorkerSettings
    drain: Callable[..., int]  # RunApply's
    _process_each: Callable[..., list[str]]  # BatchParse's

    def recover(self, now: float | None = None) -> str:
        """Maintenance step: re-process an ingest head stuck unparsed for too long."""
        k = self.keys
        now = time.time() if now is None else now
        head_raw = self.r.lindex(k.ingest_order, 0)
        if head_raw is None:
            self.r.delete(k.head_watch)
            return "empty"
        head = head_raw.decode()
        if self.r.exists(k.parsed(head)):
            self.drain()
            return "drained"
        watch = (self.r.get(k.head_watch) or b"").decode().split()
        if len(watch) != 2 or watch[0] != head:
            self.r.set(k.head_watch, f"{head} {now}")
            return "watching"
        if now - float(watch[1]) < self.settings.stuck_head_s:
            return "waiting"
        log.warning(
            "head.stuck_reprocessed",
            extra=fields(message_id=head, waited_s=round(now - float(watch[1]), 1)),
        )
        self.r.set(k.head_watch, f"{head} {now}")
        # Counted before the attempt: a message that kills its worker every time must
        # still reach max_retries and be dead-lettered, or it blocks every later order.
        self.r.hincrby(k.message(head), "recoveries", 1)
        # The head's batch (its own, or the one of the job that took it) comes along, one
        # message at a time: those messages have no job of their own any more, and each
        # would otherwise wait stuck_head_s in turn.
        leader = (self.r.hget(k.message(head), "leader") or b"").decode() or head
        batch_key = k.batch(leader)
        taken = [m.decode() for m in self.r.lrange(batch_key, 0, -1)]
        try:
            self._process_each([head, *(m for m in taken if m != head)], batch_key)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis failed while recovering the head: {exc}") from exc
        return "reprocessed"
