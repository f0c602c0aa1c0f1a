"""pynetdicom event handlers of the MPPS SCP: N-CREATE and N-SET of the Modality
Performed Procedure Step SOP Class (1.2.840.10008.3.1.2.3.3, PS3.4 Annex F.7).

Bound with their dependencies by :mod:`bridge.scp.server`. Thin on purpose: the rules of
Annex F.7 are :mod:`bridge.scp.mpps_rules`, the atomic write (instance, index, internal
message) is :mod:`bridge.scp.mpps_store`. Each answer is one of:

* ``0000`` — stored; a status change is in the ingest line (durable before the answer);
* ``0106`` — N-CREATE not IN PROGRESS; N-SET of a "Not allowed" attribute or of a status
  outside the enumerated values; text not decodable in its character set;
* ``0110`` — N-SET on a COMPLETED/DISCONTINUED instance (Error ID A710); N-SET to a final
  status without its Final State Type 1 attributes; an unexpected error;
* ``0111`` — N-CREATE of an existing SOP Instance UID; ``0112`` — N-SET of an unknown one;
* ``0117`` — an Affected SOP Instance UID that breaks the UID rules;
* ``0120`` / ``0121`` — a Type 1 attribute of the N-CREATE absent / empty;
* ``0213`` — Redis unreachable: nothing stored, the modality should try again.

No exception escapes to pynetdicom (it would answer its own 0110 without saying why).
Logs carry the UID, the calling AE, statuses, the attribute keywords of a refusal and the
ingest message id; never a value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from bridge.core import metrics
from bridge.core.codes import NStatus, PpsStatus
from bridge.core.errors import StoreUnavailable
from bridge.core.logs import fields, log_failure
from bridge.scp import mpps_rules, mpps_store, pynetdicom_compat
from bridge.scp.mpps_rules import Refusal
from bridge.scp.mpps_store import Change, MppsStore, StoredInstance

log = logging.getLogger(__name__)

NResult = tuple[Dataset, Dataset | None]


def _calling_ae(event: Any) -> str:
    return str(event.assoc.requestor.ae_title or "").strip()


def _response_status(code: NStatus, comment: str = "", error_id: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[: mpps_rules.COMMENT_MAX]
    if error_id is not None:
        ds.ErrorID = error_id
    return ds


def handle_n_create(event: Any, store: MppsStore) -> NResult:
    """EVT_N_CREATE: a modality started a procedure step."""
    request = event.request
    uid = str(request.AffectedSOPInstanceUID or "")
    assigned = not uid
    if assigned:
        # PS3.7 10.1.5.1.2: without an Affected SOP Instance UID the SCP assigns one and
        # returns it in the response (F.7.2.1.2 asks the SCU to send one; some do not).
        uid = str(generate_uid())
    calling = _calling_ae(event)

    def work() -> Change:
        if not mpps_rules.valid_uid(uid):
            raise Refusal(NStatus.INVALID_SOP_INSTANCE, "SOP Instance UID is not a valid UID")
        ds = _request_dataset(event, "attribute_list")
        charset = mpps_rules.charset_of(ds)
        attrs = mpps_rules.to_attrs(ds)
        mpps_rules.check_create(attrs)
        now = time.time()
        return store.create(
            uid, lambda: mpps_store.creation(uid, attrs, charset, calling, now), calling
        )

    status, change = _answer("n_create", event, uid, calling, work)
    if change is None or not assigned:
        return status, None
    reply = Dataset()
    reply.AffectedSOPInstanceUID = uid  # pynetdicom moves it to the response's command
    return status, reply


def handle_n_set(event: Any, store: MppsStore) -> NResult:
    """EVT_N_SET: a modality changed a procedure step (attributes, or its final status)."""
    uid = str(event.request.RequestedSOPInstanceUID or "")
    calling = _calling_ae(event)

    def change(stored: StoredInstance) -> Change:
        mpps_rules.check_updatable(stored.status)
        ds = _request_dataset(event, "modification_list")
        mpps_rules.charset_of(ds, stored.charset)
        changes = mpps_rules.to_attrs(ds)
        status, attrs = mpps_rules.check_set(stored.attrs, changes)
        return mpps_store.update(stored, status, attrs, calling, time.time())

    def work() -> Change:
        return store.update(uid, change, calling)

    status, _ = _answer("n_set", event, uid, calling, work)
    return status, None


def _request_dataset(event: Any, name: str) -> Dataset:
    """The request's data set; pynetdicom decodes it lazily, so a malformed one raises
    here (0106 rather than pynetdicom's own status)."""
    try:
        ds = getattr(event, name)
    except Exception:
        raise Refusal(NStatus.INVALID_ATTRIBUTE_VALUE, "Data set cannot be decoded") from None
    if not isinstance(ds, Dataset):
        raise Refusal(NStatus.INVALID_ATTRIBUTE_VALUE, "Data set cannot be decoded")
    return ds


def _answer(
    op: str, event: Any, uid: str, calling: str, work: Callable[[], Change]
) -> tuple[Dataset, Change | None]:
    """Run ``work`` and turn its outcome into the response status, the metric and the
    log line."""
    started = time.monotonic()
    outcome: dict[str, Any] = {"op": op, "uid": uid, "calling_ae": calling}
    change: Change | None = None
    label = "success"
    try:
        try:
            change = work()
        except Refusal as refusal:
            label = f"{int(refusal.status):04X}"
            outcome.update(status=label, reason=refusal.comment)
            if refusal.names:
                outcome["attributes"] = ",".join(refusal.names)
            _status_fields(event, refusal)
            log.warning("mpps.refused", extra=fields(**outcome))
            return _response_status(refusal.status, refusal.comment, refusal.error_id), None
        except StoreUnavailable as exc:
            label = f"{int(NStatus.RESOURCE_LIMITATION):04X}"
            log.warning("mpps.store_unavailable", extra=fields(**outcome, error=str(exc)))
            return _response_status(
                NStatus.RESOURCE_LIMITATION, "MPPS store unavailable, retry later"
            ), None
        except Exception as exc:
            label = f"{int(NStatus.PROCESSING_FAILURE):04X}"
            log_failure(log, "mpps.internal_error", exc, **outcome)
            return _response_status(
                NStatus.PROCESSING_FAILURE, "Internal error in the MPPS SCP"
            ), None
        outcome.update(
            status=str(change.status),
            message_id=change.message_id or "-",
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        event_name = "mpps.created" if op == "n_create" else "mpps.updated"
        if op == "n_set" and change.status != PpsStatus.IN_PROGRESS:
            event_name = "mpps.final"
        log.info(event_name, extra=fields(**outcome))
        return _response_status(NStatus.SUCCESS), change
    finally:
        metrics.MPPS_REQUESTS.labels(op=op, status=label).inc()


def _status_fields(event: Any, refusal: Refusal) -> None:
    """Offending Element (and Attribute Identifier List for 0120) into the response's
    command set, through the adapter; best effort, the status is what matters."""
    extra = {"OffendingElement": list(refusal.offending)}
    if refusal.missing:
        extra["AttributeIdentifierList"] = list(refusal.missing)
    if not any(extra.values()):
        return
    try:
        pynetdicom_compat.add_status_fields(event.assoc, int(event.request.MessageID), extra)
    except Exception as exc:  # never let it turn a refusal into pynetdicom's own 0110
        log_failure(log, "mpps.status_fields_failed", exc, level=logging.WARNING)
