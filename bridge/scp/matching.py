"""Pure Modality Worklist attribute matching (DICOM PS3.4 C.2.2.2, used by Annex K).

No Redis, no network: the functions take decoded Unicode query values and the stored
values of a :class:`~bridge.worklist.WorklistItem` (``str``, ``list[str]`` multi-valued,
``list[dict]`` sequences) and decide. One function per matching kind of C.2.2.2, one
table (:data:`TOP_KEYS`, :data:`SEQUENCE_KEYS`) from DICOM keyword to how it matches.

Rules that hold for every kind (PS3.4 C.2.2.2):

* a zero-length query value, or ``*`` alone, is universal and matches everything,
  including items where the attribute is empty (C.2.2.2.3, C.2.2.2.4);
* otherwise a stored empty/absent value never matches (C.2.2.2.1: "unknown" values);
* a multi-valued stored attribute matches if any one of its values matches;
* keys are ANDed; a sequence matches if one stored item matches all keys of the
  query's item (C.2.2.2.6).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

#: String VRs on which wild card matching applies (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs with range matching (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})

# -- the key table ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """One attribute of the Modality Worklist Information Model (PS3.4 Table K.6-1).

    ``return_type`` is the PS3.4 return key type (1, 1C, 2, 2C, 3); ``index`` names the
    store's equality index (:data:`bridge.store.INDEXED_FIELDS`) that can pre-select
    candidates for a single-value key; ``matchable`` is False for keys we only return.
    """

    keyword: str
    return_type: str
    index: str | None = None
    matchable: bool = True

    @property
    def vr(self) -> str:
        return str(dictionary_VR(self.keyword))

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return int(tag)


def _table(*specs: KeySpec) -> dict[str, KeySpec]:
    return {s.keyword: s for s in specs}


SPS_KEYWORD = "ScheduledProcedureStepSequence"

#: Scheduled Procedure Step attributes (items of (0040,0100)), PS3.4 Table K.6-1.
SPS_KEYS: dict[str, KeySpec] = _table(
    KeySpec("ScheduledStationAETitle", "1", index="station"),
    KeySpec("ScheduledProcedureStepStartDate", "1"),
    KeySpec("ScheduledProcedureStepStartTime", "1"),
    KeySpec("Modality", "1", index="modality"),
    KeySpec("ScheduledPerformingPhysicianName", "2"),
    KeySpec("ScheduledProcedureStepDescription", "1C"),
    KeySpec("ScheduledStationName", "2"),
    KeySpec("ScheduledProcedureStepLocation", "2"),
    KeySpec("ScheduledProtocolCodeSequence", "1C"),
    KeySpec("PreMedication", "2C"),
    KeySpec("ScheduledProcedureStepID", "1", index="spsid"),
    KeySpec("RequestedContrastAgent", "2C"),
    KeySpec("ScheduledProcedureStepStatus", "3", index="status"),
    KeySpec("ScheduledProcedureStepEndDate", "3"),
    KeySpec("ScheduledProcedureStepEndTime", "3"),
    KeySpec("CommentsOnTheScheduledProcedureStep", "3"),
)

#: Top-level attributes of a worklist item, PS3.4 Table K.6-1.
TOP_KEYS: dict[str, KeySpec] = _table(
    KeySpec(SPS_KEYWORD, "1"),
    # Requested Procedure
    KeySpec("RequestedProcedureID", "1", index="rpid"),
    KeySpec("RequestedProcedureDescription", "1C"),
    KeySpec("RequestedProcedureCodeSequence", "1C"),
    KeySpec("StudyInstanceUID", "1", index="suid"),
    KeySpec("StudyDate", "3"),
    KeySpec("StudyTime", "3"),
    KeySpec("ReferencedStudySequence", "2"),
    KeySpec("RequestedProcedurePriority", "2"),
    KeySpec("PatientTransportArrangements", "2"),
    KeySpec("ReasonForTheRequestedProcedure", "3"),
    KeySpec("RequestedProcedureComments", "3"),
    KeySpec("RequestedProcedureLocation", "3"),
    KeySpec("ReportingPriority", "3"),
    KeySpec("ConfidentialityCode", "3"),
    # Imaging Service Request
    KeySpec("AccessionNumber", "2", index="acc"),
    KeySpec("IssuerOfAccessionNumberSequence", "3"),
    KeySpec("RequestingPhysician", "2"),
    KeySpec("ReferringPhysicianName", "2"),
    KeySpec("RequestingService", "3"),
    KeySpec("PlacerOrderNumberImagingServiceRequest", "3"),
    KeySpec("FillerOrderNumberImagingServiceRequest", "3"),
    KeySpec("ImagingServiceRequestComments", "3"),
    # Visit
    KeySpec("AdmissionID", "2"),
    KeySpec("IssuerOfAdmissionIDSequence", "3"),
    KeySpec("InstitutionName", "3"),
    KeySpec("InstitutionalDepartmentName", "3"),
    KeySpec("CurrentPatientLocation", "2"),
    KeySpec("ReferencedPatientSequence", "2"),
    # Patient
    KeySpec("PatientName", "1"),
    KeySpec("PatientID", "1", index="pid"),
    KeySpec("IssuerOfPatientID", "3"),
    KeySpec("IssuerOfPatientIDQualifiersSequence", "3"),
    KeySpec("OtherPatientIDsSequence", "3"),
    KeySpec("OtherPatientNames", "3"),
    KeySpec("PatientBirthDate", "2"),
    KeySpec("PatientSex", "2"),
    KeySpec("PatientWeight", "2", matchable=False),
    KeySpec("PatientSize", "3", matchable=False),
    KeySpec("PatientAddress", "3"),
    KeySpec("EthnicGroup", "3"),
    KeySpec("PatientComments", "3"),
    KeySpec("ConfidentialityConstraintOnPatientDataDescription", "2"),
    KeySpec("ResponsiblePerson", "3"),
    KeySpec("ResponsiblePersonRole", "3"),
    KeySpec("PatientState", "2"),
    KeySpec("PregnancyStatus", "2", matchable=False),
    KeySpec("MedicalAlerts", "2"),
    KeySpec("Allergies", "2"),
    KeySpec("SpecialNeeds", "2"),
    KeySpec("AdditionalPatientHistory", "3"),
    KeySpec("LastMenstrualDate", "3"),
    # Returned when asked for; they only qualify the response (no matching).
    KeySpec("TimezoneOffsetFromUTC", "1C", matchable=False),
)

_CODE_ITEM = _table(
    KeySpec("CodeValue", "1C"),
    KeySpec("CodingSchemeDesignator", "1C"),
    KeySpec("CodingSchemeVersion", "1C"),
    KeySpec("CodeMeaning", "1"),
    KeySpec("LongCodeValue", "1C"),
    KeySpec("URNCodeValue", "1C"),
)
_REF_ITEM = _table(
    KeySpec("ReferencedSOPClassUID", "1C"), KeySpec("ReferencedSOPInstanceUID", "1C")
)
_ISSUER_ITEM = _table(
    KeySpec("LocalNamespaceEntityID", "1C"),
    KeySpec("UniversalEntityID", "1C"),
    KeySpec("UniversalEntityIDType", "1C"),
)

#: Item attributes of each supported sequence (what an empty SQ return key expands to).
SEQUENCE_KEYS: dict[str, dict[str, KeySpec]] = {
    SPS_KEYWORD: SPS_KEYS,
    "ScheduledProtocolCodeSequence": _CODE_ITEM,
    "RequestedProcedureCodeSequence": _CODE_ITEM,
    "ReferencedStudySequence": _REF_ITEM,
    "ReferencedPatientSequence": _REF_ITEM,
    "IssuerOfAccessionNumberSequence": _ISSUER_ITEM,
    "IssuerOfAdmissionIDSequence": _ISSUER_ITEM,
    "IssuerOfPatientIDQualifiersSequence": {
        **_ISSUER_ITEM,
        **_table(KeySpec("IdentifierTypeCode", "3"), KeySpec("AssigningFacilitySequence", "3")),
    },
    "OtherPatientIDsSequence": _table(
        KeySpec("PatientID", "1"),
        KeySpec("IssuerOfPatientID", "3"),
        KeySpec("TypeOfPatientID", "1"),
    ),
}

#: Date/time pairs matched as one datetime interval (PS3.4 C.2.2.2.5.1, Table K.6-1).
COMBINED_DATETIME: dict[str, str] = {
    "ScheduledProcedureStepStartDate": "ScheduledProcedureStepStartTime",
    "StudyDate": "StudyTime",
    "ScheduledProcedureStepEndDate": "ScheduledProcedureStepEndTime",
}


# -- options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchOptions:
    """SCP policy choices PS3.4 leaves open (stated in the conformance statement)."""

    #: PN single value and wild card matching ignore case (C.2.2.2.1 allows it for PN).
    pn_case_insensitive: bool = True
    #: PN matching also ignores accents (diacritics), "fuzzy" semantic matching.
    pn_accent_insensitive: bool = False


# -- errors -----------------------------------------------------------------------------


class QueryValueError(ValueError):
    """A matching key value that is not valid for its VR.

    ``bad_range`` is True when the value was meant as a range (contains ``-``) but is
    not of the form ``a-b``, ``-b`` or ``a-`` with valid bounds.
    """

    def __init__(self, keyword: str, reason: str, bad_range: bool = False) -> None:
        super().__init__(f"{keyword}: {reason}")
        self.keyword = keyword
        self.reason = reason
        self.bad_range = bad_range


# -- value parsing (C.2.2.2.5: DA / TM / DT precision and ranges) -----------------------

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$"
)

_TM_MAX = 235959_999999


def _da_value(text: str) -> int | None:
    m = _DA.match(text)
    if not m:
        return None
    y, mo, d = (int(g) for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return None
    return y * 10000 + mo * 100 + d


def _tm_bounds(text: str) -> tuple[int, int] | None:
    """(first, last) microsecond-resolution ``HHMMSSffffff`` a TM of reduced precision
    covers: ``10`` is 10:00:00.000000–10:59:59.999999 (PS3.5 6.2 TM precision)."""
    m = _TM.match(text.replace(":", ""))
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    lo_s = hh + (mm or "00") + (ss or "00") + (frac or "").ljust(6, "0")
    hi_s = hh + (mm or "59") + (ss or "59") + (frac or "").ljust(6, "9")
    return int(lo_s), int(hi_s)


def _dt_bounds(text: str) -> tuple[int, int] | None:
    """(first, last) ``YYYYMMDDHHMMSSffffff`` a DT of reduced precision covers; a UTC
    offset suffix is ignored (values are taken as local time, see conformance)."""
    m = _DT.match(text)
    if not m:
        return None
    year, month, day, time_part, _offset = m.groups()
    lo_d = int(year + (month or "01") + (day or "01"))
    hi_d = int(year + (month or "12") + (day or "31"))
    if _da_value(str(lo_d)) is None or _da_value(str(hi_d)) is None:
        return None
    if time_part:
        tb = _tm_bounds(time_part)
        if tb is None:
            return None
        t_lo, t_hi = tb
    else:
        t_lo, t_hi = 0, _TM_MAX
    return lo_d * 10**12 + t_lo, hi_d * 10**12 + t_hi


def point_bounds(text: str, vr: str) -> tuple[int, int] | None:
    """The interval a single DA/TM/DT value stands for, as comparable integers."""
    if vr == "DA":
        d = _da_value(text)
        return None if d is None else (d, d)
    if vr == "TM":
        return _tm_bounds(text)
    if vr == "DT":
        return _dt_bounds(text)
    raise ValueError(vr)


@dataclass(frozen=True)
class Range:
    """An inclusive range (PS3.4 C.2.2.2.5) over comparable integers; None = open."""

    lo: int | None
    hi: int | None

    def contains(self, value: int) -> bool:
        return (self.lo is None or self.lo <= value) and (self.hi is None or value <= self.hi)


def parse_range(keyword: str, text: str, vr: str) -> Range:
    """A DA/TM/DT query value as a :class:`Range`: ``a-b``, ``-b``, ``a-`` (range
    matching) or ``a`` (single value matching, the interval of its precision)."""
    text = text.strip()
    if "-" not in text or (vr == "DT" and _dt_bounds(text) is not None):
        bounds = point_bounds(text, vr)
        if bounds is None:
            raise QueryValueError(keyword, f"not a valid {vr} value")
        return Range(*bounds)
    parts = text.split("-")
    if len(parts) != 2 or (not parts[0] and not parts[1]):
        raise QueryValueError(keyword, f"{vr} range must be a-b, -b or a-", bad_range=True)
    lo_text, hi_text = (p.strip() for p in parts)
    lo = point_bounds(lo_text, vr) if lo_text else None
    hi = point_bounds(hi_text, vr) if hi_text else None
    if (lo_text and lo is None) or (hi_text and hi is None):
        raise QueryValueError(keyword, f"range bound is not a valid {vr} value", bad_range=True)
    return Range(lo[0] if lo else None, hi[1] if hi else None)


# -- conditions (a parsed, validated matching key) --------------------------------------


@dataclass(frozen=True)
class ValueCondition:
    """One non-universal matching key on a non-sequence attribute."""

    keyword: str
    vr: str
    #: "single", "wildcard", "uid_list" or "range"
    kind: str
    text: str = ""
    uids: tuple[str, ...] = ()
    range: Range | None = None


@dataclass(frozen=True)
class DateTimeCondition:
    """A date key and its time key matched as one datetime interval (C.2.2.2.5.1).

    ``date``/``time`` are the parsed query values (None = universal). Both present →
    one interval from (date lo, time lo) to (date hi, time hi); only the date → whole
    days; only the time → that time of day on every day.
    """

    date_keyword: str
    time_keyword: str
    date: Range | None
    time: Range | None

    def interval(self) -> Range | None:
        """The combined interval over ``YYYYMMDDHHMMSSffffff``; None when only the time
        is constrained (no date interval exists)."""
        if self.date is None:
            return None
        t_lo = 0 if self.time is None or self.time.lo is None else self.time.lo
        t_hi = _TM_MAX if self.time is None or self.time.hi is None else self.time.hi
        lo = None if self.date.lo is None else self.date.lo * 10**12 + t_lo
        hi = None if self.date.hi is None else self.date.hi * 10**12 + t_hi
        return Range(lo, hi)


@dataclass(frozen=True)
class SequenceCondition:
    """Sequence matching (C.2.2.2.6): one stored item must satisfy all ``conditions``."""

    keyword: str
    conditions: tuple[Condition, ...] = field(default_factory=tuple)


Condition = ValueCondition | DateTimeCondition | SequenceCondition


def is_universal(text: str) -> bool:
    """Universal matching (C.2.2.2.3): zero-length, or ``*`` alone (C.2.2.2.4)."""
    stripped = text.strip()
    return stripped == "" or stripped == "*"


def parse_value_condition(keyword: str, vr: str, values: Sequence[str]) -> ValueCondition | None:
    """Validate one query value (list = the backslash-separated values) for ``vr``.

    Returns None for universal matching. Raises :class:`QueryValueError` for a
    multi-valued key other than a list of UIDs (C.2.2.2.2; multiple value matching
    needs extended negotiation, which we do not accept), or an invalid DA/TM/DT value.
    """
    values = [v.strip() for v in values]
    if vr == "UI":
        uids = tuple(v for v in values if v)
        if not uids:
            return None
        for uid in uids:
            if not re.fullmatch(r"[0-9.]{1,64}", uid):
                raise QueryValueError(keyword, "not a valid UID")
        if len(uids) == 1:
            return ValueCondition(keyword, vr, "single", text=uids[0])
        return ValueCondition(keyword, vr, "uid_list", uids=uids)
    if len(values) > 1:
        raise QueryValueError(keyword, "multiple values are not allowed in this matching key")
    text = values[0] if values else ""
    if is_universal(text):
        return None
    if vr in RANGE_VRS:
        return ValueCondition(keyword, vr, "range", text=text, range=parse_range(keyword, text, vr))
    if vr in WILDCARD_VRS and ("*" in text or "?" in text):
        return ValueCondition(keyword, vr, "wildcard", text=text)
    return ValueCondition(keyword, vr, "single", text=text)


# -- the matching kinds -----------------------------------------------------------------


def _fold(text: str, vr: str, options: MatchOptions) -> str:
    """Normalise a value for comparison: PN case/accent folding per SCP policy."""
    if vr != "PN":
        return text
    if options.pn_accent_insensitive:
        text = "".join(
            ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
        )
    if options.pn_case_insensitive:
        text = text.casefold()
    return text


def _pn_alphabetic(text: str) -> str:
    return text.split("=")[0]


def match_single_value(query: str, stored: str, vr: str, options: MatchOptions) -> bool:
    """Single Value Matching (PS3.4 C.2.2.2.1).

    Exact, case-sensitive comparison; leading/trailing spaces are padding and ignored.
    PN: compared on the alphabetic component group with the case/accent policy of
    ``options``; a query with fewer components than the stored name leaves the
    missing trailing components unconstrained (``DOE`` matches ``DOE^JANE``), and an
    empty component is unconstrained too.
    """
    query, stored = query.strip(), stored.strip()
    if not stored:
        return False
    if vr != "PN":
        return query == stored
    q = _fold(query, vr, options)
    s = _fold(stored, vr, options)
    if "=" not in q:
        s = _pn_alphabetic(s)
    if q == s:
        return True
    q_parts = [p.strip() for p in q.split("^")]
    s_parts = [p.strip() for p in s.split("^")]
    if len(q_parts) > len(s_parts) and any(q_parts[len(s_parts) :]):
        return False
    return all(not qp or (i < len(s_parts) and qp == s_parts[i]) for i, qp in enumerate(q_parts))


_WILDCARD_CACHE: dict[tuple[str, bool], re.Pattern[str]] = {}


def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    key = (pattern, ignore_case)
    rx = _WILDCARD_CACHE.get(key)
    if rx is None:
        body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
        rx = re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))
        if len(_WILDCARD_CACHE) < 4096:
            _WILDCARD_CACHE[key] = rx
    return rx


def match_wildcard(pattern: str, stored: str, vr: str, options: MatchOptions) -> bool:
    """Wild Card Matching (PS3.4 C.2.2.2.4): ``*`` = any run of characters (also none),
    ``?`` = exactly one character; on PN with the SCP's case/accent policy."""
    pattern, stored = pattern.strip(), stored.strip()
    if not stored:
        return False
    p = _fold(pattern, vr, options)
    s = _fold(stored, vr, options)
    if vr == "PN" and "=" not in p:
        s = _pn_alphabetic(s)
    return _wildcard_regex(p, ignore_case=False).fullmatch(s) is not None


def match_uid_list(uids: Sequence[str], stored: str) -> bool:
    """List of UID Matching (PS3.4 C.2.2.2.2): the stored UID equals one of ``uids``."""
    stored = stored.strip().rstrip("\0")
    return bool(stored) and stored in uids


def match_range(rng: Range, stored: str, vr: str) -> bool:
    """Range Matching (PS3.4 C.2.2.2.5): inclusive bounds; also serves single DA/TM/DT
    values, whose :class:`Range` is the interval of their precision."""
    bounds = point_bounds(stored.strip(), vr) if stored.strip() else None
    return bounds is not None and rng.contains(bounds[0])


def match_datetime(cond: DateTimeCondition, stored_date: str, stored_time: str) -> bool:
    """Combined date and time range matching (PS3.4 C.2.2.2.5.1; Table K.6-1 on
    Scheduled Procedure Step Start Date/Time): the pair is one datetime interval, so
    date ``20260705-20260707`` with time ``1000-1800`` runs from 5 Jul 10:00 to 7 Jul
    18:00, not 10:00–18:00 on each day."""
    if cond.date is None and cond.time is None:
        return True
    if cond.date is None:
        assert cond.time is not None
        return match_range(cond.time, stored_time, "TM")
    d = point_bounds(stored_date.strip(), "DA") if stored_date.strip() else None
    if d is None:
        return False
    if cond.time is None:
        return cond.date.contains(d[0])
    t = point_bounds(stored_time.strip(), "TM") if stored_time.strip() else None
    if t is None:
        return False
    interval = cond.interval()
    assert interval is not None
    return interval.contains(d[0] * 10**12 + t[0])


def stored_values(value: Any) -> list[str]:
    """A stored attribute as its list of values (multi-valued → each value)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return [str(value)]


def match_value(cond: ValueCondition, stored: Any, options: MatchOptions) -> bool:
    """One value condition against a stored (possibly multi-valued) attribute: any
    stored value may match; empty/absent never matches."""
    for value in stored_values(stored):
        if cond.kind == "single":
            ok = match_single_value(cond.text, value, cond.vr, options)
        elif cond.kind == "wildcard":
            ok = match_wildcard(cond.text, value, cond.vr, options)
        elif cond.kind == "uid_list":
            ok = match_uid_list(cond.uids, value)
        else:
            assert cond.range is not None
            ok = match_range(cond.range, value, cond.vr)
        if ok:
            return True
    return False


def match_sequence(cond: SequenceCondition, stored: Any, options: MatchOptions) -> bool:
    """Sequence Matching (PS3.4 C.2.2.2.6): some stored item matches every key of the
    query item; no stored item means no match (unless the query item is universal)."""
    if not cond.conditions:
        return True
    if not isinstance(stored, list):
        return False
    return any(
        isinstance(entry, dict) and matches(entry, cond.conditions, options) for entry in stored
    )


def matches(
    attrs: Mapping[str, Any], conditions: Sequence[Condition], options: MatchOptions
) -> bool:
    """True when ``attrs`` (one dataset level of an item) satisfies every condition."""
    for cond in conditions:
        if isinstance(cond, ValueCondition):
            ok = match_value(cond, attrs.get(cond.keyword), options)
        elif isinstance(cond, DateTimeCondition):
            ok = match_datetime(
                cond,
                _first(attrs.get(cond.date_keyword)),
                _first(attrs.get(cond.time_keyword)),
            )
        else:
            ok = match_sequence(cond, attrs.get(cond.keyword), options)
        if not ok:
            return False
    return True


def _first(value: Any) -> str:
    values = stored_values(value)
    return values[0] if values else ""
