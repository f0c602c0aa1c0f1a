"""Parse in parallel, apply in ACK order: the reorder buffer on ``keys.ingest_order``.

Why: messages of one order (NW, XO, CA) may be parsed by different workers at the same
time, and hl7apy is slow enough (~10 ms) that a later message often finishes first. The
listener RPUSHes every accepted message id to ``ingest_order`` in ACK order; that list
is the one sequence of truth.

How (details and the failure analysis in ``docs/workers.md``):

1. :meth:`Sequencer.process` takes the jobs queued behind its own (a batch, up to
   ``worker.batch_size``), parses and maps the messages (the expensive, parallel part)
   and stores the outcomes as JSON in ``parsed:<id>`` (``SET NX``: a re-run never
   replaces one). A permanent failure stores a ``rejected`` outcome, so the line still
   advances.
2. :meth:`Sequencer.drain` takes ``apply_lock`` (``SET NX PX`` with a random token) if
   the *head* of ``ingest_order`` has a parsed outcome (else the head's own job, or the
   recovery, applies the line later) and, while the head has one, plans the run of
   parsed messages at the head against the order states, then — fenced by the lock
   token, in one script — writes all their items and order states, pops them and
   deletes their ``parsed:<id>`` (all or nothing). It releases the lock only if it
   still holds the token, then re-checks the head: a worker that stored its outcome
   while we held the lock found the lock busy and left, so the holder must look again
   (no lost wake-up).
3. A worker that dies mid-parse leaves the head unparsed. rq would re-run its job only
   after the job heartbeat expires (~90 s) plus a maintenance pass; instead every worker's
   maintenance step (:meth:`Sequencer.recover`, every ``worker.maintenance_interval_s``)
   notes since when the head waits and parses it itself after ``worker.stuck_head_s``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job
from rq.queue import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from bridge.core import metrics
from bridge.core.codes import Hl7Error
from bridge.core.errors import PermanentError, StoreUnavailable, TransientError
from bridge.core.logs import fields, log_failure
from bridge.core.settings import WorkerSettings
from bridge.intake import deadletter
from bridge.intake.submit import JOB_ID_PREFIX
from bridge.store.keys import Keys
from bridge.store.worklist_store import APPLY_BATCH_LUA_FUNCTION, WorklistStore, batch_json
from bridge.worker.background import BackgroundApplier
from bridge.worker.lifecycle import Planner, emit_logs, order_aliases
from bridge.worker.mapping.apply import MappingResult

log = logging.getLogger(__name__)

RESULT_TTL_S = 120
#: A batch record outlives any retry cycle of its job; the stuck-head recovery reads it.
BATCH_TTL_S = 7 * 24 * 3600

# The parsed messages at the head of the line, in order, up to a limit: a run the lock
# holder plans and writes in one go. Consumes one ingest sequence number per message.
_PARSED_RUN_LUA_FUNCTION = """
local function parsed_run(ingest, seq_key, parsed_prefix, limit)
  local run = {}
  for _, h in ipairs(redis.call('LRANGE', ingest, 0, limit - 1)) do
    local d = redis.call('GET', parsed_prefix .. h)
    if not d then break end
    run[#run + 1] = h
    run[#run + 1] = d
  end
  if #run == 0 then return run, 0 end
  return run, redis.call('INCRBY', seq_key, #run / 2) - #run / 2 + 1
end
"""
# Store parsed outcomes (any number, each SET NX, only for messages not applied yet) and
# drop the batch record they came
# from, then take the apply lock only if there is something to apply, in one round trip
# (one fsync with appendfsync always).
# KEYS: lock, ingest, seq. ARGV: token, ttl ms, parsed key prefix, message key prefix,
# batch key or '', run limit, then message id + doc pairs. Returns {acquired, head or
# false, run (head, doc, head, doc, ...), seq of the run's first message}.
# Not acquired when the line is empty or its head is not parsed yet: the head's own job
# applies it (and then ours) when it stores its outcome — this script is atomic, so that
# later call sees our outcome — or the stuck-head recovery does. Taking and releasing the
# lock there would cost two more fsync'ed round trips per message with several workers.
# The one exception: a head whose message hash is gone will never be parsed; the lock is
# taken (with an empty run) so that the caller pops it.
_ACQUIRE_LUA = (
    _PARSED_RUN_LUA_FUNCTION
    + """
for i = 7, #ARGV, 2 do
  -- Not for a message applied meanwhile (a slow batch, the recovery was first): its
  -- outcome would never be read or deleted.
  local msg = ARGV[4] .. ARGV[i]
  if redis.call('EXISTS', msg) == 1 and redis.call('HGET', msg, 'state') ~= 'applied' then
    redis.call('SET', ARGV[3] .. ARGV[i], ARGV[i + 1], 'NX')
  end
end
if ARGV[5] ~= '' then redis.call('DEL', ARGV[5]) end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return {0, false, {}, 0} end
local parsed = redis.call('EXISTS', ARGV[3] .. head) == 1
if not parsed and redis.call('EXISTS', ARGV[4] .. head) == 1 then return {0, head, {}, 0} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, false, {}, 0} end
if not parsed then return {1, head, {}, 0} end
local run, seq = parsed_run(KEYS[2], KEYS[3], ARGV[3], tonumber(ARGV[6]))
return {1, head, run, seq}
"""
)
# Take the jobs queued right behind ours (rq job ids ``msg-<message id>``, oldest first,
# up to ARGV[1]) off the rq queue and delete them: this job parses their messages. Their
# ids go to the batch list (kept until the outcomes are stored, so a re-run or the
# stuck-head recovery finds them) and each message hash notes its leader. Stops at the
# first job that is not a message job; our own job, when called outside rq, just goes.
# Takes at most the queue's length divided by the workers registered on the queue.
# Stops, too, at the re-queued job of a message that leads an unfinished batch.
# KEYS: rq queue, batch list, rq's workers-of-the-queue set. ARGV: max, rq job key
# prefix, job id prefix, message key prefix, leader id, batch ttl s, batch key prefix.
# Returns {existed before, the batch list}.
_CLAIM_LUA = """
local existed = redis.call('EXISTS', KEYS[2])
-- A fair share of the backlog, so that the other workers are not left idle.
local workers = math.max(1, redis.call('SCARD', KEYS[3]))
local take = math.min(tonumber(ARGV[1]), math.floor(redis.call('LLEN', KEYS[1]) / workers))
for i = 1, take do
  local jid = redis.call('LINDEX', KEYS[1], 0)
  if not jid or string.sub(jid, 1, #ARGV[3]) ~= ARGV[3] then break end
  local mid = string.sub(jid, #ARGV[3] + 1)
  -- The re-queued job of another batch's leader: its own run must carry that batch.
  if mid ~= ARGV[5] and redis.call('EXISTS', ARGV[7] .. mid) == 1 then break end
  redis.call('LPOP', KEYS[1])
  redis.call('DEL', ARGV[2] .. jid)
  if mid ~= ARGV[5] then
    redis.call('RPUSH', KEYS[2], mid)
    if redis.call('EXISTS', ARGV[4] .. mid) == 1 then
      redis.call('HSET', ARGV[4] .. mid, 'leader', ARGV[5])
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {existed, {}} end
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {existed, redis.call('LRANGE', KEYS[2], 0, -1)}
"""
# Release the lock if still ours, then report whether the head is parsed (lost wake-up).
# KEYS: lock, ingest. ARGV: token, parsed key prefix.
_RELEASE_PEEK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return 0 end
return redis.call('EXISTS', ARGV[2] .. head)
"""
# The items, order states and pops of a run of messages in one fenced script: one round
# trip (one fsync) per run, and no window in which items are written but their message
# is still in line. KEYS: lock, ingest, seq, idx:start, expiry. ARGV: token, message
# retention s, lock ttl ms, parsed key prefix, message key prefix, run limit, the run
# as JSON [{"h": message id, "s": [[order key, {field: value}, ttl], ...]}, ...], then
# one item batch (store.batch_json) or '' per message. Returns {status, next head or
# false, next run, its seq}: status 1 = the next run is parsed (lock renewed), 2 = lock
# released, <0 = nothing written.
_FINALIZE_LUA = (
    APPLY_BATCH_LUA_FUNCTION
    + _PARSED_RUN_LUA_FUNCTION
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, false, {}, 0} end
local entries = cjson.decode(ARGV[7])
local heads = redis.call('LRANGE', KEYS[2], 0, #entries - 1)
for i, e in ipairs(entries) do
  if heads[i] ~= e.h then return {-2, false, {}, 0} end
end
for i, e in ipairs(entries) do
  if ARGV[7 + i] ~= '' then apply_batch(KEYS[4], KEYS[5], ARGV[7 + i]) end
  redis.call('LPOP', KEYS[2])
  redis.call('DEL', ARGV[4] .. e.h)
  if redis.call('EXISTS', ARGV[5] .. e.h) == 1 then
    redis.call('HSET', ARGV[5] .. e.h, 'state', 'applied')
    redis.call('EXPIRE', ARGV[5] .. e.h, ARGV[2])
  end
  for _, st in ipairs(e.s) do
    for k, v in pairs(st[2]) do redis.call('HSET', st[1], k, v) end
    if st[3] > 0 then redis.call('EXPIRE', st[1], st[3]) else redis.call('PERSIST', st[1]) end
  end
end
local run, seq = parsed_run(KEYS[2], KEYS[3], ARGV[4], tonumber(ARGV[6]))
if #run == 0 then
  -- Nothing more to apply: release here, atomically with the check, so a worker that
  -- stores an outcome after this script finds the lock free (no lost wake-up).
  redis.call('DEL', KEYS[1])
  return {2, redis.call('LINDEX', KEYS[2], 0) or false, {}, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, false, run, seq}
"""
)
#: Messages one finalize script writes at most (their outcomes travel in its reply).
APPLY_RUN = 32

#: parse(message_id, hash fields) → MappingResult; raises PermanentError / TransientError.
ParseFn = Callable[[str, dict[str, Any]], MappingResult]


def _decode_outcome(doc_raw: bytes) -> MappingResult | Exception | None:
    """The mapped order of a stored outcome; None for a rejection; the exception for an
    unreadable one (the caller dead-letters it when its turn comes)."""
    try:
        doc = json.loads(doc_raw)
        if doc.get("kind") != "ops":
            return None
        return MappingResult.from_dict(doc["result"])
    except Exception as exc:
        return exc


def _order_names(result: MappingResult) -> set[str]:
    """The order aliases a mapped message names (before any lookup)."""
    return {a for group in result.groups for a in order_aliases(result.sender, group)}


class LockLost(TransientError):
    """The apply lock expired while we held it; another worker continues the line."""


#: HL7 table 0357 code of a rejection → the mwl_mapping_failures reason label.
_FAILURE_LABELS = {
    Hl7Error.SEGMENT_SEQUENCE: "segment_sequence",
    Hl7Error.REQUIRED_FIELD_MISSING: "required_field",
    Hl7Error.DATA_TYPE: "data_type",
    Hl7Error.TABLE_VALUE_NOT_FOUND: "unknown_code",
    Hl7Error.VALUE_TOO_LONG: "value_too_long",
    Hl7Error.INTERNAL_ERROR: "internal",
}


def failure_label(code: int) -> str:
    return _FAILURE_LABELS.get(code, f"code_{int(code)}")  # type: ignore[call-overload]


class Sequencer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        store: WorklistStore,
        settings: WorkerSettings,
        parse: ParseFn,
    ) -> None:
        self.r = client
        self.keys = keys
        self.store = store
        self.settings = settings
        self.parse_fn = parse
        self.planner = Planner(client, keys, store, settings)
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._release_peek = client.register_script(_RELEASE_PEEK_LUA)
        self._finalize = client.register_script(_FINALIZE_LUA)
        self._claim_script = client.register_script(_CLAIM_LUA)
        self._rq_queue_key = Queue.redis_queue_namespace_prefix + keys.queue_name()
        self._rq_job_prefix = Job.redis_job_namespace_prefix
        self._rq_workers_key = WORKERS_BY_QUEUE_KEY % keys.queue_name()
        self.applier: BackgroundApplier | None = None
        self._drain_lock = threading.Lock()

    # -- parse (parallel) ----------------------------------------------------------------
    def process(self, message_id: str) -> str:
        """Parse+map this message and the ones queued right behind it (up to
        ``worker.batch_size`` in all), then apply whatever is in line; returns this
        message's outcome.

        A fresh batch stores all its outcomes in one round trip after the last parse. A
        batch that was taken before and did not finish (a re-run after the worker died
        or Redis failed) goes one message at a time, each outcome stored before the next
        parse, so one message that kills its worker cannot make the others wait.
        """
        try:
            existed, taken = self._claim(message_id)
            ids = [message_id, *(m for m in taken if m != message_id)]
            batch_key = self.keys.batch(message_id) if taken else ""
            if existed:
                return self._process_each(ids, batch_key)[0]
            reads = self._read(ids)
            outcomes, docs = [], []
            for mid, (parsed, raw_meta) in zip(ids, reads, strict=True):
                outcome, doc = self._parse_read(mid, parsed, raw_meta)
                outcomes.append(outcome)
                if doc:
                    docs.append((mid, doc))
            if self.applier is not None:
                self.applier.submit(docs, batch_key)
            else:
                self.drain(docs, batch_key)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis failed while processing a message: {exc}") from exc
        if len(ids) > 1:
            log.debug("batch.done", extra=fields(message_id=message_id, messages=len(ids)))
        return outcomes[0]

    def _process_each(self, ids: list[str], batch_key: str = "") -> list[str]:
        """Parse, store and apply one message after the other (the safe, slow path)."""
        outcomes = []
        for n, mid in enumerate(ids):
            [(parsed, raw_meta)] = self._read([mid])
            outcome, doc = self._parse_read(mid, parsed, raw_meta)
            outcomes.append(outcome)
            last = n == len(ids) - 1
            self.drain([(mid, doc)] if doc else [], batch_key if last else "")
        return outcomes

    def _claim(self, leader: str) -> tuple[bool, list[str]]:
        """(whether a batch record existed already, the batch's message ids)."""
        if self.settings.batch_size <= 1:
            return False, []  # one message per job: no round trip for batches
        existed, taken = self._claim_script(
            keys=[self._rq_queue_key, self.keys.batch(leader), self._rq_workers_key],
            args=[
                max(0, self.settings.batch_size - 1), self._rq_job_prefix, JOB_ID_PREFIX,
                self.keys.message(""), leader, BATCH_TTL_S, self.keys.batch(""),
            ],
        )  # fmt: skip
        return bool(existed), [m.decode() for m in taken]

    def _read(self, ids: list[str]) -> list[tuple[int, dict[bytes, bytes]]]:
        """(parsed outcome exists, message hash) per id, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for mid in ids:
            pipe.exists(self.keys.parsed(mid))
            pipe.hgetall(self.keys.message(mid))
        replies = pipe.execute()
        return list(zip(replies[::2], replies[1::2], strict=True))

    def _parse_read(
        self, message_id: str, parsed: int, raw_meta: dict[bytes, bytes]
    ) -> tuple[str, str]:
        """(outcome, parsed JSON to store or "" when nothing new was parsed)."""
        if parsed:
            return "already_parsed", ""
        if not raw_meta:
            log.warning("message.missing", extra=fields(message_id=message_id))
            return "missing", ""
        meta = {key.decode(): value for key, value in raw_meta.items()}
        if meta.get("state") == b"applied":
            return "already_applied", ""
        # Counted only by the stuck-head recovery: a message that kills its worker each
        # time is dead-lettered instead of blocking the line forever.
        attempts = int(meta.get("recoveries", b"0"))
        text_meta = {
            key: v.decode("utf-8", "replace")
            for key, v in meta.items()
            if key not in ("raw",) and isinstance(v, bytes)
        }
        doc: dict[str, Any]
        try:
            if attempts > self.settings.max_retries:
                raise PermanentError(
                    f"gave up after {attempts} recoveries (the worker died each time)",
                    Hl7Error.INTERNAL_ERROR,
                )
            result = self.parse_fn(message_id, meta)
            doc = {"kind": "ops", "result": result.to_dict()}
            self._push_result(message_id, text_meta, True, Hl7Error.ACCEPTED, "", "")
            outcome = "parsed"
        except (TransientError, redis.RedisError):
            raise
        except Exception as exc:
            if isinstance(exc, PermanentError):
                code, location, reason = exc.code, exc.location, str(exc)
            else:
                # A bug must not block the line: dead-letter the message with 207.
                log_failure(log, "message.internal_error", exc, message_id=message_id)
                code, location = Hl7Error.INTERNAL_ERROR, ""
                reason = f"internal error while mapping ({type(exc).__name__})"
            self._reject(message_id, meta, text_meta, code, location, reason)
            doc = {"kind": "rejected", "code": int(code), "location": location, "reason": reason}
            outcome = "rejected"
        # Stored with SET NX (a re-run never replaces it) by drain's first round trip.
        return outcome, json.dumps(doc, ensure_ascii=False)

    def _reject(
        self,
        message_id: str,
        meta: dict[str, Any],
        text_meta: dict[str, str],
        code: Hl7Error,
        location: str,
        reason: str,
    ) -> None:
        metrics.MAPPING_FAILURES.labels(reason=failure_label(code)).inc()
        letter_meta = {
            key: text_meta.get(key, "")
            for key in (
                "control_id", "sending_app", "sending_facility", "receiving_app",
                "receiving_facility", "message_type", "version", "charset", "peer",
                "received_at", "processing_id", "ack_mode",
            )
        }  # fmt: skip
        letter_meta["message_id"] = message_id
        raw = meta.get("raw", b"")
        # The dead-letter id is the message id: a re-run overwrites instead of duplicating.
        letter = deadletter.DeadLetter(
            raw=raw if isinstance(raw, bytes) else str(raw).encode(),
            reason=reason,
            stage="worker",
            code=int(code),
            location=location,
            meta=letter_meta,
            dead_id=message_id,
        )
        deadletter.put(self.r, self.keys, letter)
        log.warning(
            "message.rejected",
            extra=fields(
                message_id=message_id, control_id=text_meta.get("control_id", ""),
                sender=text_meta.get("sending_app", ""), code=int(code), location=location,
                reason=reason,
            ),
        )  # fmt: skip
        self._push_result(message_id, text_meta, False, code, reason, location)

    def _push_result(
        self,
        message_id: str,
        meta: dict[str, str],
        ok: bool,
        code: Hl7Error,
        text: str,
        location: str,
    ) -> None:
        if meta.get("ack_mode") != "application":
            return
        payload = json.dumps({"ok": ok, "code": int(code), "text": text, "location": location})
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(self.keys.result(message_id), payload)
        pipe.expire(self.keys.result(message_id), RESULT_TTL_S)
        pipe.execute()

    # -- apply (serial, in ACK order) ----------------------------------------------------
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
            pairs = [part for mid_doc in store or () for part in mid_doc]
            acquired, head_raw, run, seq = self._acquire(
                keys=[k.apply_lock, k.ingest_order, k.sequence],
                args=[token, lock_ms, prefix, k.message(""), batch_key, APPLY_RUN, *pairs],
            )
            store, batch_key = None, ""
            if not acquired:
                return applied  # the holder checks the head again before it releases
            held = True
            try:
                while True:
                    if run:
                        entries, batches, logs = self._plan_run(run, int(seq))
                    elif held and head_raw and not self.r.exists(k.message(head_raw.decode())):
                        # Nothing will ever parse it: log loudly and move on.
                        head = head_raw.decode()
                        log.error("head.message_missing", extra=fields(message_id=head))
                        entries, batches, logs = [{"h": head, "s": []}], [""], []
                    else:
                        break
                    status, head_raw, run, seq = self._finish_run(entries, batches, token, lock_ms)
                    if status > 0:
                        applied += len(entries)
                        for records in logs:
                            emit_logs(records)
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
    ) -> tuple[list[dict[str, Any]], list[str], list[list[tuple[int, str, dict[str, Any]]]]]:
        """Plan the longest prefix of ``run`` (head, doc, head, doc, ...) whose messages
        touch disjoint orders — each plan reads Redis as it is before the run is written,
        so a message of an order planned earlier in the run waits for the next run —
        returning the finalize script's entries, item batches and each plan's log records
        (logged once the run is written)."""
        entries: list[dict[str, Any]] = []
        batches: list[str] = []
        logs: list[list[tuple[int, str, dict[str, Any]]]] = []
        taken: set[str] = set()
        outcomes = [(run[n].decode(), _decode_outcome(run[n + 1])) for n in range(0, len(run), 2)]
        # One round trip for the order states of the whole run (each plan read its own).
        self.planner.read_ahead([r for _, r in outcomes if isinstance(r, MappingResult)])
        try:
            for n, (head, decoded) in enumerate(outcomes):
                result = decoded if isinstance(decoded, MappingResult) else None
                if entries and result is not None and _order_names(result) & taken:
                    break
                if isinstance(decoded, Exception):
                    self._apply_failed(head, decoded)  # dead-lettered, then popped
                batch, states, orders, records = self._plan(head, result, seq + n)
                if entries and orders & taken:
                    # Aliases that resolve to an order planned earlier (e.g. placer only,
                    # then filler only): plan it again in the next run, on the new state.
                    break
                taken |= orders
                entries.append(
                    {"h": head, "s": [[key, d, ttl] for key, (d, ttl) in states.items()]}
                )
                batches.append(batch)
                logs.append(records)
        finally:
            self.planner.read_ahead([])  # stale once the run is written
        return entries, batches, logs

    def _plan(
        self, head: str, result: MappingResult | None, seq: int
    ) -> tuple[
        str, dict[str, tuple[dict[str, str], int]], set[str], list[tuple[int, str, dict[str, Any]]]
    ]:
        """(item batch for the finalize script or "", order states, order names, log
        records)."""
        if result is None:
            return "", {}, set(), []
        try:
            plan = self.planner.plan(result, time.time(), seq)
            batch = batch_json(self.keys, plan.upserts.values(), expire_at=plan.expire_at)
            return batch or "", plan.order_states, plan.orders, plan.logs
        except (TransientError, redis.RedisError):
            raise
        except Exception as exc:
            self._apply_failed(head, exc)
            return "", {}, set(), []

    def _apply_failed(self, head: str, exc: Exception) -> None:
        """Never let one bad outcome block every later order: dead-letter and advance."""
        log_failure(log, "apply.failed", exc, message_id=head)
        meta = {key.decode(): v for key, v in self.r.hgetall(self.keys.message(head)).items()}
        text_meta = {key: v.decode("utf-8", "replace") for key, v in meta.items() if key != "raw"}
        self._reject(
            head, meta, text_meta, Hl7Error.INTERNAL_ERROR, "", "could not apply the mapped order"
        )

    def _finish_run(
        self, entries: list[dict[str, Any]], batches: list[str], token: str, lock_ms: int
    ) -> tuple[int, Any, list[bytes], Any]:
        """Write the run's items and order states and pop its messages (fenced, one
        script); returns (status, next head, next run, its seq)."""
        k = self.keys
        status, nxt, run, seq = self._finalize(
            keys=[k.apply_lock, k.ingest_order, k.sequence, k.index_start, k.expiry],
            args=[
                token, self.settings.processed_retention_s, lock_ms, k.parsed(""),
                k.message(""), APPLY_RUN, json.dumps(entries, ensure_ascii=False), *batches,
            ],
        )  # fmt: skip
        if status == -1:
            raise LockLost("apply lock lost before finalize")
        if status == -2:
            log.warning("apply.head_moved", extra=fields(message_id=entries[0]["h"]))
        return int(status), nxt, run, seq

    # -- crash recovery ----------------------------------------------------------------
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
