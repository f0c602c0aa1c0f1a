"""The worklist store in Redis: one JSON record per Scheduled Procedure Step plus indexes.

Layout (templates in :mod:`bridge.store.keys`):

* ``item:<id>`` — the :class:`~bridge.worklist.WorklistItem` as JSON;
* ``idx:start`` — sorted set, score = SPS start as the number ``YYYYMMDDHHMMSS``;
* ``idx:<field>:<value>`` — sets of ids for the equality indexes in :data:`INDEXED_FIELDS`;
* ``itemidx:<id>`` — the index keys an item is in, so an update removes stale entries;
* ``expiry`` — sorted set, score = epoch second from which a finished (or idle-hidden)
  item is purged by the workers' hygiene (``bridge.worker.hygiene``).

Writes go through one Lua script per batch (``lua/store_apply.lua``), so a reader
never sees an item without its indexes or an index entry without its item, and all
items of one HL7 message change together. The scripts touch keys they compute, so the
store needs a single Redis (or Sentinel / a managed primary), not Redis Cluster.

Reads plan a query from index cardinalities: the smallest candidate set drives, the
other criteria filter it server-side (``SMISMEMBER`` / ``ZMSCORE``), and only then are
items loaded — a query loads every item only when it is truly universal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge.core.codes import SpsStatus
from bridge.core.errors import BridgeError, StoreUnavailable, TransientError
from bridge.store import lua
from bridge.store.item import WorklistItem
from bridge.store.keys import Keys

#: Equality indexes: field name → what it holds.
INDEXED_FIELDS: dict[str, str] = {
    "station": "Scheduled Station AE Title (0040,0001), each value of a multi-valued one",
    "modality": "Modality (0008,0060) of the SPS",
    "spsid": "Scheduled Procedure Step ID (0040,0009)",
    "pid": "Patient ID (0010,0020)",
    "acc": "Accession Number (0008,0050)",
    "rpid": "Requested Procedure ID (0040,1001)",
    "suid": "Study Instance UID (0020,000D)",
    "status": "Scheduled Procedure Step Status (0040,0020)",
    "worklist": "logical worklist label (per called AE); '' = default",
    "order": "order key (sender + placer/filler order numbers)",
    "idle": "what the idle timeout did to a stale item (hide, discontinue, none); no entry "
    "for the others",
}

_LOAD_CHUNK = 256

class FenceLost(TransientError):
    """A fenced write found its lock token gone (another worker took over)."""


class AlreadyStored(BridgeError):
    """:meth:`WorklistStore.insert_new` found an item it must not overwrite: one with the
    same id, or with the same Study Instance UID and SPS ID. Nothing was written."""

    def __init__(self, message: str, same_id: bool) -> None:
        super().__init__(message)
        #: True: an item with this id exists; False: same Study Instance UID + SPS ID.
        self.same_id = same_id


@dataclass(frozen=True)
class OrderRelease:
    """What becomes of the state of orders that a removal leaves without items
    (``lua/release_orders.lua``): a finished order keeps its record (a hash without a TTL
    gets ``final_ttl_s``); any other order's state and aliases get ``open_ttl_s``, or are
    deleted at once when it is 0."""

    #: Canonical order names (``WorklistItem.order_key``) of the removed items.
    orders: tuple[str, ...]
    final_ttl_s: int
    open_ttl_s: int

    def doc(self) -> dict[str, Any]:
        return {
            "orders": sorted(set(self.orders)),
            "final_ttl": int(self.final_ttl_s),
            "open_ttl": int(self.open_ttl_s),
        }


@dataclass(frozen=True)
class Removed:
    items: int
    #: Order state and alias hashes given a TTL or deleted (see :class:`OrderRelease`).
    order_states: int


@dataclass(frozen=True)
class CandidateQuery:
    """What the indexes can answer; the pure matcher decides the rest.

    ``equals`` maps an index field to accepted values (OR within a field, AND across
    fields); ``exclude`` removes items whose field has one of the values (e.g. hidden
    SPS statuses); ``start_min``/``start_max`` bound the SPS start (inclusive,
    ``YYYYMMDDHHMMSS`` numbers).
    """

    equals: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    start_min: int | None = None
    start_max: int | None = None

    @property
    def has_range(self) -> bool:
        return self.start_min is not None or self.start_max is not None


def batch_doc(
    keys: Keys,
    upserts: Iterable[WorklistItem] = (),
    deletes: Iterable[str] = (),
    expire_at: dict[str, float] | None = None,
) -> dict[str, Any] | None:
    """The ``apply_batch`` argument (``lua/apply_batch.lua``) for these writes, or None
    when there is nothing to do."""
    expire_at = expire_at or {}
    k = keys
    batch = {
        "upserts": [
            {
                "id": it.item_id,
                "key": k.item(it.item_id),
                "idxkey": k.item_indexes(it.item_id),
                "json": it.to_json(),
                "indexes": sorted({k.index(f, v) for f, v in it.index_entries()}),
                "score": it.start_key,
                "expire_at": int(expire_at.get(it.item_id, 0)),
            }
            for it in upserts
        ],
        "deletes": [{"id": i, "key": k.item(i), "idxkey": k.item_indexes(i)} for i in deletes],
    }
    if not batch["upserts"] and not batch["deletes"]:
        return None
    # cjson decodes [] as an empty table, which ipairs handles; keep explicit lists.
    return batch


def batch_json(
    keys: Keys,
    upserts: Iterable[WorklistItem] = (),
    deletes: Iterable[str] = (),
    expire_at: dict[str, float] | None = None,
) -> str | None:
    """:func:`batch_doc` as JSON, or None when there is nothing to do."""
    doc = batch_doc(keys, upserts, deletes, expire_at)
    return None if doc is None else json.dumps(doc)


class WorklistStore:
    """Indexed worklist items in Redis (sync client: workers, SCP threads, admin CLI)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self._keys = keys
        self._apply = lua.register(client, "store", "store_apply")
        self._insert_new = lua.register(client, "store", "insert_new")
        self._remove = lua.register(client, "store", "store_remove")

    @property
    def keys(self) -> Keys:
        return self._keys

    # -- writes -----------------------------------------------------------------------
    def apply(
        self,
        upserts: Iterable[WorklistItem] = (),
        deletes: Iterable[str] = (),
        expire_at: dict[str, float] | None = None,
        fence: tuple[str, str] | None = None,
    ) -> int:
        """Atomically write ``upserts`` (with their indexes) and remove ``deletes``.

        ``expire_at`` maps item ids to the epoch second from which the workers' hygiene
        removes them (finished items); items not in it lose any earlier expiry.
        ``fence`` = (key, token): write only while ``key`` still holds ``token`` (the
        workers' apply lock), else raise :class:`FenceLost` and write nothing.
        """
        batch = batch_json(self._keys, upserts, deletes, expire_at)
        if batch is None:
            return 0
        k = self._keys
        keys = [k.index_start, k.expiry]
        args = [batch]
        if fence is not None:
            keys.append(fence[0])
            args.append(fence[1])
        try:
            written = int(self._apply(keys=keys, args=args))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"worklist write failed: {exc}") from exc
        if written < 0:
            raise FenceLost("the apply lock was lost before the worklist write")
        return written

    def insert_new(
        self,
        items: list[WorklistItem],
        order_states: dict[str, dict[str, str]],
        fence: tuple[str, str],
        expire_at: dict[str, float] | None = None,
    ) -> int:
        """Write ``items`` only if none exists yet, with ``order_states`` (order hash key →
        fields to set; each made persistent, as an order with items is), in one fenced
        step (``lua/insert_new.lua``): all or nothing.

        "Exists" means an item with the same id, or with the same Study Instance UID
        and Scheduled Procedure Step ID (the ``suid`` and ``spsid`` indexes): raises
        :class:`AlreadyStored`. Raises :class:`FenceLost` when ``fence`` = (key, token)
        no longer holds the token. Returns the number of items written.
        """
        batch = batch_json(self._keys, items, (), expire_at)
        if batch is None:
            return 0
        k = self._keys
        checks = []
        for it in items:
            suid = str(it.attrs.get("StudyInstanceUID") or "")
            spsid = str(it.sps.get("ScheduledProcedureStepID") or "")
            checks.append([k.item(it.item_id), k.index("suid", suid), k.index("spsid", spsid)])
        states = [[key, fields] for key, fields in order_states.items()]
        try:
            written = int(
                self._insert_new(
                    keys=[k.index_start, k.expiry, fence[0]],
                    args=[fence[1], batch, json.dumps(checks), json.dumps(states)],
                )
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"worklist write failed: {exc}") from exc
        if written == -1:
            raise FenceLost("the apply lock was lost before the worklist write")
        if written in (-2, -3):
            raise AlreadyStored(
                "an item with this id exists"
                if written == -3
                else "an item with this Study Instance UID and SPS ID exists",
                same_id=written == -3,
            )
        return written

    def upsert(self, item: WorklistItem) -> None:
        self.apply(upserts=[item])

    def delete(self, item_ids: Iterable[str]) -> int:
        return self.apply(deletes=list(item_ids))

    def remove(
        self,
        item_ids: Iterable[str],
        fence: tuple[str, str] | None = None,
        release: OrderRelease | None = None,
    ) -> Removed:
        """Atomically delete items with their index and expiry entries and, with
        ``release``, settle the state of the orders left without items
        (:class:`OrderRelease`). ``fence`` as for :meth:`apply`."""
        batch = batch_json(self._keys, deletes=list(item_ids))
        if batch is None:
            return Removed(0, 0)
        k = self._keys
        keys = [k.index_start, k.expiry]
        rel = release or OrderRelease((), 0, 0)
        args = [batch, k.order(""), k.index("order", ""), json.dumps(rel.doc())]
        if fence is not None:
            keys.append(fence[0])
            args.append(fence[1])
        try:
            reply = self._remove(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"worklist removal failed: {exc}") from exc
        if not isinstance(reply, list):
            raise FenceLost("the apply lock was lost before the worklist removal")
        return Removed(int(reply[0]), int(reply[1]))

    def expired_ids(self, now: float, limit: int) -> list[str]:
        """Ids whose purge time (the ``expiry`` score) is ``now`` or earlier, soonest
        first, at most ``limit``."""
        try:
            raw = self._r.zrangebyscore(self._keys.expiry, "-inf", now, start=0, num=limit)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [i.decode() for i in raw]

    # -- reads ------------------------------------------------------------------------
    def get(self, item_id: str) -> WorklistItem | None:
        try:
            raw = self._r.get(self._keys.item(item_id))
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return WorklistItem.from_json(raw) if raw else None

    def ids_for(self, fld: str, value: str) -> list[str]:
        """Ids in one equality index (e.g. every item of an order)."""
        try:
            return sorted(m.decode() for m in self._r.smembers(self._keys.index(fld, value)))
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def count(self) -> int:
        try:
            return int(self._r.zcard(self._keys.index_start))
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def candidate_ids(self, query: CandidateQuery) -> list[str]:
        """Ids of the items that satisfy every index criterion, in SPS start order
        when the range index drove the plan, else in no particular order."""
        try:
            return self._candidate_ids(query)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"worklist query failed: {exc}") from exc

    def _candidate_ids(self, query: CandidateQuery) -> list[str]:
        k = self._keys
        lo = "-inf" if query.start_min is None else query.start_min
        hi = "+inf" if query.start_max is None else query.start_max
        fields = [(f, vals) for f, vals in query.equals.items()]
        if any(not vals for _, vals in fields):
            return []  # a field that must equal one of no values matches nothing

        # Size every candidate source in one round trip and let the smallest drive.
        pipe = self._r.pipeline(transaction=False)
        for f, vals in fields:
            for v in vals:
                pipe.scard(k.index(f, v))
        pipe.zcount(k.index_start, lo, hi)
        sizes = pipe.execute()
        range_size = int(sizes[-1])
        field_sizes: list[int] = []
        pos = 0
        for _, vals in fields:
            field_sizes.append(sum(int(s) for s in sizes[pos : pos + len(vals)]))
            pos += len(vals)

        driver: int | None = None  # index into fields; None = the start range drives
        best = range_size
        for i, size in enumerate(field_sizes):
            if size < best or (size == best and not query.has_range):
                driver, best = i, size
        if best == 0:
            return []

        if driver is None:
            ids = [m.decode() for m in self._r.zrangebyscore(k.index_start, lo, hi)]
        else:
            f, vals = fields[driver]
            if len(vals) == 1:
                ids = [m.decode() for m in self._r.smembers(k.index(f, vals[0]))]
            else:
                ids = sorted({m.decode() for m in self._r.sunion([k.index(f, v) for v in vals])})

        filters = [fv for i, fv in enumerate(fields) if i != driver]
        if not ids:
            return []
        if filters or query.exclude or (driver is not None and query.has_range):
            ids = self._filter(ids, filters, query, check_range=driver is not None, lo=lo, hi=hi)
        return ids

    def _filter(
        self,
        ids: list[str],
        filters: list[tuple[str, tuple[str, ...]]],
        query: CandidateQuery,
        check_range: bool,
        lo: float | str,
        hi: float | str,
    ) -> list[str]:
        k = self._keys
        excluded = [(f, v) for f, vals in query.exclude.items() for v in vals]
        if excluded and (filters or check_range):
            # Positive criteria first, exclusions on the survivors only: the hidden
            # statuses are then checked on a few ids, not on the whole driver set.
            survivors = self._filter(ids, filters, CandidateQuery(), check_range, lo, hi)
            if not survivors:
                return []
            return self._filter(survivors, [], query, False, lo, hi)
        pipe = self._r.pipeline(transaction=False)
        for f, vals in filters:
            for v in vals:
                pipe.smismember(k.index(f, v), ids)
        for f, v in excluded:
            pipe.smismember(k.index(f, v), ids)
        if check_range:
            pipe.zmscore(k.index_start, ids)
        results = pipe.execute()
        keep = [True] * len(ids)
        pos = 0
        for _, vals in filters:
            per_value = results[pos : pos + len(vals)]
            pos += len(vals)
            for n in range(len(ids)):
                keep[n] = keep[n] and any(bool(r[n]) for r in per_value)
        for _ in excluded:
            flags = results[pos]
            pos += 1
            for n in range(len(ids)):
                keep[n] = keep[n] and not flags[n]
        if check_range:
            scores = results[pos]
            lo_v = float("-inf") if lo == "-inf" else float(lo)
            hi_v = float("inf") if hi == "+inf" else float(hi)
            for n, score in enumerate(scores):
                keep[n] = keep[n] and score is not None and lo_v <= score <= hi_v
        return [i for i, ok in zip(ids, keep, strict=True) if ok]

    def load(self, ids: list[str]) -> Iterator[WorklistItem]:
        """Items for ``ids`` in that order, fetched in chunks; vanished ids are skipped."""
        for _raw, item in self.load_raw(ids):
            yield item

    def load_raw(self, ids: list[str]) -> Iterator[tuple[bytes, WorklistItem]]:
        """Like :meth:`load`, also yielding each item's stored JSON bytes (the SCP keys
        its encoded-response cache on them, so any change of the item misses)."""
        for start in range(0, len(ids), _LOAD_CHUNK):
            chunk = ids[start : start + _LOAD_CHUNK]
            try:
                raws = self._r.mget([self._keys.item(i) for i in chunk])
            except redis.RedisError as exc:
                raise StoreUnavailable(f"worklist read failed: {exc}") from exc
            for raw in raws:
                if raw:
                    yield raw, WorklistItem.from_json(raw)

    def find(self, query: CandidateQuery) -> Iterator[WorklistItem]:
        return self.load(self.candidate_ids(query))


def status_counts(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Item count per SPS status (every defined term, zeros included), from the store's
    ``idx:status:<status>`` sets: one SCARD each, never a scan of the keyspace."""
    statuses = [str(s) for s in SpsStatus]
    pipe = client.pipeline(transaction=False)
    for status in statuses:
        pipe.scard(keys.index("status", status))
    return {s: int(n) for s, n in zip(statuses, pipe.execute(), strict=True)}


