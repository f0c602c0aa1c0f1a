"""Worklist hygiene: the workers' maintenance keeps stale exams out of the worklist (the
way dcm4chee's per-status MWL delete delay and idle timeout, or Orthanc's housekeeping,
do). A worklist that fills with old entries makes technologists pick the wrong patient.

Each worker's maintenance step (every ``worker.maintenance_interval_s``) runs one pass:

1. **Retention.** An item in a final status (``FINAL_SPS_STATUSES``) is purged
   ``worker.retention_<status>_s`` after its last update: the planner scores it in the
   store's ``expiry`` set whenever it writes it, so every update re-arms it. An item the
   idle timeout hid is purged ``worker.idle_hidden_retention_s`` after that. A purge
   deletes the item with its index entries and settles the state of an order left
   without items (:class:`~bridge.store.worklist_store.OrderRelease`): a finished order
   keeps its record (it stops a late NW from bringing the exam back) until it expires,
   another order's state expires ``worker.order_state_retention_s`` later.
2. **Idle timeout** (off by default). An item still SCHEDULED
   ``worker.idle_scheduled_after_h`` hours after the later of its SPS start (local time,
   ``worker.local_timezone``) and its creation, or still STARTED
   ``worker.idle_started_after_h`` hours after its last update, gets
   ``worker.idle_action``: ``hide`` (hidden from every query, purged after
   ``idle_hidden_retention_s``), ``discontinue`` (DISCONTINUED, purged after
   ``retention_discontinued_s``) or ``none`` (logged and counted, once). The item keeps
   what it was (:attr:`~bridge.store.item.WorklistItem.idle`), and the next message of the
   RIS for its order is planned on that (:func:`bridge.worker.lifecycle.ris_view`): the
   timeout never overrides what the RIS says next.

Why under the apply lock: its holder plans a run of messages against the items it reads
and then writes them, fenced by its token; a hygiene write in between would be undone,
or would override the RIS. A pass takes the same lock (``SET NX PX`` with a token of its
own), reads under it, writes fenced by it and releases it only while it is still its
own. When the lock is busy the pass does nothing and the next one tries again: the line
of orders never waits for hygiene. A worker that stored an outcome while the pass held
the lock left it to the holder; the release tells (``PassResult.head_parsed``) and the
caller then drains the line.

Candidates come from the indexes, never from loading every item: SCHEDULED ones from
the status index and the ``idx:start`` range up to the cutoff (the smaller drives, the
other filters inside Redis), STARTED ones from the status index, both without the items
the timeout already acted on (``idx:idle:<action>``; items only flagged by ``none`` come
back when the action changes). Only those are loaded, at most
``_LOAD_ROUNDS`` batches of ``worker.hygiene_batch_size`` per status, and at most one
batch is acted on per pass. What a pass did is counted (``mwl_items_expired``) and kept
in ``keys.hygiene`` with the settings in effect, for ``mwl-bridge status``
(:func:`report`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from bridge.core import localzone, metrics
from bridge.core.codes import FINAL_SPS_STATUSES, SpsStatus
from bridge.core.errors import StoreUnavailable
from bridge.core.logs import fields
from bridge.core.settings import WorkerSettings
from bridge.store import lua
from bridge.store.item import WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import (
    CandidateQuery,
    FenceLost,
    OrderRelease,
    WorklistStore,
    status_counts,
)
from bridge.worker.lifecycle import STATUS_KEY, retention_s

log = logging.getLogger(__name__)

#: ``worker.idle_action`` values.
IDLE_ACTIONS: tuple[str, ...] = ("hide", "discontinue", "none")
#: The ``action`` label of ``mwl_items_expired`` (and of the counters in ``keys.hygiene``)
#: per idle action; a purge is ``purged``.
ACTION_LABELS: dict[str, str] = {"hide": "hidden", "discontinue": "discontinued", "none": "none"}
COUNTED_ACTIONS: tuple[str, ...] = ("purged", "hidden", "discontinued", "none")
#: Candidates loaded per status and pass: at most this many batches. The indexes cannot
#: rule out everything (an order created an hour ago for a start long past, a STARTED
#: item updated recently), and those must neither hold back the items behind them
#: forever nor make a pass load without bound.
_LOAD_ROUNDS = 4
_STATUS_LABELS = frozenset(str(s) for s in SpsStatus)


def _status_label(status: str) -> str:
    """A closed label set: a status outside the DICOM defined terms counts as ``other``."""
    return status if status in _STATUS_LABELS else "other"


@dataclass
class PassResult:
    """What one hygiene pass did."""

    #: The apply lock was taken by someone else: nothing was read or written.
    busy: bool = False
    #: On release the ingest head was parsed and waiting: the caller must drain the line.
    head_parsed: bool = False
    #: Items purged, by their status.
    purged: Counter[str] = field(default_factory=Counter)
    #: Items the idle timeout acted on, by (status before, action label).
    idle: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Order state hashes given a TTL or deleted by the purge.
    order_states: int = 0
    #: Items loaded to decide (the purge's and the idle timeout's candidates only).
    loaded: int = 0


def local_key(epoch: float, zone: ZoneInfo) -> int:
    """``epoch`` as the store's SPS start score: local ``YYYYMMDDHHMMSS``."""
    return int(datetime.fromtimestamp(epoch, zone).strftime("%Y%m%d%H%M%S"))


def local_epoch(key: int, zone: ZoneInfo) -> float | None:
    """A store start score (local ``YYYYMMDDHHMMSS``) as epoch seconds; None for an item
    without a valid start date (score 0)."""
    text = f"{key:014d}"
    try:
        moment = datetime(
            int(text[0:4]), int(text[4:6]), int(text[6:8]),
            int(text[8:10]), int(text[10:12]), int(text[12:14]), tzinfo=zone,
        )  # fmt: skip
    except ValueError:
        return None
    return moment.timestamp()


def settings_doc(settings: WorkerSettings) -> dict[str, Any]:
    """The hygiene settings as ``mwl-bridge status`` shows them."""
    return {
        "retention_s": {str(s): retention_s(settings, str(s)) for s in sorted(FINAL_SPS_STATUSES)},
        "idle_scheduled_after_h": settings.idle_scheduled_after_h,
        "idle_started_after_h": settings.idle_started_after_h,
        "idle_action": settings.idle_action,
        "idle_hidden_retention_s": settings.idle_hidden_retention_s,
        "order_state_retention_s": settings.order_state_retention_s,
        "final_order_retention_s": settings.final_order_retention_s,
        "hygiene_batch_size": settings.hygiene_batch_size,
        "maintenance_interval_s": settings.maintenance_interval_s,
        "local_timezone": localzone.resolve(settings.local_timezone).name,
    }


class Hygiene:
    """One worker process's hygiene passes (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        store: WorklistStore,
        settings: WorkerSettings,
        name: str = "",
    ) -> None:
        self.r = client
        self.keys = keys
        self.store = store
        self.settings = settings
        self.zone = localzone.resolve(settings.local_timezone).zone
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._release_peek = lua.register(client, "worker", "release_peek")
        self._published = False

    def run(self, now: float) -> PassResult:
        """One pass at time ``now`` (epoch seconds), under the apply lock if it is free."""
        k = self.keys
        s = self.settings
        token = f"hygiene-{uuid.uuid4().hex}"
        ttl_ms = max(1, int(s.apply_lock_ttl_s * 1000))
        try:
            self._publish(now)
            idle_on = s.idle_scheduled_after_h > 0 or s.idle_started_after_h > 0
            if not idle_on and not self.r.zcount(k.expiry, "-inf", now):
                # Nothing due: no lock taken, nothing written (every worker runs a pass
                # every few seconds; with appendfsync always each write is an fsync).
                return PassResult()
            if not self.r.set(k.apply_lock, token, nx=True, px=ttl_ms):
                log.debug("hygiene.lock_busy")
                return PassResult(busy=True)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"hygiene could not start a pass: {exc}") from exc
        result = PassResult()
        fence = (k.apply_lock, token)
        try:
            self._purge(now, fence, result)
            self._idle(now, fence, result)
        except FenceLost:
            # Held longer than the TTL (a slow Redis) and a worker took over: what was not
            # written is left for the next pass.
            log.warning("hygiene.lock_lost")
        except redis.RedisError as exc:
            raise StoreUnavailable(f"hygiene pass failed: {exc}") from exc
        finally:
            try:
                result.head_parsed = bool(
                    self._release_peek(
                        keys=[k.apply_lock, k.ingest_order], args=[token, k.parsed("")]
                    )
                )
            except redis.RedisError:
                # The lock then expires on its own within apply_lock_ttl_s.
                log.warning("hygiene.release_failed")
        return result

    # -- retention ------------------------------------------------------------------------
    def _purge(self, now: float, fence: tuple[str, str], result: PassResult) -> None:
        s = self.settings
        ids = self.store.expired_ids(now, s.hygiene_batch_size)
        if not ids:
            return
        loaded = {it.item_id: it for it in self.store.load(ids)}
        result.loaded += len(loaded)
        live = [it for it in loaded.values() if not _purgeable(it)]
        if live:
            # Never delete an item the RIS left live: an expiry entry it should not have
            # (written by hand, or by a bug) is dropped instead, loudly.
            self.store.apply(upserts=live, fence=fence)
            for it in live:
                log.warning(
                    "worklist.expiry_on_live_item", extra=fields(item=it.item_id, status=it.status)
                )
        spared = {it.item_id for it in live}
        doomed = [i for i in ids if i not in spared]
        if not doomed:
            return
        orders = tuple(sorted({loaded[i].order_key for i in doomed if i in loaded} - {""}))
        release = OrderRelease(orders, s.final_order_retention_s, s.order_state_retention_s)
        removed = self.store.remove(doomed, fence=fence, release=release)
        counts = Counter(_status_label(loaded[i].status) for i in doomed if i in loaded)
        result.purged.update(counts)
        result.order_states += removed.order_states
        self._count(now, {("purged", status): n for status, n in counts.items()})
        log.info(
            "worklist.purged",
            extra=fields(
                items=removed.items,
                order_states=removed.order_states,
                by_status=",".join(f"{st}:{n}" for st, n in sorted(counts.items())),
            ),
        )

    # -- idle timeout ---------------------------------------------------------------------
    def _idle(self, now: float, fence: tuple[str, str], result: PassResult) -> None:
        s = self.settings
        action = s.idle_action
        changed: list[WorklistItem] = []
        expire_at: dict[str, float] = {}
        counts: Counter[tuple[str, str]] = Counter()
        records: list[dict[str, Any]] = []  # logged once written, so a log line is true
        for status, after_h in (
            (SpsStatus.SCHEDULED, s.idle_scheduled_after_h),
            (SpsStatus.STARTED, s.idle_started_after_h),
        ):
            budget = s.hygiene_batch_size - len(changed)
            if after_h <= 0 or budget <= 0:
                continue
            for it in self._idle_candidates(status, now - after_h * 3600, budget, result):
                before = it.status
                it.extra["idle"] = {"action": action, "at": now, "status": before,
                                    "hidden": it.hidden}  # fmt: skip
                if action == "hide":
                    it.hidden = True
                    expire_at[it.item_id] = now + s.idle_hidden_retention_s
                elif action == "discontinue":
                    it.sps[STATUS_KEY] = SpsStatus.DISCONTINUED.value
                    expire_at[it.item_id] = now + retention_s(s, SpsStatus.DISCONTINUED)
                if action != "none":
                    it.updated_at = now  # a change of the item: its retention counts from here
                changed.append(it)
                counts[(_status_label(before), ACTION_LABELS[action])] += 1
                records.append(fields(item=it.item_id, status=before, action=action,
                                      after_h=after_h))  # fmt: skip
        if not changed:
            return
        self.store.apply(upserts=changed, expire_at=expire_at, fence=fence)
        for record in records:
            log.info("worklist.idle", extra=record)
        result.idle.update(counts)
        self._count(now, {(label, status): n for (status, label), n in counts.items()})

    def _idle_candidates(
        self, status: SpsStatus, cutoff: float, budget: int, result: PassResult
    ) -> list[WorklistItem]:
        """Items of ``status`` idle since ``cutoff`` or earlier, at most ``budget``."""
        action = self.settings.idle_action
        # Items the timeout already acted on drop out; those it only flagged (``none``)
        # come back once the action is changed to one that does something: a trial
        # run with ``none`` must not exempt them for good.
        marked = tuple(a for a in IDLE_ACTIONS if a != "none" or action == "none")
        query = CandidateQuery(
            equals={"status": (status.value,)},
            exclude={"idle": marked},
            # SCHEDULED counts from the later of start and creation: an item starting
            # after the cutoff cannot be idle yet, so the start index narrows the set.
            start_max=local_key(cutoff, self.zone) if status == SpsStatus.SCHEDULED else None,
        )
        ids = self.store.candidate_ids(query)
        chunk = self.settings.hygiene_batch_size
        found: list[WorklistItem] = []
        for start in range(0, min(len(ids), chunk * _LOAD_ROUNDS), chunk):
            for it in self.store.load(ids[start : start + chunk]):
                result.loaded += 1
                mark = it.idle
                fresh = mark is None or mark.get("action") not in marked
                if it.status == status and fresh and self._since(it) <= cutoff:
                    found.append(it)
                    if len(found) >= budget:
                        return found
        return found

    def _since(self, item: WorklistItem) -> float:
        """When the item's idle time starts: SCHEDULED from the later of its SPS start and
        its creation, STARTED (and anything else) from its last update."""
        if item.status == SpsStatus.SCHEDULED:
            start = local_epoch(item.start_key, self.zone) if item.start_key else None
            return max(start or 0.0, item.created_at)
        return item.updated_at

    # -- records for metrics and status ---------------------------------------------------
    def _count(self, now: float, counts: dict[tuple[str, str], int]) -> None:
        """Count written actions: the metric, and ``keys.hygiene`` for ``status`` (after the
        write, not in it: a worker killed in between loses those counts, never items)."""
        if not counts:
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(self.keys.hygiene, "since", repr(now))
        for (label, status), n in sorted(counts.items()):
            metrics.ITEMS_EXPIRED.labels(status=status, action=label).inc(n)
            pipe.hincrby(self.keys.hygiene, f"{label}:{status}", n)
        pipe.hset(self.keys.hygiene, "last_at", repr(now))
        pipe.execute()

    def _publish(self, now: float) -> None:
        """Say once per process which settings the hygiene runs with: ``status`` runs in
        another process, maybe with another configuration. (Not fenced: it is not worklist
        data, and the last worker to start wins.)"""
        if self._published:
            return
        self.r.hset(
            self.keys.hygiene,
            mapping={
                "settings": json.dumps(settings_doc(self.settings), sort_keys=True),
                "settings_by": self.name,
                "settings_at": repr(now),
            },
        )
        self._published = True


def _purgeable(item: WorklistItem) -> bool:
    idle = item.idle
    return item.status in FINAL_SPS_STATUSES or (idle is not None and idle.get("action") == "hide")


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def report(client: redis.Redis, keys: Keys, now: float) -> dict[str, Any]:
    """The hygiene as ``mwl-bridge status`` shows it, from Redis only: the settings the
    workers reported (None before any pass), what was done since when, and what waits
    for purge (``overdue``: past its purge time, i.e. no worker maintenance is running
    or the apply lock stays busy)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.hygiene)
    pipe.zcard(keys.expiry)
    pipe.zcount(keys.expiry, "-inf", now)
    pipe.zrange(keys.expiry, 0, 0, withscores=True)
    for action in IDLE_ACTIONS:
        pipe.scard(keys.index("idle", action))
    raw, waiting, overdue, first, *marked = pipe.execute()
    data = {k.decode(): v.decode() for k, v in raw.items()}
    done: dict[str, dict[str, int]] = {label: {} for label in COUNTED_ACTIONS}
    for name, value in data.items():
        label, sep, status = name.partition(":")
        if sep and label in done:
            done[label][status] = int(value)
    by_status = status_counts(client, keys)

    def when(name: str) -> str | None:
        return _iso(float(data[name])) if data.get(name) else None

    return {
        "settings": json.loads(data["settings"]) if data.get("settings") else None,
        "settings_by": data.get("settings_by"),
        "settings_at": when("settings_at"),
        "since": when("since"),
        "last_at": when("last_at"),
        "done": done,
        "waiting": {
            "total": int(waiting),
            "overdue": int(overdue),
            "next_at": _iso(float(first[0][1])) if first else None,
            "by_status": {str(s): by_status[str(s)] for s in sorted(FINAL_SPS_STATUSES)},
            "idle_hidden": int(marked[0]),
        },
        "idle_marked": dict(zip(IDLE_ACTIONS, (int(n) for n in marked), strict=True)),
    }
