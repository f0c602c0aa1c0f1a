"""Operators' deletes of worklist items (``worklist delete``, ``worklist purge``), under
the workers' apply lock.

Why the lock: the lock holder plans a run of messages against the items and order states
it reads, then writes them (fenced by its token). A delete between that read and that
write would be undone (the worker writes the item back) or leave an order state that
still counts the deleted item. Holding the same lock (``keys.apply_lock``, ``SET NX PX``
with a token of our own), the delete happens between two runs, never inside one; the
write is fenced by our token like a worker's, and the lock is released only while it is
still ours.

What a delete removes, in one fenced script (the workers' purge, ``store_remove.lua``):
the items with their index entries, and the state of every order the delete left without
items — its state hash (``keys.order(item.order_key)``) and the alias hashes it lists
that still point to it — deleted only while the order's index is still empty. A state
hash with no items would otherwise stay forever (the workers persist it while the order
has items) and keep the order "known" to later messages. The record of a finished order
(``final`` set) is kept: it expires after ``worker.final_order_retention_s`` and is what
stops a late or resent NW from bringing a cancelled order back to the worklist.

A worker that stored an outcome while we held the lock found it busy and left; the next
worker maintenance step (every ``worker.maintenance_interval_s``) applies the parsed
head, or the next message's job does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from bridge.core.errors import StoreUnavailable, TransientError
from bridge.store import lua
from bridge.store.item import WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import OrderRelease, WorklistStore

#: How long a delete waits for the workers to release the apply lock by default. The
#: workers hold it for one run at a time (milliseconds), but keep renewing it while a
#: backlog of parsed messages waits.
LOCK_WAIT_S = 10.0
_RETRY_FIRST_S = 0.01
_RETRY_MAX_S = 0.2


class LockBusy(TransientError):
    """The workers kept the apply lock for the whole wait."""


@dataclass(frozen=True)
class Deleted:
    items: int
    #: Order state hashes (state + aliases) removed because their order has no items left.
    order_states: int


@contextmanager
def apply_lock(
    client: redis.Redis, keys: Keys, ttl_s: float, wait_s: float = LOCK_WAIT_S
) -> Iterator[str]:
    """Hold the workers' apply lock; yields our token (for fenced writes). Retries with a
    short back-off (10 ms doubling to 200 ms: a worker's run is short, and a long sleep
    would lose every race against the next acquire) for ``wait_s``, then raises
    :class:`LockBusy`. Released on exit only if it still holds our token."""
    token = f"admin-{uuid.uuid4().hex}"
    ttl_ms = max(1, int(ttl_s * 1000))
    deadline = time.monotonic() + wait_s
    delay = _RETRY_FIRST_S
    try:
        while not client.set(keys.apply_lock, token, nx=True, px=ttl_ms):
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"the workers kept the apply lock for {wait_s:g} s (a backlog is being "
                    "applied); nothing was deleted: try again, or with a longer --lock-wait"
                )
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
    except redis.RedisError as exc:
        raise StoreUnavailable(f"could not take the apply lock: {exc}") from exc
    try:
        yield token
    finally:
        # Compare-and-delete, then the workers' usual look at the head (its answer is
        # for a worker; ours is left to the maintenance step, see the module docstring).
        release = lua.register(client, "worker", "release_peek")
        release(keys=[keys.apply_lock, keys.ingest_order], args=[token, keys.parsed("")])


def delete_items(
    store: WorklistStore, items: Iterable[WorklistItem], token: str, final_ttl_s: int
) -> Deleted:
    """Delete ``items`` and settle the state of the orders left without items, in one
    call fenced by the apply lock ``token`` (:class:`~bridge.store.worklist_store.FenceLost`
    when it is no longer ours: nothing was written). The workers' purge does the same
    (``store/lua/store_remove.lua``): an open order's state and aliases go at once, a
    finished order's record stays for ``final_ttl_s`` (when it has no TTL yet)."""
    items = list(items)
    release = OrderRelease(tuple(it.order_key for it in items if it.order_key), final_ttl_s, 0)
    removed = store.remove([it.item_id for it in items], (store.keys.apply_lock, token), release)
    return Deleted(items=removed.items, order_states=removed.order_states)
