"""HL7 messages to the RIS when a modality reports an exam started, completed or
discontinued (MPPS, issue #13): rendered from the mapping file's ``status_messages``
template when the status change is planned, written with it in one fenced step, then
delivered in order per order by the outbound stage (``bridge/outbound``).

Which status the order gets (ORC-5, HL7 table 0038): ``IP`` while any procedure of the
order is started, or some are finished and some not; ``CM`` only once every SPS of the
order is final and one was completed; ``DC`` when every SPS is final and none was
completed; ``SC`` when all are scheduled again (a discontinuation as "wrong worklist
entry"). A message goes out only when that order status changes, and only for changes
a modality reported: what came from the RIS is never echoed back.

Template placeholders: ``{Keyword}`` (an item's DICOM attribute, ``{SPS.Keyword}`` inside
its SPS, ``{Keyword.Sub}`` for the first item of a sequence), ``{placer}``, ``{filler}``,
``{order_status}``, ``{now}`` (HL7 TS), ``{n}`` (the item's position, in ``per_item``
segments); ``|xpn`` after a PN keyword gives HL7 XPN component order. Every value is
HL7-escaped; the MSH is built here (version, type, applications, MSH-10, UTF-8).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from bridge.core.codes import FINAL_SPS_STATUSES, SpsStatus
from bridge.hl7.ack import escape, new_control_id
from bridge.store.item import WorklistItem
from bridge.worker.mapping.schema import StatusTemplate

_PLACEHOLDER = re.compile(r"\{([A-Za-z][A-Za-z0-9_.]*)(\|xpn)?\}")


def order_status(items: Iterable[WorklistItem]) -> str:
    """ORC-5 for an order from the SPS statuses of all its items (see the module doc)."""
    statuses = [it.status for it in items]
    if not statuses:
        return ""
    if all(s in FINAL_SPS_STATUSES for s in statuses):
        return "CM" if SpsStatus.COMPLETED.value in statuses else "DC"
    if any(s == SpsStatus.STARTED.value or s in FINAL_SPS_STATUSES for s in statuses):
        return "IP"
    return "SC"


def _value(item: WorklistItem, name: str) -> Any:
    source: dict[str, Any] = item.attrs
    parts = name.split(".")
    if parts[0] == "SPS":
        source, parts = item.sps, parts[1:]
    value: Any = source.get(parts[0], "")
    for part in parts[1:]:
        if isinstance(value, list):
            value = value[0] if value else {}
        value = value.get(part, "") if isinstance(value, dict) else ""
    if isinstance(value, list):
        value = value[0] if value and isinstance(value[0], str) else ""
    return value if isinstance(value, str) else ""


def _xpn(pn: str) -> list[str]:
    """DICOM PN family^given^middle^prefix^suffix (first group) → XPN components
    family^given^middle^suffix^prefix."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return [family, given, middle, suffix, prefix]


def _fill(line: str, item: WorklistItem | None, fixed: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, xpn = m.group(1), m.group(2)
        if name in fixed:
            return escape(fixed[name])
        value = _value(item, name) if item is not None else ""
        if xpn:
            return "^".join(escape(p) for p in _xpn(value)).rstrip("^")
        return escape(value)

    return _PLACEHOLDER.sub(sub, line)


def render(
    template: StatusTemplate,
    items: list[WorklistItem],
    placer: str,
    filler: str,
    status: str,
    now: float,
) -> tuple[str, bytes]:
    """(MSH-10, the message as UTF-8 bytes, segments joined by CR) for an order whose
    status became ``status``; ``items`` are the order's items, the first one fills the
    order-level segments."""
    control_id = new_control_id()
    stamp = dt.datetime.fromtimestamp(now).astimezone().strftime("%Y%m%d%H%M%S%z")
    msh = "|".join([
        "MSH", "^~\\&", escape(template.sending_application), escape(template.sending_facility),
        escape(template.receiving_application), escape(template.receiving_facility), stamp, "",
        template.message_type, control_id, "P", template.version, "", "", "", "", "",
        "UNICODE UTF-8",
    ])  # fmt: skip
    fixed = {"placer": placer, "filler": filler, "order_status": status, "now": stamp}
    segments = [msh]
    first = items[0] if items else None
    segments += [_fill(line, first, fixed) for line in template.segments]
    for n, item in enumerate(items, start=1):
        segments += [_fill(line, item, {**fixed, "n": str(n)}) for line in template.per_item]
    return control_id, ("\r".join(segments) + "\r").encode("utf-8")
