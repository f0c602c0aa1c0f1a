"""Claim and parse: a job takes the jobs queued behind its own (a batch) and parses their
messages, storing each outcome before any is applied (:mod:`bridge.worker.sequencer`).

The claim (``lua/claim.lua``) reads and changes rq's queue directly, through the key
layout :func:`bridge.worker.rq_compat.batch_keys` gives; on rq's stock path it gives
none and each job parses only its own message. A permanent failure is stored as a
``rejected`` outcome and dead-lettered, so the line still advances; a transient one
(Redis down) raises, and rq retries the job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script

from bridge.core import metrics
from bridge.core.codes import Hl7Error
from bridge.core.errors import PermanentError, StoreUnavailable, TransientError
from bridge.core.logs import fields, log_failure
from bridge.core.settings import WorkerSettings
from bridge.intake import deadletter
from bridge.intake.submit import JOB_ID_PREFIX
from bridge.store.keys import Keys
from bridge.worker.mapping.apply import MappingResult
from bridge.worker.rq_compat import BatchKeys

log = logging.getLogger(__name__)

#: A batch record outlives any retry cycle of its job; the stuck-head recovery reads it.
BATCH_TTL_S = 7 * 24 * 3600

#: parse(message_id, hash fields) → MappingResult; raises PermanentError / TransientError.
ParseFn = Callable[[str, dict[str, Any]], MappingResult]


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


class BatchParse:
    """The parsing half of :class:`~bridge.worker.sequencer.Sequencer`."""

    r: redis.Redis
    keys: Keys
    settings: WorkerSettings
    parse_fn: ParseFn
    rq_keys: BatchKeys | None
    _claim_script: Script
    drain: Callable[..., int]  # RunApply's

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
        rq_keys = self.rq_keys
        if self.settings.batch_size <= 1 or rq_keys is None:
            return False, []  # one message per job: no round trip for batches
        existed, taken = self._claim_script(
            keys=[rq_keys.queue, self.keys.batch(leader), rq_keys.workers],
            args=[
                max(0, self.settings.batch_size - 1), rq_keys.job_prefix, JOB_ID_PREFIX,
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
            outcome = "parsed"
            if result.alerts:
                log.warning(
                    "message.mapping_alerts",
                    extra=fields(message_id=message_id, control_id=text_meta.get("control_id", ""),
                                 alerts="; ".join(result.alerts)),
                )  # fmt: skip
        except (TransientError, redis.RedisError):
            raise
        except Exception as exc:
            detail = ""
            if isinstance(exc, PermanentError):
                code, location, reason, detail = exc.code, exc.location, str(exc), exc.detail
            else:
                # A bug must not block the line: dead-letter the message with 207.
                log_failure(log, "message.internal_error", exc, message_id=message_id)
                code, location = Hl7Error.INTERNAL_ERROR, ""
                reason = f"internal error while mapping ({type(exc).__name__})"
            self._reject(message_id, meta, text_meta, code, location, reason, detail)
            doc = {"kind": "rejected", "code": int(code), "location": location, "reason": reason}
            outcome = "rejected"
        # The application-ACK verdict is pushed when the message is applied (its items are
        # in the worklist, or it is popped as rejected): the outcome says who waits for it.
        doc["ack"] = text_meta.get("ack_mode", "")
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
        detail: str = "",
    ) -> None:
        metrics.MAPPING_FAILURES.labels(reason=failure_label(code)).inc()
        letter_meta = {
            key: text_meta.get(key, "")
            for key in (
                "control_id", "sending_app", "sending_facility", "receiving_app",
                "receiving_facility", "message_type", "version", "charset", "charset_used",
                "peer", "received_at", "processing_id", "ack_mode",
            )
        }  # fmt: skip
        letter_meta["message_id"] = message_id
        raw = meta.get("raw", b"")
        # The dead-letter id is the message id: a re-run overwrites instead of duplicating.
        letter = deadletter.DeadLetter(
            raw=raw if isinstance(raw, bytes) else str(raw).encode(),
            reason=f"{reason} ({detail})" if detail else reason,
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
