"""pynetdicom event handlers of the MWL SCP: C-FIND (a generator) and C-ECHO.

Bound with their dependencies by :mod:`bridge.scp.server` (``evt_handlers=[(evt.EVT_C_FIND,
handle_find, [store, settings])]``). Every status of PS3.4 Table K.4-1 is decided here;
no exception escapes to pynetdicom (which would answer its generic C311):

* FF00 per matching item, FF01 when the query holds keys we only return;
* FE00 when a C-CANCEL-FIND-RQ arrived (checked before every yield);
* A900 for an Identifier that does not fit the model or cannot be decoded;
* A700 when the store is unreachable or the matches exceed ``scp.max_results``
  (refused, never truncated);
* C101 bad range syntax, C102 stored item unreadable, C1FF anything unexpected.

The final Success (0000) is sent by pynetdicom when the generator ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.dataset import Dataset

from bridge.core import metrics
from bridge.core.codes import CFindStatus
from bridge.core.errors import StoreUnavailable
from bridge.core.logs import fields, log_failure
from bridge.core.settings import ScpSettings
from bridge.scp import pynetdicom_compat
from bridge.scp.matching import MatchOptions, matches
from bridge.scp.query import QueryError, WorklistQuery, parse_identifier
from bridge.scp.response import (
    CharsetPolicy,
    ResponseCache,
    ResponseError,
    UnrepresentableText,
    encoded_response,
)
from bridge.store.item import WorklistItem
from bridge.store.worklist_store import WorklistStore

log = logging.getLogger(__name__)

#: Modality Worklist Information Model – FIND (PS3.4 K.6.1.1).
MWL_FIND = "1.2.840.10008.5.1.4.31"

FindResult = tuple[int | Dataset, Dataset | None]

#: How often (in items) the pre-count of an over-large candidate set checks for cancel.
_CANCEL_CHECK_EVERY = 256
#: Every this many Pendings the handler lets the send queue drain (see
#: pynetdicom_compat.wait_for_send_queue): bounds how late a C-CANCEL is noticed.
_DRAIN_EVERY = 8
#: (0000,0902) Error Comment is LO: 64 characters.
_COMMENT_MAX = 64


class StoreDataCorrupt(Exception):
    """A stored item could not be read back (JSON or shape error)."""


def failure(status: int, comment: str, offending: Iterable[int] = ()) -> Dataset:
    """A status Dataset carrying Error Comment and Offending Element (PS3.7 C.4.1)."""
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:_COMMENT_MAX]
    tags = list(offending)
    if tags:
        ds.OffendingElement = tags if len(tags) > 1 else tags[0]
    return ds


def _calling_called(event: Any) -> tuple[str, str]:
    assoc = event.assoc
    calling = str(assoc.requestor.ae_title or "").strip()
    called = ""
    primitive = getattr(assoc.requestor, "primitive", None)
    if primitive is not None:
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    return calling, called


def _items(store: WorklistStore, ids: list[str]) -> Iterator[tuple[bytes, WorklistItem]]:
    loader = store.load_raw(ids)
    while True:
        try:
            item = next(loader)
        except StopIteration:
            return
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise StoreDataCorrupt(type(exc).__name__) from None
        yield item


def _visible(item: WorklistItem, query: WorklistQuery, options: MatchOptions) -> bool:
    if item.hidden:
        return False
    if query.worklist is not None and item.worklist != query.worklist:
        return False
    if item.status in query.hidden_statuses:
        return False
    return matches(item.attrs, query.conditions, options)


def handle_find(
    event: Any,
    store: WorklistStore,
    settings: ScpSettings,
    cache: ResponseCache | None = None,
) -> Iterator[FindResult]:
    """EVT_C_FIND handler for Modality Worklist Information Model – FIND."""
    started = time.monotonic()
    calling, called = _calling_called(event)
    outcome: dict[str, Any] = {"status": "0000", "matches": 0}
    try:
        yield from _find(event, store, settings, cache, calling, called, outcome)
    except StoreUnavailable as exc:
        outcome["status"] = "A700"
        log.warning("cfind.store_unavailable", extra=fields(error=str(exc)))
        yield failure(CFindStatus.OUT_OF_RESOURCES, "Worklist store unavailable"), None
    except StoreDataCorrupt as exc:
        outcome["status"] = "C102"
        log.error("cfind.store_corrupt", extra=fields(error=str(exc)))
        yield (
            failure(CFindStatus.UNABLE_STORE_DATA_CORRUPT, "Stored worklist item unreadable"),
            None,
        )
    except Exception as exc:
        outcome["status"] = "C1FF"
        log_failure(log, "cfind.internal_error", exc)
        yield failure(CFindStatus.UNABLE_INTERNAL, "Internal error in the worklist SCP"), None
    finally:
        elapsed_s = time.monotonic() - started
        metrics.CFIND_REQUESTS.labels(status=status_label(outcome["status"])).inc()
        metrics.CFIND_DURATION.observe(elapsed_s)
        log.info(
            "cfind.done",
            extra=fields(
                calling_ae=calling,
                called_ae=called,
                ms=round(elapsed_s * 1000, 1),
                **outcome,
            ),
        )


def _find(
    event: Any,
    store: WorklistStore,
    settings: ScpSettings,
    cache: ResponseCache | None,
    calling: str,
    called: str,
    outcome: dict[str, Any],
) -> Iterator[FindResult]:
    if event.is_cancelled:
        outcome["status"] = "FE00"
        yield CFindStatus.CANCEL, None
        return
    if str(event.context.abstract_syntax) != MWL_FIND:
        outcome["status"] = "0122"
        yield CFindStatus.SOP_CLASS_NOT_SUPPORTED, None
        return
    try:
        # event.identifier decodes lazily: a malformed Identifier raises here or while
        # parse_identifier walks it, and must become our A900, not pynetdicom's C311.
        query = parse_identifier(event.identifier, settings, calling, called)
    except QueryError as exc:
        outcome["status"] = f"{int(exc.status):04X}"
        log.info("cfind.rejected", extra=fields(reason=exc.comment))
        yield failure(exc.status, exc.comment, exc.offending), None
        return
    except Exception as exc:
        outcome["status"] = "A900"
        log.warning("cfind.undecodable", extra=fields(error=type(exc).__name__))
        yield (
            failure(
                CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "Identifier cannot be decoded"
            ),
            None,
        )
        return
    if query.unsupported:
        log.info("cfind.unsupported_keys", extra=fields(keys=",".join(query.unsupported)))

    options = MatchOptions(settings.pn_case_insensitive, settings.pn_accent_insensitive)
    ids = store.candidate_ids(query.candidate)
    outcome["candidates"] = len(ids)
    limit = settings.max_results
    source: Iterable[tuple[bytes, WorklistItem]]
    if limit and len(ids) > limit:
        # More candidates than the limit: count real matches before sending anything,
        # so an over-broad query is refused (A700) rather than truncated.
        matched: list[tuple[bytes, WorklistItem]] = []
        for n, (raw, item) in enumerate(_items(store, ids)):
            if n % _CANCEL_CHECK_EVERY == 0 and event.is_cancelled:
                outcome["status"] = "FE00"
                yield CFindStatus.CANCEL, None
                return
            if _visible(item, query, options):
                matched.append((raw, item))
                if len(matched) > limit:
                    outcome["status"] = "A700"
                    yield (
                        failure(
                            CFindStatus.OUT_OF_RESOURCES,
                            f"More than {limit} matches: refine the query",
                        ),
                        None,
                    )
                    return
        source = matched
    else:
        source = ((r, it) for r, it in _items(store, ids) if _visible(it, query, options))

    pending = CFindStatus.PENDING_WARNING if query.unsupported else CFindStatus.PENDING
    policy = CharsetPolicy.for_calling_ae(settings, calling)
    implicit = bool(event.context.transfer_syntax.is_implicit_VR)
    sent = 0
    skipped = 0
    transliterated = 0
    for raw, item in source:
        try:
            identifier, response = encoded_response(raw, item.attrs, query, policy, implicit, cache)
        except ResponseError as exc:
            # One unencodable item must not take the whole worklist down: skip it and
            # say so (no patient data in the log, only the item id).
            skipped += 1
            why: dict[str, Any] = {"item_id": item.item_id, "reason": str(exc)}
            if isinstance(exc, UnrepresentableText):
                why["charset"] = exc.charset
                metrics.RESPONSE_CHARSET_FALLBACKS.labels(action="skip", charset=exc.charset).inc()
            log.error("cfind.item_skipped", extra=fields(**why))
            continue
        if sent % _DRAIN_EVERY == 0:
            pynetdicom_compat.wait_for_send_queue(event.assoc)
        if event.is_cancelled:
            outcome.update(status="FE00", matches=sent)
            yield CFindStatus.CANCEL, None
            return
        changed = response.transliterated
        if changed.characters:
            # Sent, but not as stored: say which item and attributes (never the values).
            transliterated += 1
            metrics.RESPONSE_CHARSET_FALLBACKS.labels(
                action="transliterate", charset=response.charset
            ).inc()
            log.warning(
                "cfind.item_transliterated",
                extra=fields(
                    item_id=item.item_id,
                    charset=response.charset,
                    keys=",".join(changed.keywords),
                    characters=changed.characters,
                ),
            )
        sent += 1
        yield pending, identifier
    outcome.update(matches=sent, skipped=skipped, transliterated=transliterated)
    if event.is_cancelled:
        outcome["status"] = "FE00"
        yield CFindStatus.CANCEL, None


#: Final C-FIND status (hex) → the mwl_cfind_requests label (PS3.4 Table K.4-1 classes).
_STATUS_LABELS = {
    "0000": "success",
    "FE00": "cancel",
    "A700": "out_of_resources",
    "A900": "identifier_mismatch",
    "0122": "sop_class_not_supported",
}


def status_label(status_hex: str) -> str:
    if status_hex in _STATUS_LABELS:
        return _STATUS_LABELS[status_hex]
    return "unable_to_process" if status_hex.startswith("C") else status_hex.lower()


def handle_conn_close(event: Any) -> None:
    """EVT_CONN_CLOSE: one association fewer on the gauge."""
    metrics.ASSOCIATIONS_OPEN.dec()


def handle_conn_open(event: Any) -> None:
    """EVT_CONN_OPEN: one association more on the gauge; the socket and the Pending
    response path tuned by :func:`bridge.scp.pynetdicom_compat.tune_association`."""
    metrics.ASSOCIATIONS_OPEN.inc()
    pynetdicom_compat.tune_association(event.assoc)


def handle_echo(event: Any) -> int:
    """EVT_C_ECHO handler (Verification SOP Class): always Success."""
    return 0x0000
