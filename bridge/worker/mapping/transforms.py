"""Value transforms: HL7 data types → DICOM values (pure functions).

Each raises :class:`~bridge.errors.MessageRejected` with HL7 code 102 (data type) and
the field location when a value cannot be converted; none ever puts a value in an error
text (error texts reach logs and ACKs; values are patient data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.hl7.charsets import dicom_term
from bridge.hl7.message import Node

_TS = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.\d{1,4})?(?P<z>[+-]\d{4})?$"
)


class Partial(Exception):
    """A TS with less precision than the target needs (e.g. a birth year only)."""


def parse_ts(text: str, location: str) -> tuple[datetime, int]:
    """HL7 TS/DTM → (naive or aware datetime, digits of precision: 4, 6, 8, 10, 12, 14)."""
    m = _TS.match(text.strip())
    if not m:
        raise MessageRejected(f"{location} is not an HL7 timestamp", Hl7Error.DATA_TYPE, location)
    precision = 4 + sum(2 for k in ("mo", "d", "h", "mi", "s") if m[k])
    try:
        dt = datetime(
            int(m["y"]), int(m["mo"] or 1), int(m["d"] or 1),
            int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0),
        )  # fmt: skip
    except ValueError:
        raise MessageRejected(
            f"{location} is not a valid date", Hl7Error.DATA_TYPE, location
        ) from None
    if m["z"]:
        sign = 1 if m["z"][0] == "+" else -1
        offset = timedelta(hours=int(m["z"][1:3]), minutes=int(m["z"][3:5]))
        dt = dt.replace(tzinfo=timezone(sign * offset))
    return dt, precision


def _localise(dt: datetime, zone: ZoneInfo | None, precision: int) -> datetime:
    # A date-only TS has no instant to convert; only timestamps with a time move zones.
    if zone is None or dt.tzinfo is None or precision < 10:
        return dt.replace(tzinfo=None)
    return dt.astimezone(zone).replace(tzinfo=None)


def ts_date(text: str, location: str, zone: ZoneInfo | None) -> str:
    """TS → DA ``YYYYMMDD``; reduced precision (``YYYY``, ``YYYYMM``) raises Partial."""
    dt, precision = parse_ts(text, location)
    if precision < 8:
        raise Partial(location)
    return _localise(dt, zone, precision).strftime("%Y%m%d")


def ts_time(text: str, location: str, zone: ZoneInfo | None) -> str:
    """TS → TM ``HHMMSS`` (local, no offset); a TS without hours and minutes raises Partial."""
    dt, precision = parse_ts(text, location)
    if precision < 12:
        raise Partial(location)
    return _localise(dt, zone, precision).strftime("%H%M%S")


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    # An escaped ^ (\\S\\) or = inside a name part would shift PN components or groups.
    parts = [
        p.replace("^", " ").replace("=", " ").strip()
        for p in (family, given, middle, prefix, suffix)
    ]
    return "^".join(parts).rstrip("^")


def xpn_pn(node: Node) -> str:
    """XPN family^given^middle^suffix^prefix^degree → PN family^given^middle^prefix^suffix
    (degree appended to the suffix, as dcm4chee does). Family subcomponents (v2.4+
    surname&own-prefix...) contribute their first subcomponent only."""
    suffix = " ".join(p for p in (node.part(4), node.part(6)) if p)
    return _pn(node.part(1), node.part(2), node.part(3), node.part(5), suffix)


#: HL7 table 4000 name/address representation (XPN-8), in DICOM PN group order
#: (PS3.5 6.2.1.1: alphabetic, ideographic, phonetic).
PN_GROUPS = ("A", "I", "P")


def xpn_pn_groups(nodes: Sequence[Node]) -> str:
    """Every XPN repetition (``PID-5[*]``) → one PN with its component groups, keyed by
    XPN-8 (table 4000: ``A`` alphabetic, ``I`` ideographic, ``P`` phonetic; empty = ``A``,
    the table's default), joined by ``=`` alphabetic first, trailing empty groups dropped:
    ``Yamada^Tarou=山田^太郎=やまだ^たろう``, ``=山田^太郎=やまだ^たろう``.

    The first repetition of each kind wins and repetitions with another code are not
    used, so an ordinary name (one repetition, no XPN-8) gives exactly :func:`xpn_pn`."""
    chosen: dict[str, Node] = {}
    for node in nodes:
        code = node.part(8).strip().upper() or "A"
        if code in PN_GROUPS:
            chosen.setdefault(code, node)
    groups = [xpn_pn(chosen[g]) if g in chosen else "" for g in PN_GROUPS]
    return "=".join(groups).rstrip("=")


def xcn_pn(node: Node) -> str:
    """XCN id^family^given^middle^suffix^prefix^degree → PN, skipping the leading ID."""
    suffix = " ".join(p for p in (node.part(5), node.part(7)) if p)
    return _pn(node.part(2), node.part(3), node.part(4), node.part(6), suffix)


def code_item(
    node: Node, components: tuple[int, ...], scheme_default: str
) -> dict[str, str] | None:
    """Code triplet (CE/CWE) → one Code Sequence item; no code value → None."""
    value, scheme, meaning = (node.part(c) for c in components)
    if not value:
        return None
    return {
        "CodeValue": value,
        "CodingSchemeDesignator": scheme or scheme_default,
        "CodeMeaning": meaning,
    }


def charset(node: Node) -> str:
    """HL7 table 0211 name (or alias) → DICOM Specific Character Set defined term, from
    the one table of :mod:`bridge.hl7.charsets`; unknown → ""."""
    return dicom_term(node.text)


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.match(value))
