"""The sweep: no outbound message waits forever for a job that will never come.

A worker killed between its write and its enqueue, a job lost with a killed delivery
process (it held the order's lock, which then expires), a scheduled retry lost with
Redis's scheduled-job registry: in each case the order stays in
``keys.outbound_pending`` with nobody working on it. The delivery process's
maintenance step (every ``worker.maintenance_interval_s``) calls :func:`sweep`, which
looks at up to ``batch`` pending orders per call (``SSCAN``, continuing where the last
call stopped, so the work per call is bounded however long the set is) and queues a
delivery job for each order whose lock is free and whose head has been due for
``outbound.sweep_after_s``: due since its creation (never tried) or since its
``next_attempt_at`` (in backoff), and not swept within that time already (``swept_at``,
so a long backlog gets one extra job per order per period, not one per pass). A pending
order with an empty line (a job died before it took the order off the set) or with a
missing head record gets a job too: the job settles both.

An extra job is harmless: it finds the lock busy, or nothing due, and ends.
"""

from __future__ import annotations

import logging

import redis

from bridge.core.errors import StoreUnavailable
from bridge.core.logs import fields
from bridge.core.settings import OutboundSettings
from bridge.intake import outbound as records
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

#: Pending orders looked at per call.
SWEEP_BATCH = 500


def sweep(
    client: redis.Redis, keys: Keys, out: OutboundSettings, now: float, batch: int = SWEEP_BATCH
) -> list[str]:
    """Queue a delivery for every order (of the next ``batch`` pending ones) that nobody
    works on and whose head is overdue; returns those orders."""
    try:
        return _sweep(client, keys, out, now, batch)
    except redis.RedisError as exc:
        raise StoreUnavailable(f"outbound sweep failed: {exc}") from exc


def _sweep(
    client: redis.Redis, keys: Keys, out: OutboundSettings, now: float, batch: int
) -> list[str]:
    cursor = int(client.get(keys.outbound_sweep_cursor) or 0)
    cursor, members = client.sscan(keys.outbound_pending, cursor, count=batch)
    client.set(keys.outbound_sweep_cursor, cursor)
    orders = [m.decode() for m in members]
    if not orders:
        return []
    pipe = client.pipeline(transaction=False)
    for order in orders:
        pipe.exists(keys.outbound_lock(order))
        pipe.lindex(keys.outbound_queue(order), 0)
    replies = pipe.execute()
    free = [
        (order, head.decode() if head else None)
        for order, locked, head in zip(orders, replies[::2], replies[1::2], strict=True)
        if not locked
    ]
    pipe = client.pipeline(transaction=False)
    for _, head in free:
        if head is not None:
            pipe.hmget(keys.outbound(head), "created_at", "next_attempt_at", "swept_at")
    heads = iter(pipe.execute())
    swept: list[str] = []
    for order, head in free:
        if head is None:
            swept.append(order)  # an empty line still pending: the job takes it off
            records.enqueue_delivery(client, keys, out, order, f"s{int(now)}")
            continue
        created, next_at, swept_at = (float(v or 0) for v in next(heads))
        due = max(next_at or created, swept_at)
        if created and now - due < out.sweep_after_s:
            continue
        if created:
            # Only on an existing record (HSET would create a bare one otherwise).
            client.hset(keys.outbound(head), "swept_at", f"{now:.6f}")
        records.enqueue_delivery(client, keys, out, order, f"{head}-s{int(now)}")
        swept.append(order)
    if swept:
        log.warning(
            "outbound.swept",
            extra=fields(orders=len(swept), first=swept[0], after_s=out.sweep_after_s),
        )
    return swept
