"""The durable write that precedes every positive ACK (sync; the listener runs it in a
thread pool, dead-letter replay and tools call it directly).

One MULTI/EXEC transaction, with WATCH on the dedupe key, writes:

* ``keys.message(id)`` — hash with the raw frame content (bytes, exactly as received,
  without VT/FS/CR) and the MSH metadata (see :meth:`IntakeRecord.to_hash`);
* ``RPUSH keys.ingest_order id`` — the order in which messages were accepted, which the
  workers' sequencer follows (HL7 order/cancel sequences depend on it);
* ``keys.dedupe(sender, control_id)`` = ``"<sha256 of raw>|<id>"`` with a TTL
  (``mllp.dedupe_retention_s``): MLLP is at-least-once, a resend after a lost ACK must be
  ACKed again but not queued again;
* the rq job ``bridge.jobs.process_message(id)`` (by name: the listener never imports the
  workers' code) with id ``msg-<id>``.

With Redis run as ``appendonly yes`` + ``appendfsync always``, EXEC returns only after the
AOF write is fsync'd, so "EXEC succeeded" means "survives a crash" and the ACK may go out.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from rq import Queue, Retry

from bridge.core.errors import StoreUnavailable
from bridge.hl7.msh import Msh
from bridge.store.keys import Keys

JOB_FUNC = "bridge.worker.jobs.process_message"
#: rq job id of a message = this prefix + the message id (workers batch on it).
JOB_ID_PREFIX = "msg-"
RETRY_INTERVALS_S = [1, 5, 15, 30, 60]
RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 86400
#: WATCH conflicts only happen when the same sender+control id arrives twice at once.
_WATCH_ATTEMPTS = 5


class SubmitKind(StrEnum):
    NEW = "new"  # written and queued
    DUPLICATE = "duplicate"  # same sender + control id + content already stored: ACK again
    CONFLICT = "conflict"  # same sender + control id, different content: AE 205


@dataclass(frozen=True)
class SubmitResult:
    kind: SubmitKind
    message_id: str  # the new id (NEW) or the id stored first (DUPLICATE / CONFLICT)


@dataclass(frozen=True)
class IntakeRecord:
    """One received message: raw bytes plus the MSH metadata read by the listener."""

    raw: bytes
    received_at: float  # epoch seconds
    peer: str  # "ip:port"
    sending_app: str  # MSH-3 as received
    sending_facility: str  # MSH-4
    receiving_app: str  # MSH-5
    receiving_facility: str  # MSH-6
    control_id: str  # MSH-10
    message_type: str  # MSH-9.1^MSH-9.2, e.g. "ORM^O01"
    version: str  # MSH-12 normalised ("2.3.0" → "2.3")
    charset: str = ""  # MSH-18 as received (every repetition), "" when absent
    processing_id: str = "P"  # MSH-11 as received
    ack_mode: str = "commit"  # "commit" | "application"
    #: The listener's charset decision (``Decision.to_record()``): the worker decodes
    #: with exactly this. "" = not decided (records written by older releases).
    charset_used: str = ""

    @classmethod
    def from_msh(
        cls, raw: bytes, h: Msh, *, received_at: float, peer: str, ack_mode: str
    ) -> IntakeRecord:
        """The record for ``raw`` whose MSH the listener (or a replay) has read as ``h``."""
        return cls(
            raw=raw,
            received_at=received_at,
            peer=peer,
            sending_app=h.sending_app,
            sending_facility=h.sending_facility,
            receiving_app=h.receiving_app,
            receiving_facility=h.receiving_facility,
            control_id=h.control_id,
            message_type=h.message_type,
            version=h.version,
            charset=h.charset,
            processing_id=h.processing_id_raw,
            ack_mode=ack_mode,
            charset_used=h.decision.to_record(),
        )

    @property
    def sender(self) -> str:
        """MSH-3 + MSH-4: the namespace in which MSH-10 must be unique."""
        return f"{self.sending_app}|{self.sending_facility}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def to_hash(self) -> dict[str, bytes | str]:
        fields: dict[str, bytes | str] = {
            "raw": self.raw,
            "received_at": repr(self.received_at),
            "peer": self.peer,
            "sending_app": self.sending_app,
            "sending_facility": self.sending_facility,
            "receiving_app": self.receiving_app,
            "receiving_facility": self.receiving_facility,
            "control_id": self.control_id,
            "message_type": self.message_type,
            "version": self.version,
            "charset": self.charset,
            "processing_id": self.processing_id,
            "ack_mode": self.ack_mode,
        }
        if self.charset_used:
            fields["charset_used"] = self.charset_used
        return fields


def submit(
    client: redis.Redis,
    keys: Keys,
    record: IntakeRecord,
    *,
    dedupe_ttl_s: int,
    max_retries: int,
    message_id: str | None = None,
    replay: bool = False,
) -> SubmitResult:
    """Store ``record`` and queue its job atomically, unless it is a resend.

    ``dedupe_ttl_s`` = 0 keeps dedupe keys forever. ``replay`` (dead-letter replay, an
    operator's decision) skips the resend check and points the dedupe key at the new
    copy, so a later resend from the sender is recognised as a duplicate of it.
    Raises :class:`StoreUnavailable` when Redis cannot be reached or the transaction
    fails; nothing is half-written then (MULTI/EXEC is all or nothing).
    """
    message_id = message_id or uuid.uuid4().hex
    digest = record.digest
    dedupe_key = keys.dedupe(record.sender, record.control_id)
    queue = Queue(keys.queue_name(), connection=client)
    try:
        with client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_ATTEMPTS):
                try:
                    pipe.watch(dedupe_key)
                    existing = None if replay else pipe.get(dedupe_key)
                    if existing is not None:
                        pipe.unwatch()
                        stored_digest, _, stored_id = existing.decode().partition("|")
                        kind = (
                            SubmitKind.DUPLICATE if stored_digest == digest else SubmitKind.CONFLICT
                        )
                        return SubmitResult(kind, stored_id)
                    pipe.multi()
                    pipe.hset(keys.message(message_id), mapping=record.to_hash())  # type: ignore[arg-type]
                    pipe.rpush(keys.ingest_order, message_id)
                    pipe.set(dedupe_key, f"{digest}|{message_id}", ex=dedupe_ttl_s or None)
                    _enqueue(queue, pipe, message_id, max_retries)
                    pipe.execute()
                    return SubmitResult(SubmitKind.NEW, message_id)
                except redis.WatchError:
                    continue
    except redis.RedisError as exc:
        raise StoreUnavailable(f"intake write failed: {type(exc).__name__}: {exc}") from exc
    raise StoreUnavailable("intake write failed: dedupe key kept changing under WATCH")


#: MSH-9 stand-in of an internal message (not HL7): what the worker dispatches on.
INTERNAL_MPPS = "MPPS"


def queue_internal(
    pipe: Any,
    keys: Keys,
    kind: str,
    payload: dict[str, Any],
    *,
    source: str,
    control_id: str,
    max_retries: int,
    received_at: float,
) -> str:
    """Add an internal message (not HL7, e.g. an MPPS status change from the SCP) to an
    open MULTI/EXEC ``pipe``, in the same ingest order as the HL7 messages: its hash
    (``raw`` = the payload as UTF-8 JSON, ``message_type`` = ``kind``), the ingest line and
    its rq job. The caller adds its own writes to the same transaction and executes it,
    so the effect and its record are durable together. Returns the message id.

    ``source`` names where it came from (the calling AE title) and ``control_id`` makes
    it findable in logs and dead letters; no patient data in either. The transaction must
    be started (``pipe.multi()``) before the caller's first command, as rq's enqueue needs
    an explicit one; called first, this starts it.
    """
    if not pipe.explicit_transaction:
        pipe.multi()
    message_id = uuid.uuid4().hex
    raw = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
    pipe.hset(
        keys.message(message_id),
        mapping={
            "raw": raw,
            "received_at": repr(received_at),
            "peer": f"internal:{source}",
            "sending_app": source,
            "sending_facility": "",
            "receiving_app": "",
            "receiving_facility": "",
            "control_id": control_id,
            "message_type": kind,
            "version": "",
            "charset": "",
            "processing_id": "P",
            "ack_mode": "commit",
        },
    )
    pipe.rpush(keys.ingest_order, message_id)
    # rq asks the server's version (INFO) through the queue's connection at once: given
    # the pipeline in MULTI mode, that INFO and a GET were queued into the transaction
    # and the version parse failed. A client on the pipeline's pool answers it outside.
    client = redis.Redis(connection_pool=pipe.connection_pool)
    _enqueue(Queue(keys.queue_name(), connection=client), pipe, message_id, max_retries)
    return message_id


def _enqueue(queue: Queue, pipe: redis.client.Pipeline, message_id: str, max_retries: int) -> None:
    """The ingest job of ``message_id``, queued inside ``pipe``'s transaction."""
    queue.enqueue_call(
        JOB_FUNC,
        args=(message_id,),
        job_id=f"{JOB_ID_PREFIX}{message_id}",
        retry=Retry(max=max_retries, interval=RETRY_INTERVALS_S),
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        pipeline=pipe,
    )


@dataclass(frozen=True)
class AppResult:
    """The worker's verdict for ``--ack-mode application`` (JSON on ``keys.result(id)``)."""

    ok: bool
    code: int = 0  # HL7 table 0357
    text: str = ""
    location: str = ""  # HL7 field to blame, e.g. "PID-3"

    def to_json(self) -> str:
        return json.dumps(
            {"ok": self.ok, "code": self.code, "text": self.text, "location": self.location}
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> AppResult:
        doc = json.loads(data)
        return cls(
            ok=bool(doc.get("ok")),
            code=int(doc.get("code") or 0),
            text=str(doc.get("text") or ""),
            location=str(doc.get("location") or ""),
        )
