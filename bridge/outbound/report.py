"""What waits and what happened, for ``mwl-bridge status`` and ``/metrics``.

The backlog is read from Redis at the time of asking, with bounded work: the pending
set (``SCARD``, exact: orders with messages waiting), then for at most ``limit`` of those
orders the length of their line and the creation time of its head (two pipelined round
trips). Beyond ``limit`` orders the message count and the oldest age cover the orders
looked at only, and ``truncated`` says so. The counts (delivered, rejected,
dead-lettered, retried, lost; the last failure's kind and time; the destination the
delivery process reported) are the ``keys.outbound_stats`` hash the delivery keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from bridge.store.keys import Keys

#: Pending orders whose lines a backlog reading looks at, at most.
BACKLOG_SCAN_LIMIT = 2000
#: Counters of ``keys.outbound_stats`` (the ``result`` values of mwl_outbound_messages).
COUNTERS = ("delivered", "rejected", "dead_lettered", "retried", "lost")


@dataclass(frozen=True)
class Backlog:
    messages: int  # waiting, over the orders looked at
    orders: int  # orders with messages waiting (exact)
    oldest_created_at: float | None  # epoch of the oldest waiting message looked at
    truncated: bool  # more orders pending than were looked at

    def oldest_age_s(self, now: float) -> float:
        return max(0.0, now - self.oldest_created_at) if self.oldest_created_at else 0.0


def backlog(client: redis.Redis, keys: Keys, limit: int = BACKLOG_SCAN_LIMIT) -> Backlog:
    orders_total = int(client.scard(keys.outbound_pending))
    orders: list[bytes] = []
    for member in client.sscan_iter(keys.outbound_pending, count=min(limit, 1000)):
        orders.append(member)
        if len(orders) >= limit:
            break
    pipe = client.pipeline(transaction=False)
    for order in orders:
        name = order.decode()
        pipe.llen(keys.outbound_queue(name))
        pipe.lindex(keys.outbound_queue(name), 0)
    replies = pipe.execute()
    lengths, heads = replies[::2], replies[1::2]
    pipe = client.pipeline(transaction=False)
    for head in heads:
        if head:
            pipe.hget(keys.outbound(head.decode()), "created_at")
    created = [float(c) for c in pipe.execute() if c]
    return Backlog(
        messages=sum(int(n) for n in lengths),
        orders=orders_total,
        oldest_created_at=min(created) if created else None,
        truncated=orders_total > len(orders),
    )


def stats(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """The delivery's counts and last events (epoch seconds), and the destination the
    delivery process reported (``None`` when none has)."""
    raw = {k.decode(): v.decode() for k, v in client.hgetall(keys.outbound_stats).items()}

    def epoch(name: str) -> float | None:
        try:
            return float(raw[name]) if raw.get(name) else None
        except ValueError:
            return None

    return {
        **{name: int(raw.get(name, 0)) for name in COUNTERS},
        "last_error": raw.get("last_error", ""),
        "last_error_at": epoch("last_error_at"),
        "last_delivered_at": epoch("last_delivered_at"),
        "destination": raw.get("destination") or None,
        "tls": raw.get("tls") == "1",
        "reported_by": raw.get("reported_by", ""),
        "reported_at": epoch("reported_at"),
    }
