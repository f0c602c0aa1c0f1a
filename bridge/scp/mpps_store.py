"""MPPS instances in Redis, and the internal message each status change becomes.

One hash per SOP Instance UID (``keys.mpps(uid)``) and an index by creation time
(``keys.mpps_index``). The SCP writes these fields:

* ``status`` — IN PROGRESS, COMPLETED or DISCONTINUED, as the modality set it;
* ``dataset`` — the instance's attributes as JSON, keyword → str / list[str] / list[dict]
  (decoded Unicode, like a worklist item), N-SETs merged in;
* ``created_at``, ``updated_at`` — epoch seconds; ``calling_ae`` — who created it;
* ``refs`` — JSON list of the Scheduled Step Attributes Sequence items, each
  ``{"StudyInstanceUID", "RequestedProcedureID", "ScheduledProcedureStepID",
  "AccessionNumber"}``; ``patient_id``, ``issuer`` — Patient ID and its issuer;
* ``charset`` — the N-CREATE's Specific Character Set, in which an N-SET without its own
  is decoded (PS3.4 F.7.2.2.1).

The workers add ``items``, ``unscheduled``, ``patient_mismatch``, ``applied_status`` and
``applied_at`` when they apply the internal message; the SCP never writes those.

Every accepted N-CREATE, and every N-SET that makes the instance COMPLETED or
DISCONTINUED, is one MULTI/EXEC: the hash, the index entry, the expiry and the internal
message (:func:`bridge.intake.submit.queue_internal`: message hash, ingest line, rq job)
— durable together before the SCP answers Success, as an HL7 message is before its ACK.
The transaction runs under WATCH of the instance hash, and the stored status is checked
after the WATCH: two associations changing one instance at once cannot both succeed;
the second one's transaction is retried, sees the first one's result and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bridge.core.codes import NStatus, PpsStatus
from bridge.core.errors import StoreUnavailable
from bridge.intake.submit import INTERNAL_MPPS, queue_internal
from bridge.scp import mpps_rules
from bridge.scp.mpps_rules import Attrs, Refusal
from bridge.store.keys import Keys

#: WATCH conflicts only happen when one instance is changed by two requests at once.
_WATCH_ATTEMPTS = 5


@dataclass(frozen=True)
class StoredInstance:
    """One MPPS instance as read back from its hash (the workers' fields included)."""

    uid: str
    status: str
    attrs: Attrs
    charset: tuple[str, ...]
    created_at: float
    updated_at: float
    calling_ae: str
    refs: list[dict[str, str]]
    patient_id: str
    issuer: str
    #: Every field of the hash as text, for ``mpps show``.
    fields: dict[str, str]

    @classmethod
    def from_hash(cls, uid: str, raw: dict[bytes, bytes]) -> StoredInstance:
        """Raises ValueError when the hash is not one the SCP wrote."""
        text = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        try:
            attrs = json.loads(text["dataset"])
            refs = json.loads(text.get("refs") or "[]")
            charset = tuple(json.loads(text.get("charset") or "[]"))
            created = float(text.get("created_at") or 0)
            updated = float(text.get("updated_at") or created)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"MPPS hash of {uid} unreadable: {type(exc).__name__}") from None
        if not isinstance(attrs, dict) or not isinstance(refs, list):
            raise ValueError(f"MPPS hash of {uid} unreadable: wrong shape")
        return cls(
            uid=uid,
            status=text.get("status", ""),
            attrs=attrs,
            charset=charset,
            created_at=created,
            updated_at=updated,
            calling_ae=text.get("calling_ae", ""),
            refs=refs,
            patient_id=text.get("patient_id", ""),
            issuer=text.get("issuer", ""),
            fields=text,
        )


@dataclass(frozen=True)
class Change:
    """What an accepted request writes: hash fields, and the payload of the internal
    message when the status changed (None: attributes only)."""

    status: PpsStatus
    fields: dict[str, str]
    payload: dict[str, Any] | None
    #: The ingest message id, once written.
    message_id: str = ""


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def payload(
    uid: str,
    event: str,
    status: PpsStatus,
    attrs: Attrs,
    refs: list[dict[str, str]],
    patient: tuple[str, str],
    calling_ae: str,
    now: float,
) -> dict[str, Any]:
    """The internal message the workers apply (the contract with ``bridge.worker``)."""
    return {
        "kind": "mpps",
        "uid": uid,
        "event": event,
        "status": str(status),
        "reason_code": mpps_rules.reason_code(attrs),
        "refs": refs,
        "PatientID": patient[0],
        "IssuerOfPatientID": patient[1],
        "calling_ae": calling_ae,
        "at": now,
    }


def creation(
    uid: str, attrs: Attrs, charset: tuple[str, ...], calling_ae: str, now: float
) -> Change:
    """The write of a valid N-CREATE (already checked by :func:`mpps_rules.check_create`)."""
    refs = mpps_rules.refs(attrs)
    patient = (
        mpps_rules.first_text(attrs.get("PatientID")),
        mpps_rules.first_text(attrs.get("IssuerOfPatientID")),
    )
    fields = {
        "status": str(PpsStatus.IN_PROGRESS),
        "dataset": _json(attrs),
        "created_at": repr(now),
        "updated_at": repr(now),
        "calling_ae": calling_ae,
        "refs": _json(refs),
        "patient_id": patient[0],
        "issuer": patient[1],
        "charset": _json(list(charset)),
    }
    message = payload(uid, "create", PpsStatus.IN_PROGRESS, attrs, refs, patient, calling_ae, now)
    return Change(PpsStatus.IN_PROGRESS, fields, message)


def update(
    stored: StoredInstance, status: PpsStatus, attrs: Attrs, calling_ae: str, now: float
) -> Change:
    """The write of a valid N-SET: the merged attributes, and a message only when the
    status leaves IN PROGRESS (an N-SET that keeps it only updates the attributes)."""
    fields = {"status": str(status), "dataset": _json(attrs), "updated_at": repr(now)}
    message = None
    if status.is_final:
        patient = (stored.patient_id, stored.issuer)
        message = payload(stored.uid, "set", status, attrs, stored.refs, patient, calling_ae, now)
    return Change(status, fields, message)


class MppsStore:
    """MPPS instances in Redis (sync client, shared by the SCP's association threads)."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, retention_s: int, max_retries: int
    ) -> None:
        self._r = client
        self._keys = keys
        self.retention_s = retention_s
        self.max_retries = max_retries

    @property
    def keys(self) -> Keys:
        return self._keys

    def create(self, uid: str, change: Callable[[], Change], calling_ae: str) -> Change:
        """Store a new instance; :class:`Refusal` 0111 if ``uid`` exists (an instance
        expired after ``retention_s`` no longer does)."""

        def decide(raw: dict[bytes, bytes]) -> Change:
            if raw:
                raise Refusal(NStatus.DUPLICATE_SOP_INSTANCE, "SOP Instance UID already exists")
            return change()

        return self._transact(uid, decide, calling_ae, created=True)

    def update(
        self, uid: str, change: Callable[[StoredInstance], Change], calling_ae: str
    ) -> Change:
        """Apply an N-SET: ``change`` sees the instance as stored under the WATCH and
        returns the write or raises :class:`Refusal`; 0112 if there is no instance."""

        def decide(raw: dict[bytes, bytes]) -> Change:
            if not raw:
                raise Refusal(NStatus.NO_SUCH_SOP_INSTANCE, "No such MPPS instance")
            try:
                stored = StoredInstance.from_hash(uid, raw)
            except ValueError:
                raise Refusal(
                    NStatus.PROCESSING_FAILURE, "Stored MPPS instance unreadable"
                ) from None
            return change(stored)

        return self._transact(uid, decide, calling_ae, created=False)

    def _transact(
        self,
        uid: str,
        decide: Callable[[dict[bytes, bytes]], Change],
        calling_ae: str,
        *,
        created: bool,
    ) -> Change:
        key = self._keys.mpps(uid)
        try:
            with self._r.pipeline(transaction=True) as pipe:
                for _ in range(_WATCH_ATTEMPTS):
                    try:
                        pipe.watch(key)
                        result = decide(pipe.hgetall(key))
                        pipe.multi()
                        message_id = self._write(pipe, uid, key, result, calling_ae, created)
                        pipe.execute()
                        return Change(result.status, result.fields, result.payload, message_id)
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise StoreUnavailable(f"MPPS write failed: {type(exc).__name__}: {exc}") from exc
        raise StoreUnavailable("MPPS write failed: the instance kept changing under WATCH")

    def _write(
        self, pipe: Any, uid: str, key: str, change: Change, calling_ae: str, created: bool
    ) -> str:
        pipe.hset(key, mapping=change.fields)
        if self.retention_s:
            pipe.expire(key, self.retention_s)
        if created:
            created_at = float(change.fields["created_at"])
            pipe.zadd(self._keys.mpps_index, {uid: created_at})
            if self.retention_s:
                # Index entries of instances created more than the retention ago are
                # trimmed here, so the index stays bounded without a sweeper.
                cutoff = created_at - self.retention_s
                pipe.zremrangebyscore(self._keys.mpps_index, "-inf", f"({cutoff}")
        if change.payload is None:
            return ""
        return queue_internal(
            pipe,
            self._keys,
            INTERNAL_MPPS,
            change.payload,
            source=calling_ae,
            control_id=f"{uid}:{change.status}",
            max_retries=self.max_retries,
            received_at=float(change.payload["at"]),
        )

    # -- reads (admin commands) ---------------------------------------------------------
    def get(self, uid: str) -> StoredInstance | None:
        """The instance, None if unknown or expired; ValueError if unreadable."""
        try:
            raw = self._r.hgetall(self._keys.mpps(uid))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"MPPS read failed: {type(exc).__name__}: {exc}") from exc
        return StoredInstance.from_hash(uid, raw) if raw else None

    def recent(self, limit: int = 0) -> tuple[list[StoredInstance], int]:
        """The newest instances first (at most ``limit``, 0 = all) and how many the
        index holds; entries whose hash expired are skipped."""
        index = self._keys.mpps_index
        try:
            total = int(self._r.zcard(index))
            uids = [u.decode() for u in self._r.zrevrange(index, 0, limit - 1 if limit else -1)]
            with self._r.pipeline(transaction=False) as pipe:
                for uid in uids:
                    pipe.hgetall(self._keys.mpps(uid))
                hashes = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"MPPS read failed: {type(exc).__name__}: {exc}") from exc
        out: list[StoredInstance] = []
        for uid, raw in zip(uids, hashes, strict=True):
            if raw:
                try:
                    out.append(StoredInstance.from_hash(uid, raw))
                except ValueError:
                    continue
        return out, total
