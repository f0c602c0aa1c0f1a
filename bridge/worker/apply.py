"""Apply in ACK order: the apply-lock holder writes runs of parsed messages at the head of
the ingest line (:mod:`bridge.worker.sequencer` explains why and how).

``lua/acquire.lua`` stores outcomes and takes the lock in one round trip;
``lua/finalize.lua`` writes a planned run (items, order states, pops) fenced by the lock
token and hands back the next run; ``lua/release_peek.lua`` releases and looks again so
no wake-up is lost; ``lua/drop_missing_head.lua`` dead-letters and pops a head whose
message hash is gone.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from bridge.core import metrics
from bridge.core.codes import Hl7Error
from bridge.core.errors import StoreUnavailable, TransientError
from bridge.core.logs import fields, log_failure
from bridge.core.settings import OutboundSettings, WorkerSettings
from bridge.intake import deadletter
from bridge.intake.outbound import OutboundRecord, enqueue_delivery
from bridge.store.keys import Keys
from bridge.store.worklist_store import batch_doc
from bridge.worker import migrations
from bridge.worker.background import BackgroundApplier
from bridge.worker.lifecycle import Planner, emit_logs
from bridge.worker.mapping.apply import MappingResult, order_aliases

log = logging.getLogger(__name__)

#: Messages one finalize script writes at most (their outcomes travel in its reply).
APPLY_RUN = 32
#: How long an application-ACK verdict waits in ``result:<id>`` for the listener.
RESULT_TTL_S = 120
#: The mwl_order_anomalies kind of an NW rejected by worker.repeated_new_order = reject.
_REJECT_ANOMALY = "repeated_new_order_rejected"


def _decode_outcome(doc_raw: bytes) -> tuple[MappingResult | Exception | None, dict[str, Any]]:
    """(the mapped order of a stored outcome, or None for a rejection, or the exception
    for an unreadable one (the caller dead-letters it when its turn comes); the outcome
    document)."""
    doc: dict[str, Any] = {}
    try:
        doc = json.loads(doc_raw)
        if doc.get("kind") != "ops":
            return None, doc
        return MappingResult.from_dict(doc["result"]), doc
    except Exception as exc:
        return exc, doc if isinstance(doc, dict) else {}


def verdict_json(code: int = 0, location: str = "", text: str = "") -> str:
    """An application-ACK verdict as the listener reads it
    (:class:`bridge.intake.submit.AppResult`): AA when ``code`` is 0."""
    return json.dumps(
        {"ok": not code, "code": int(code), "text": text, "location": location},
        ensure_ascii=False,
    )


def _order_names(result: MappingResult) -> set[str]:
    """The order aliases a mapped message names (before any lookup)."""
    return {a for group in result.groups for a in order_aliases(result.scope, group)}


@dataclass(frozen=True)
class Planned:
    """One message's part of a run: what the finalize script writes for it."""

    verdict: str
    batch: dict[str, Any] | None = None
    states: dict[str, tuple[dict[str, str], int]] = field(default_factory=dict)
    orders: set[str] = field(default_factory=set)
    records: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    #: Outbound HL7 messages for the finalize script (its "o" records).
    outbound: list[dict[str, Any]] = field(default_factory=list)


class LockLost(TransientError):
    """The apply lock expired while we held it; another worker continues the line."""


class RunApply:
    """The applying half of :class:`~bridge.worker.sequencer.Sequencer`."""

    r: redis.Redis
    keys: Keys
    settings: WorkerSettings
    planner: Planner
    #: Where status messages go (``outbound.host`` set), else None: none are written.
    outbound: OutboundSettings | None
    applier: BackgroundApplier | None
    _drain_lock: threading.Lock
    _acquire: Script
    _release_peek: Script
    _finalize: Script
    _drop_missing: Script
    _reject: Callable[..., None]  # BatchParse's
    #: The time source of the plans (epoch seconds; tests inject one).
    clock: Callable[[], float]

    def apply_in_background(self) -> None:
        """From now on a fresh batch's outcomes are stored and applied by a thread while
        the worker goes on parsing (the ``worker`` verb; see :mod:`bridge.worker.background`)."""
        if self.applier is None:
            self.applier = BackgroundApplier(self.drain)

    def close(self, timeout_s: float = 60.0) -> None:
        """Apply what the background thread still holds, then stop it."""
        applier, self.applier = self.applier, None
        if applier is not None and not applier.close(timeout_s):
            log.warning("apply.background_unfinished", extra=fields(timeout_s=timeout_s))

    def drain(self, store: list[tuple[str, str]] | None = None, batch_key: str = "") -> int:
        """Store the ``(message_id, parsed JSON)`` outcomes given and delete the batch
        record they came from, then apply every parsed message at the head of the line;
        returns how many were applied. One thread of a process at a time (the planner
        keeps per-run state): the background applier and the maintenance step's
        recovery may both call it.

        The lock holder gets the parsed messages at the head as a run (up to
        ``APPLY_RUN``), plans them against the order states (the planner's reads) and
        writes them with one fenced finalize script (items, order states, pops), which
        hands back the next run (lock renewed) or releases. One write round trip — one
        fsync with appendfsync always — per run instead of per message.
        """
        with self._drain_lock:
            return self._drain(store, batch_key)

    def _drain(self, store: list[tuple[str, str]] | None, batch_key: str) -> int:
        k = self.keys
        applied = 0
        lock_ms = int(self.settings.apply_lock_ttl_s * 1000)
        prefix = k.parsed("")
        while True:
            token = uuid.uuid4().hex
            outcomes = json.dumps([[mid, doc] for mid, doc in store or ()], ensure_ascii=False)
            acquired, head_raw, run, seq = self._acquire(
                keys=[k.apply_lock, k.ingest_order, k.sequence, k.schema],
                args=[token, lock_ms, prefix, k.message(""), batch_key, APPLY_RUN, outcomes,
                      migrations.SCHEMA_VERSION],
            )  # fmt: skip
            store, batch_key = None, ""
            if acquired == -3:
                # A store of the previous layout: upgrade it first (under the lock; if
                # another worker holds the lock, it does or the next attempt will).
                if migrations.upgrade(self.r, k) is None:
                    return applied
                continue
            if not acquired:
                return applied  # the holder checks the head again before it releases
            held = True
            try:
                while True:
                    if run:
                        entries, logs = self._plan_run(run, int(seq))
                    elif held and head_raw and not self.r.exists(k.message(head_raw.decode())):
                        # Nothing will ever parse it: dead-letter it, pop it, look again.
                        head_raw = self._drop_missing_head(head_raw.decode(), token, lock_ms)
                        continue
                    else:
                        break
                    status, head_raw, run, seq = self._finish_run(entries, token, lock_ms)
                    if status > 0:
                        applied += len(entries)
                        for records in logs:
                            emit_logs(records)
                        self._deliver([o for e in entries for o in e.get("o") or ()])
                    held = status != 2  # 2 = released by the finalize script
                    if status < 0:
                        break
            except LockLost:
                log.warning("apply.lock_lost")
                return applied
            finally:
                if held:
                    # Release, then look again: a worker that stored its outcome while we
                    # held the lock found it busy and left (no lost wake-up).
                    again = self._release_peek(
                        keys=[k.apply_lock, k.ingest_order], args=[token, prefix]
                    )
                else:
                    again = 0
            if not again:
                return applied

    def _plan_run(
        self, run: list[bytes], seq: int
    ) -> tuple[list[dict[str, Any]], list[list[tuple[int, str, dict[str, Any]]]]]:
        """Plan the longest prefix of ``run`` (head, doc, head, doc, ...) whose messages
        touch disjoint orders — each plan reads Redis as it is before the run is written,
        so a message of an order planned earlier in the run waits for the next run —
        returning the finalize script's entries (each with its item batch, order states
        and application-ACK verdict) and each plan's log records (logged once the run is
        written)."""
        entries: list[dict[str, Any]] = []
        logs: list[list[tuple[int, str, dict[str, Any]]]] = []
        taken: set[str] = set()
        outcomes = [(run[n].decode(), *_decode_outcome(run[n + 1])) for n in range(0, len(run), 2)]
        # One round trip for the order states of the whole run (each plan read its own).
        self.planner.read_ahead([r for _, r, _ in outcomes if isinstance(r, MappingResult)])
        try:
            for n, (head, decoded, doc) in enumerate(outcomes):
                result = decoded if isinstance(decoded, MappingResult) else None
                alone = result is not None and (result.patient or result.mpps) is not None
                if entries and result is not None and (alone or _order_names(result) & taken):
                    # An ADT event touches items of any number of orders: it is planned
                    # alone, on the state the messages before it wrote.
                    break
                if isinstance(decoded, Exception):
                    verdict = self._apply_failed(head, decoded)  # dead-lettered, then popped
                    planned = Planned(verdict=verdict)
                elif result is None:  # rejected when parsed (dead-lettered then)
                    code = int(doc.get("code") or Hl7Error.INTERNAL_ERROR)
                    planned = Planned(verdict=verdict_json(
                        code, str(doc.get("location") or ""), str(doc.get("reason") or "")
                    ))  # fmt: skip
                else:
                    planned = self._plan(head, result, seq + n)
                orders = planned.orders
                if entries and orders & taken:
                    # Aliases that resolve to an order planned earlier (e.g. placer only,
                    # then filler only): plan it again in the next run, on the new state.
                    break
                taken |= orders
                waiting = doc.get("ack") == "application"
                entries.append(
                    {
                        "h": head,
                        "s": [[key, d, ttl] for key, (d, ttl) in planned.states.items()],
                        "b": planned.batch or False,
                        "v": planned.verdict,
                        "r": self.keys.result(head) if waiting else False,
                        "o": planned.outbound,
                    }
                )
                logs.append(planned.records)
                if alone:
                    break  # the messages after it see what it wrote
        finally:
            self.planner.read_ahead([])  # stale once the run is written
        return entries, logs

    def _plan(self, head: str, result: MappingResult, seq: int) -> Planned:
        """What the finalize script writes for one mapped message (or its dead letter)."""
        try:
            plan = self.planner.plan(result, self.clock(), seq)
        except (TransientError, redis.RedisError):
            raise
        except Exception as exc:
            return Planned(verdict=self._apply_failed(head, exc))
        if plan.reject is not None:
            code, location, reason = plan.reject
            self._dead_letter_at_apply(head, code, location, reason)
            records = [
                (
                    logging.WARNING,
                    "order.rejected",
                    fields(code=int(code), location=location, anomaly=_REJECT_ANOMALY),
                )
            ]
            return Planned(verdict_json(code, location, reason), orders=plan.orders,
                           records=records)  # fmt: skip
        return Planned(
            verdict_json(*plan.verdict) if plan.verdict else verdict_json(),
            batch=batch_doc(self.keys, plan.upserts.values(), expire_at=plan.expire_at),
            states=plan.order_states,
            orders=plan.orders,
            records=plan.logs,
            outbound=[self._outbound_doc(o) for o in plan.outbound],
        )

    def _outbound_doc(self, record: OutboundRecord) -> dict[str, Any]:
        """An outbound message as the finalize script writes it (see its header)."""
        return {
            "k": self.keys.outbound(record.msg_id),
            "q": self.keys.outbound_queue(record.order),
            "p": self.keys.outbound_pending,
            "id": record.msg_id,
            "order": record.order,
            "f": {k: v.decode("utf-8") if isinstance(v, bytes) else v
                  for k, v in record.to_hash().items()},
        }  # fmt: skip

    def _deliver(self, outbound: list[dict[str, Any]]) -> None:
        """Hand written outbound messages to delivery. Best effort: the records are
        durable already, and the delivery's sweep queues any order whose job was never
        queued (a worker killed here, Redis gone for a moment)."""
        if not outbound or self.outbound is None:
            return
        for record in outbound:
            try:
                enqueue_delivery(self.r, self.keys, self.outbound, record["order"], record["id"])
            except StoreUnavailable as exc:
                log.warning("outbound.enqueue_failed",
                            extra=fields(control_id=record["f"]["control_id"],
                                         error=type(exc.__cause__).__name__))  # fmt: skip

    def _apply_failed(self, head: str, exc: Exception) -> str:
        """Never let one bad outcome block every later order: dead-letter and advance;
        returns the AE verdict."""
        log_failure(log, "apply.failed", exc, message_id=head)
        reason = "could not apply the mapped order"
        self._dead_letter_at_apply(head, Hl7Error.INTERNAL_ERROR, "", reason)
        return verdict_json(Hl7Error.INTERNAL_ERROR, "", reason)

    def _dead_letter_at_apply(self, head: str, code: Hl7Error, location: str, reason: str) -> None:
        meta = {key.decode(): v for key, v in self.r.hgetall(self.keys.message(head)).items()}
        text_meta = {key: v.decode("utf-8", "replace") for key, v in meta.items() if key != "raw"}
        self._reject(head, meta, text_meta, code, location, reason)

    def _drop_missing_head(self, head: str, token: str, lock_ms: int) -> bytes | None:
        """An ACKed message whose hash is gone (expired, evicted, deleted) is lost: its
        raw bytes are too. Keep a dead letter under its id (so ``deadletter list`` shows
        the loss and the sender can be asked to resend), count it, and pop it — dead
        letter and pop in one fenced script. Returns the next head (None: nothing
        written because the head moved or its hash came back; the caller looks again)."""
        k = self.keys
        letter = deadletter.DeadLetter(
            raw=b"",
            reason=f"message {head} was ACKed but its hash is missing from Redis (expired, "
            "evicted or deleted): raw bytes and MSH lost, never applied; ask the sender "
            "to resend",
            stage="worker",
            code=int(Hl7Error.INTERNAL_ERROR),
            meta={"message_id": head},
            dead_id=head,
        )
        flat = [v for pair in letter.to_hash().items() for v in pair]
        status, nxt = self._drop_missing(
            keys=[k.apply_lock, k.ingest_order, k.message(head), k.deadletter(head),
                  k.deadletter_index],
            args=[token, head, lock_ms, f"{letter.created_at:.6f}", *flat],
        )  # fmt: skip
        if status == -1:
            raise LockLost("apply lock lost before the missing head was dead-lettered")
        if status == -2:
            log.warning("apply.head_moved", extra=fields(message_id=head))
            return None
        metrics.MESSAGES_LOST.labels(reason="hash_missing").inc()
        log.error("head.message_missing", extra=fields(message_id=head, dead_letter=head))
        return nxt  # type: ignore[no-any-return]

    def _finish_run(
        self, entries: list[dict[str, Any]], token: str, lock_ms: int
    ) -> tuple[int, Any, list[bytes], Any]:
        """Write the run's items and order states and pop its messages (fenced, one
        script); returns (status, next head, next run, its seq)."""
        k = self.keys
        status, nxt, run, seq = self._finalize(
            keys=[k.apply_lock, k.ingest_order, k.sequence, k.index_start, k.expiry],
            args=[
                token, self.settings.processed_retention_s, lock_ms, k.parsed(""),
                k.message(""), APPLY_RUN, json.dumps(entries, ensure_ascii=False), RESULT_TTL_S,
            ],
        )  # fmt: skip
        if status == -1:
            raise LockLost("apply lock lost before finalize")
        if status == -2:
            log.warning("apply.head_moved", extra=fields(message_id=entries[0]["h"]))
        return int(status), nxt, run, seq
