"""Parse in parallel, apply in ACK order: the reorder buffer on ``keys.ingest_order``.

Why: messages of one order (NW, XO, CA) may be parsed by different workers at the same
time, and hl7apy is slow enough (~10 ms) that a later message often finishes first. The
listener RPUSHes every accepted message id to ``ingest_order`` in ACK order; that list
is the one sequence of truth.

How (details and the failure analysis in ``docs/workers.md``):

1. :meth:`Sequencer.process` parses and maps (the expensive, parallel part) and stores
   the outcome as JSON in ``parsed:<id>`` (``SET NX``: a re-run never replaces it). A
   permanent failure stores a ``rejected`` outcome, so the line still advances.
2. :meth:`Sequencer.drain` takes ``apply_lock`` (``SET NX PX`` with a random token) if
   the *head* of ``ingest_order`` has a parsed outcome (else the head's own job, or the
   recovery, applies the line later) and, while the head has one, plans it against the
   order state, then — fenced by the lock token, in one script — writes all items of the
   message, the order state, pops the head and deletes ``parsed:<id>`` (all or
   nothing). It releases the lock only if it still holds the
   token, then re-checks the head: a worker that stored its outcome while we held the
   lock found the lock busy and left, so the holder must look again (no lost wake-up).
3. A worker that dies mid-parse leaves the head unparsed. rq would re-run its job only
   after the job heartbeat expires (~90 s) plus a maintenance pass; instead every worker's
   maintenance step (:meth:`Sequencer.recover`, every ``worker.maintenance_interval_s``)
   notes since when the head waits and parses it itself after ``worker.stuck_head_s``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job
from rq.queue import Queue

from bridge import deadletter, metrics
from bridge.codes import Hl7Error
from bridge.errors import PermanentError, StoreUnavailable, TransientError
from bridge.intake import JOB_ID_PREFIX
from bridge.keys import Keys
from bridge.lifecycle import Planner
from bridge.logs import fields, log_failure
from bridge.mapping.apply import MappingResult
from bridge.settings import WorkerSettings
from bridge.store import APPLY_BATCH_LUA_FUNCTION, WorklistStore, batch_json

log = logging.getLogger(__name__)

RESULT_TTL_S = 120
#: A batch record outlives any retry cycle of its job; the stuck-head recovery reads it.
BATCH_TTL_S = 7 * 24 * 3600

# Store parsed outcomes (any number, each SET NX) and drop the batch record they came
# from, then take the apply lock only if there is something to apply, in one round trip
# (one fsync with appendfsync always).
# KEYS: lock, ingest, seq. ARGV: token, ttl ms, parsed key prefix, message key prefix,
# batch key or '', then message id + doc pairs. Returns {acquired, head or false, parsed
# doc or false, seq}.
# Not acquired when the line is empty or its head is not parsed yet: the head's own job
# applies it (and then ours) when it stores its outcome — this script is atomic, so that
# later call sees our outcome — or the stuck-head recovery does. Taking and releasing the
# lock there would cost two more fsync'ed round trips per message with several workers.
# The one exception: a head whose message hash is gone will never be parsed; the lock is
# taken so that the caller pops it.
_ACQUIRE_LUA = """
for i = 6, #ARGV, 2 do redis.call('SET', ARGV[3] .. ARGV[i], ARGV[i + 1], 'NX') end
if ARGV[5] ~= '' then redis.call('DEL', ARGV[5]) end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return {0, false, false, 0} end
local doc = redis.call('GET', ARGV[3] .. head)
if not doc and redis.call('EXISTS', ARGV[4] .. head) == 1 then return {0, head, false, 0} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, false, false, 0} end
local seq = 0
if doc then seq = redis.call('INCR', KEYS[3]) end
return {1, head, doc, seq}
"""
# Take the jobs queued right behind ours (rq job ids ``msg-<message id>``, oldest first,
# up to ARGV[1]) off the rq queue and delete them: this job parses their messages. Their
# ids go to the batch list (kept until the outcomes are stored, so a re-run or the
# stuck-head recovery finds them) and each message hash notes its leader. Stops at the
# first job that is not a message job; our own job, when called outside rq, just goes.
# KEYS: rq queue, batch list. ARGV: max, rq job key
# prefix, job id prefix, message key prefix, leader id, batch ttl s. Returns {existed
# before, the batch list}.
_CLAIM_LUA = """
local existed = redis.call('EXISTS', KEYS[2])
for i = 1, tonumber(ARGV[1]) do
  local jid = redis.call('LINDEX', KEYS[1], 0)
  if not jid or string.sub(jid, 1, #ARGV[3]) ~= ARGV[3] then break end
  redis.call('LPOP', KEYS[1])
  redis.call('DEL', ARGV[2] .. jid)
  local mid = string.sub(jid, #ARGV[3] + 1)
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
# The items of the message, the order states and the pop in one fenced script: one round
# trip (one fsync) per applied message, and no window in which the items are written but
# the head is not popped.
# KEYS: lock, ingest, parsed(head), message(head), seq, idx:start, expiry, then the order
# state keys. ARGV: token, head, message retention s, lock ttl ms, parsed key prefix,
# item batch (store.batch_json) or '', then per state key: json fields, ttl. Returns
# {status, next head or false, its doc or false, seq}: status 1 = the next head is parsed
# (lock renewed), 2 = lock released, <0 = nothing written.
_FINALIZE_LUA = (
    APPLY_BATCH_LUA_FUNCTION
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, false, false, 0} end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return {-2, false, false, 0} end
if ARGV[6] ~= '' then apply_batch(KEYS[6], KEYS[7], ARGV[6]) end
redis.call('LPOP', KEYS[2])
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'state', 'applied')
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
for i = 8, #KEYS do
  local a = 7 + (i - 8) * 2
  local data = cjson.decode(ARGV[a])
  for k, v in pairs(data) do redis.call('HSET', KEYS[i], k, v) end
  local ttl = tonumber(ARGV[a + 1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
end
local head = redis.call('LINDEX', KEYS[2], 0)
local doc = false
if head then doc = redis.call('GET', ARGV[5] .. head) end
if not doc then
  -- Nothing more to apply: release here, atomically with the check, so a worker that
  -- stores an outcome after this script finds the lock free (no lost wake-up).
  redis.call('DEL', KEYS[1])
  return {2, head, false, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, head, doc, redis.call('INCR', KEYS[5])}
"""
)

#: parse(message_id, hash fields) → MappingResult; raises PermanentError / TransientError.
ParseFn = Callable[[str, dict[str, Any]], MappingResult]


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
            keys=[self._rq_queue_key, self.keys.batch(leader)],
            args=[
                max(0, self.settings.batch_size - 1), self._rq_job_prefix, JOB_ID_PREFIX,
                self.keys.message(""), leader, BATCH_TTL_S,
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
    def drain(self, store: list[tuple[str, str]] | None = None, batch_key: str = "") -> int:
        """Store the ``(message_id, parsed JSON)`` outcomes given and delete the batch
        record they came from, then apply every parsed message at the head of the line;
        returns how many were applied.

        Round trips (write ones fsync with appendfsync always) per applied message: the
        planner's reads and one fenced finalize script that writes the items and the
        order states, pops the head and either hands back the next parsed head (lock
        renewed) or releases.
        """
        k = self.keys
        applied = 0
        lock_ms = int(self.settings.apply_lock_ttl_s * 1000)
        prefix = k.parsed("")
        while True:
            token = uuid.uuid4().hex
            pairs = [part for mid_doc in store or () for part in mid_doc]
            acquired, head_raw, doc, seq = self._acquire(
                keys=[k.apply_lock, k.ingest_order, k.sequence],
                args=[token, lock_ms, prefix, k.message(""), batch_key, *pairs],
            )
            store, batch_key = None, ""
            if not acquired:
                return applied  # the holder checks the head again before it releases
            held = True
            try:
                while head_raw and doc:
                    head = head_raw.decode()
                    batch, states = self._plan(head, doc, int(seq))
                    status, head_raw, doc, seq = self._finish(head, token, batch, states, lock_ms)
                    applied += 1
                    held = status != 2  # 2 = released by the finalize script
                if (
                    held
                    and head_raw
                    and not doc
                    and not self.r.exists(k.message(head_raw.decode()))
                ):
                    # Nothing will ever parse it: log loudly and move on.
                    log.error("head.message_missing", extra=fields(message_id=head_raw.decode()))
                    status, _, _, _ = self._finish(head_raw.decode(), token, "", {}, lock_ms)
                    held = status != 2  # 2 = released by the finalize script
                    continue
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

    def _plan(
        self, head: str, doc_raw: bytes, seq: int
    ) -> tuple[str, dict[str, tuple[dict[str, str], int]]]:
        """(item batch for the finalize script or "", order states) of the head."""
        try:
            doc = json.loads(doc_raw)
            if doc.get("kind") != "ops":
                return "", {}
            result = MappingResult.from_dict(doc["result"])
            plan = self.planner.plan(result, time.time(), seq)
            batch = batch_json(self.keys, plan.upserts.values(), expire_at=plan.expire_at)
            return batch or "", plan.order_states
        except (TransientError, redis.RedisError):
            raise
        except Exception as exc:
            # Never let one bad outcome block every later order: dead-letter and advance.
            log_failure(log, "apply.failed", exc, message_id=head)
            meta = {key.decode(): v for key, v in self.r.hgetall(self.keys.message(head)).items()}
            text_meta = {
                key: v.decode("utf-8", "replace") for key, v in meta.items() if key != "raw"
            }
            self._reject(
                head,
                meta,
                text_meta,
                Hl7Error.INTERNAL_ERROR,
                "",
                "could not apply the mapped order",
            )
            return "", {}

    def _finish(
        self,
        head: str,
        token: str,
        batch: str,
        states: dict[str, tuple[dict[str, str], int]],
        lock_ms: int,
    ) -> tuple[int, Any, Any, Any]:
        """Write the items, the order states and pop the head (fenced, one script);
        returns (status, next head, its parsed doc, seq)."""
        k = self.keys
        keys = [
            k.apply_lock, k.ingest_order, k.parsed(head), k.message(head), k.sequence,
            k.index_start, k.expiry, *states,
        ]  # fmt: skip
        args: list[Any] = [
            token, head, self.settings.processed_retention_s, lock_ms, k.parsed(""), batch,
        ]  # fmt: skip
        for data, ttl in states.values():
            args.extend([json.dumps(data, ensure_ascii=False), ttl])
        status, nxt, doc, seq = self._finalize(keys=keys, args=args)
        if status == -1:
            raise LockLost("apply lock lost before finalize")
        if status == -2:
            log.warning("apply.head_moved", extra=fields(message_id=head))
        return int(status), nxt, doc, seq

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
