"""Operators' deletes of worklist items (``worklist delete``, ``worklist purge``), under
the workers' apply lock.

Why the lock: the lock holder plans a run of messages against the items and order states
it reads, then writes them (fenced by its token). A delete between that read and that
write would be undone (the worker writes the item back) or leave an order state that
still counts the deleted item. Holding the same lock (``keys.apply_lock``, ``SET NX PX``
with a token of our own), the delete happens between two runs, never inside one; the
write is fenced by our token like a worker's, and the lock is released only while it is
still ours.

What a delete removes: the items with their index entries (one fenced store write),
then the state of every order the delete left without items — its state hash
(``keys.order(item.order_key)``) and every alias hash whose ``canonical`` field names
it — in one fenced script that deletes only while the order's index is still empty. A
state hash with no items would otherwise stay forever (the workers persist it while the
order has items) and keep the order "known" to later messages. The record of a
finished order (``final`` set) is kept: it expires on its own
(``worker.final_order_retention_s``) and is what stops a late or resent NW from bringing
a cancelled order back to the worklist.

A worker that stored an outcome while we held the lock found it busy and left; the next
worker maintenance step (every ``worker.maintenance_interval_s``) applies the parsed
head, or the next message's job does.
"""

from __future__ import annotations

import json
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
from bridge.store.worklist_store import FenceLost, WorklistStore

#: How long a delete waits for the workers to release the apply lock by default. The
#: workers hold it for one run at a time (milliseconds), but keep renewing it while a
#: backlog of parsed messages waits.
LOCK_WAIT_S = 10.0
_RETRY_FIRST_S = 0.01
_RETRY_MAX_S = 0.2
_SCAN_CHUNK = 1000


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
    client: redis.Redis, store: WorklistStore, items: Iterable[WorklistItem], token: str
) -> Deleted:
    """Delete ``items`` and the state of the orders left without items, fenced by the
    apply lock ``token`` (:class:`~bridge.store.worklist_store.FenceLost` when it is no
    longer ours: nothing of that step was written)."""
    keys = store.keys
    items = list(items)
    fence = (keys.apply_lock, token)
    n = store.apply(deletes=[it.item_id for it in items], fence=fence)
    orders = {it.order_key for it in items if it.order_key}
    return Deleted(items=n, order_states=_drop_empty_orders(client, keys, orders, token))


def _drop_empty_orders(client: redis.Redis, keys: Keys, orders: set[str], token: str) -> int:
    try:
        pipe = client.pipeline(transaction=False)
        ordered = sorted(orders)
        for order in ordered:
            pipe.scard(keys.index("order", order))
            pipe.hget(keys.order(order), "final")
        replies = pipe.execute()
        empty = {
            order
            for order, count, final in zip(ordered, replies[0::2], replies[1::2], strict=True)
            if count == 0 and not final
        }
        if not empty:
            return 0
        hashes = _state_hashes(client, keys, empty)
        groups = [[keys.index("order", o), sorted(hashes[o])] for o in sorted(empty)]
        script = lua.register(client, "store", "drop_empty_orders")
        deleted = int(script(keys=[keys.apply_lock], args=[token, json.dumps(groups)]))
    except redis.RedisError as exc:
        raise StoreUnavailable(f"order state cleanup failed: {exc}") from exc
    if deleted < 0:
        raise FenceLost("the apply lock was lost before the order states were removed")
    return deleted


def _state_hashes(client: redis.Redis, keys: Keys, orders: set[str]) -> dict[str, set[str]]:
    """Per order: its state hash and every alias hash pointing to it (``canonical``).
    Aliases are found by their field, not by their key's format, so any order identity
    scheme works; one SCAN of the order hashes per delete."""
    out = {order: {keys.order(order)} for order in orders}
    batch: list[bytes] = []

    def look(names: list[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hget(name, "canonical")
        for name, canonical in zip(names, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(canonical, bytes) and canonical.decode() in out:
                out[canonical.decode()].add(name.decode())

    for name in client.scan_iter(match=keys.order("*"), count=_SCAN_CHUNK):
        batch.append(name)
        if len(batch) >= _SCAN_CHUNK:
            look(batch)
            batch = []
    if batch:
        look(batch)
    return out
