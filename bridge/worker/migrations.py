"""Upgrades of what earlier releases left in Redis, run by a worker before it applies.

Schema 2 (order identity, issue #11): orders were named ``<MSH-3^MSH-4>|P|<number>``
(the sender, and the placer or filler number without its namespace); they are now named
``P|<number>^<namespace>`` whatever interface a message arrives through (or
``<sender>|P|…`` with ``order_scope: sender``). Items keep the order key and ids they
have, so nothing is re-keyed: for every order of the earlier layout the upgrade writes
the new, namespace-less name as an alias marked ``legacy`` (the planner accepts such an
alias for a number that now comes with a namespace). When two senders used the same
number, the alias is marked ``ambiguous`` instead and each sender's own old name keeps
finding its order (a message is then matched by its sender, as before the upgrade; a
site in that situation should say ``order_scope: sender``).

Schema 3 (worklist hygiene, issue #12): a canonical order hash lists the aliases that
point to it in its ``aliases`` field (JSON), which the planner now keeps, so that the
state of an order left without items is settled with its aliases without a scan of every
order (``store/lua/release_orders.lua``). The upgrade fills the field for orders written
before, from the alias hashes' ``canonical`` field.

The upgrade takes the workers' apply lock and records the schema version last
(``keys.schema``): it runs once, and again after a crash in the middle (each step is
idempotent). No message is applied before it: the script that takes the apply lock
(``worker/lua/acquire.lua``) refuses while the version is not current, and the worker
then runs the upgrade first.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator

import redis

from bridge.core.errors import StoreUnavailable
from bridge.core.logs import fields
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_BATCH = 500
_LOCK_MS = 30_000

# Release the lock only while it still holds our token.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def current(client: redis.Redis, keys: Keys) -> int:
    raw = client.get(keys.schema)
    return int(raw) if raw else 1


def upgrade(client: redis.Redis, keys: Keys, wait_s: float = 0.0) -> int | None:
    """Bring the store to :data:`SCHEMA_VERSION`; returns how many orders got an alias
    (0 when there was nothing to do), or None when the apply lock stayed taken for
    ``wait_s`` (another worker holds it: the caller tries again later; nothing is applied
    meanwhile, see ``worker/lua/acquire.lua``). Raises StoreUnavailable on Redis errors.
    """
    try:
        if current(client, keys) >= SCHEMA_VERSION:
            return 0
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while not client.set(keys.apply_lock, token, nx=True, px=_LOCK_MS):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)
        try:
            if current(client, keys) >= SCHEMA_VERSION:
                return 0
            aliased = ambiguous = 0
            if current(client, keys) < 2:
                aliased, ambiguous = _alias_legacy_orders(client, keys, token)
                client.set(keys.schema, 2)
            listed = _list_aliases(client, keys)
            client.set(keys.schema, SCHEMA_VERSION)
        finally:
            client.eval(_RELEASE_LUA, 1, keys.apply_lock, token)
    except redis.RedisError as exc:
        raise StoreUnavailable(f"store upgrade failed: {exc}") from exc
    log.info(
        "store.upgraded",
        extra=fields(
            schema=SCHEMA_VERSION,
            orders_aliased=aliased,
            ambiguous=ambiguous,
            alias_lists=listed,
        ),
    )
    if ambiguous:
        log.warning("store.upgrade_ambiguous_numbers", extra=fields(numbers=ambiguous))
    return aliased


def _legacy_names(client: redis.Redis, keys: Keys) -> Iterator[list[str]]:
    """Batches of order names in the earlier layout: ``<sender>|P|n`` / ``<sender>|F|n``."""
    prefix = keys.order("")
    batch: list[str] = []
    for raw in client.scan_iter(match=keys.order("*"), count=1000):
        name = raw.decode()[len(prefix) :]
        parts = name.split("|")
        if len(parts) == 3 and parts[1] in ("P", "F") and parts[2]:
            batch.append(name)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _alias_legacy_orders(client: redis.Redis, keys: Keys, token: str) -> tuple[int, int]:
    aliased = ambiguous = 0
    for batch in _legacy_names(client, keys):
        client.pexpire(keys.apply_lock, _LOCK_MS)  # a large store takes a while
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.hget(keys.order(name), "canonical")
            pipe.pttl(keys.order(name))
        replies = pipe.execute()
        # new name → (the canonical names it would point at, the longest TTL)
        targets: dict[str, tuple[set[str], int]] = {}
        for name, canonical, ttl in zip(batch, replies[0::2], replies[1::2], strict=True):
            _sender, kind, number = name.split("|")
            seen, longest = targets.get(f"{kind}|{number}", (set(), 0))
            seen.add(canonical.decode() if canonical else name)
            ttl = int(ttl)
            targets[f"{kind}|{number}"] = (seen, -1 if -1 in (ttl, longest) else max(ttl, longest))
        pipe = client.pipeline(transaction=False)
        for alias in targets:
            pipe.hmget(keys.order(alias), "canonical", "ambiguous")
        existing = pipe.execute()
        pipe = client.pipeline(transaction=True)
        for (alias, (canonicals, ttl)), (have, marked) in zip(
            targets.items(), existing, strict=True
        ):
            key = keys.order(alias)
            if marked:
                continue
            canonical = next(iter(canonicals))
            if len(canonicals) > 1 or (have is not None and have.decode() != canonical):
                # Two senders, one number: no global name may pick one of them.
                pipe.delete(key)
                pipe.hset(key, mapping={"ambiguous": "1"})
                ambiguous += 1
                continue
            if have is None:
                pipe.hset(key, mapping={"canonical": canonical, "legacy": "1"})
                if ttl > 0:
                    pipe.pexpire(key, ttl)
                aliased += 1
        pipe.execute()
    return aliased, ambiguous


def _list_aliases(client: redis.Redis, keys: Keys) -> int:
    """Schema 3: write each canonical order's ``aliases`` field from the alias hashes that
    point to it; returns how many canonical hashes got one. Merged with what the field
    already holds (idempotent); a canonical hash that no longer exists is not created."""
    prefix = keys.order("")
    pointing: dict[str, set[str]] = {}
    names = [
        raw.decode()[len(prefix) :] for raw in client.scan_iter(match=keys.order("*"), count=1000)
    ]
    for start in range(0, len(names), _BATCH):
        batch = names[start : start + _BATCH]
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.hget(keys.order(name), "canonical")
        for name, canonical in zip(batch, pipe.execute(), strict=True):
            if canonical and canonical.decode() != name:
                pointing.setdefault(canonical.decode(), set()).add(name)
    targets = sorted(pointing)
    written = 0
    for start in range(0, len(targets), _BATCH):
        client.pexpire(keys.apply_lock, _LOCK_MS)  # a large store takes a while
        batch = targets[start : start + _BATCH]
        pipe = client.pipeline(transaction=False)
        for canonical in batch:
            pipe.exists(keys.order(canonical))
            pipe.hget(keys.order(canonical), "aliases")
        replies = pipe.execute()
        pipe = client.pipeline(transaction=True)
        for canonical, exists, listed in zip(batch, replies[0::2], replies[1::2], strict=True):
            if not exists:
                continue
            merged = set(json.loads(listed)) if listed else set()
            merged |= pointing[canonical]
            # HSET keeps the hash's TTL: a finished order still expires when it would have.
            pipe.hset(keys.order(canonical), "aliases", json.dumps(sorted(merged)))
            written += 1
        pipe.execute()
    return written
