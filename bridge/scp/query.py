"""A C-FIND Identifier (pydicom Dataset) → a validated worklist query.

The query holds three things: the matching conditions for the pure matcher
(:mod:`bridge.scp.matching`), the requested keys the response must carry (matching keys are
return keys too, PS3.4 K.2.2.1.2), and the :class:`~bridge.store.CandidateQuery` the
store's indexes can answer. An Identifier that does not fit the model raises
:class:`QueryError` with the status, Offending Element and Error Comment to send.

Liberal in what we accept: keys outside the Modality Worklist model (Query/Retrieve
Level, Study Description, private tags — dcmjs-dimse sends several) and non-universal
values in keys we only return are *unsupported optional keys*: answered (FF01), never
refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from bridge.core.codes import CFindStatus
from bridge.core.settings import ScpSettings
from bridge.scp.matching import (
    COMBINED_DATETIME,
    SEQUENCE_KEYS,
    SPS_KEYWORD,
    TOP_KEYS,
    Condition,
    DateTimeCondition,
    KeySpec,
    QueryValueError,
    SequenceCondition,
    ValueCondition,
    is_universal,
    parse_range,
    parse_value_condition,
)
from bridge.store.worklist_store import CandidateQuery

SPS_STATUS = "ScheduledProcedureStepStatus"
STATION = "ScheduledStationAETitle"
_SPS_START_DATE = "ScheduledProcedureStepStartDate"
_CHARSET_TAG = 0x00080005


@dataclass(frozen=True)
class RequestedKey:
    """A key the response must carry. For a sequence, ``items`` lists the requested
    attributes of its items; None means "expand to every supported attribute"
    (a zero-length SQ key or one empty item, PS3.4 K.2.2.1.2 note)."""

    tag: int
    keyword: str
    vr: str
    items: tuple[RequestedKey, ...] | None = None


@dataclass(frozen=True)
class WorklistQuery:
    conditions: tuple[Condition, ...]
    requested: tuple[RequestedKey, ...]
    candidate: CandidateQuery
    #: Keys answered as return keys only (→ Pending FF01), for the log.
    unsupported: tuple[str, ...] = ()
    #: The query's Specific Character Set terms (empty = default repertoire).
    charset: tuple[str, ...] = ()
    #: (0008,0005) was present in the Identifier (then it is returned).
    charset_requested: bool = False
    #: The query matches on SPS Status: hidden statuses are shown.
    matches_status: bool = False
    #: Logical worklist the items must belong to (per-called-AE worklists); None = any.
    worklist: str | None = None
    #: Statuses hidden from this query.
    hidden_statuses: frozenset[str] = field(default_factory=frozenset)


class QueryError(Exception):
    """The Identifier cannot be served: ``status`` with Offending Element(s) and an
    Error Comment (PS3.7 C.4.1.1.4: (0000,0901), (0000,0902))."""

    def __init__(self, status: CFindStatus, comment: str, offending: Iterable[int] = ()) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = tuple(offending)


def _texts(elem: DataElement) -> list[str]:
    """The element's values as decoded strings (multi-valued → several)."""
    value: Any = elem.value
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("value is not decodable") from None
        values = value.split("\\")
    elif isinstance(value, MultiValue | list | tuple):
        values = [str(v) for v in value]
    else:
        values = [str(value)]
    if any("\ufffd" in v for v in values):
        # pydicom replaced bytes it could not decode in the query's character set.
        raise ValueError("value is not decodable in the query's Specific Character Set")
    return values


@dataclass
class _Level:
    """What parsing one dataset level produced."""

    conditions: list[Condition] = field(default_factory=list)
    requested: list[RequestedKey] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def _parse_level(
    ds: Dataset, table: dict[str, KeySpec], path: tuple[int, ...], top: bool
) -> _Level:
    level = _Level()
    dates: dict[str, tuple[DataElement, list[str]]] = {}
    for elem in ds:
        tag = Tag(elem.tag)
        if tag.element == 0 or tag.group in (0x0000, 0x0002):
            continue  # group lengths and command/meta elements are not keys
        if top and tag == _CHARSET_TAG:
            continue
        keyword = elem.keyword
        offending = (*path, int(tag))
        if tag.is_private or not keyword:
            level.unsupported.append(str(tag))
            continue
        spec = table.get(keyword)
        if spec is None:
            # Outside the model (e.g. an empty Query/Retrieve Level): return key only.
            level.unsupported.append(keyword)
            if elem.VR != "SQ":
                level.requested.append(RequestedKey(int(tag), keyword, elem.VR))
            continue
        # UN: an explicit-VR SCU that did not know the VR (pydicom converts it when it can).
        if elem.VR != "UN" and elem.VR not in spec.vr.split(" or "):
            raise QueryError(
                CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"{keyword} has VR {elem.VR}, expected {spec.vr}",
                offending,
            )
        if spec.vr == "SQ":
            level.requested.append(_parse_sequence(elem, spec, offending, level))
            continue
        level.requested.append(RequestedKey(int(tag), keyword, spec.vr))
        try:
            texts = _texts(elem)
        except ValueError as exc:
            raise QueryError(
                CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{keyword}: {exc}", offending
            ) from None
        if not spec.matchable:
            if texts and not all(is_universal(t) for t in texts):
                level.unsupported.append(keyword)
            continue
        if keyword in COMBINED_DATETIME or keyword in COMBINED_DATETIME.values():
            dates[keyword] = (elem, texts)
            continue
        cond = _value_condition(keyword, spec.vr, texts, offending)
        if cond is not None:
            level.conditions.append(cond)
    for date_kw, time_kw in COMBINED_DATETIME.items():
        if date_kw in dates or time_kw in dates:
            cond = _datetime_condition(date_kw, time_kw, dates, path)
            if cond is not None:
                level.conditions.append(cond)
    return level


def _value_condition(
    keyword: str, vr: str, texts: list[str], offending: tuple[int, ...]
) -> ValueCondition | None:
    try:
        return parse_value_condition(keyword, vr, texts)
    except QueryValueError as exc:
        raise _value_error(exc, offending) from None


def _value_error(exc: QueryValueError, offending: tuple[int, ...]) -> QueryError:
    status = (
        CFindStatus.UNABLE_BAD_RANGE
        if exc.bad_range
        else CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    )
    return QueryError(status, str(exc), offending)


def _datetime_condition(
    date_kw: str,
    time_kw: str,
    found: dict[str, tuple[DataElement, list[str]]],
    path: tuple[int, ...],
) -> DateTimeCondition | None:
    parsed: dict[str, Any] = {}
    for kw, vr in ((date_kw, "DA"), (time_kw, "TM")):
        if kw not in found:
            parsed[kw] = None
            continue
        elem, texts = found[kw]
        offending = (*path, int(elem.tag))
        if len(texts) > 1:
            raise QueryError(
                CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"{kw}: multiple values are not allowed in this matching key",
                offending,
            )
        text = texts[0] if texts else ""
        try:
            parsed[kw] = None if is_universal(text) else parse_range(kw, text, vr)
        except QueryValueError as exc:
            raise _value_error(exc, offending) from None
    if parsed[date_kw] is None and parsed[time_kw] is None:
        return None
    return DateTimeCondition(date_kw, time_kw, parsed[date_kw], parsed[time_kw])


def _parse_sequence(
    elem: DataElement, spec: KeySpec, offending: tuple[int, ...], parent: _Level
) -> RequestedKey:
    items = list(elem.value or [])
    if len(items) > 1:
        # PS3.4 C.2.2.2.6: a sequence matching key holds a single item.
        raise QueryError(
            CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"{spec.keyword} must hold at most one item, got {len(items)}",
            offending,
        )
    if not items or len(items[0]) == 0:
        return RequestedKey(spec.tag, spec.keyword, "SQ", None)
    sub = _parse_level(items[0], SEQUENCE_KEYS.get(spec.keyword, {}), offending, top=False)
    parent.unsupported.extend(f"{spec.keyword}>{k}" for k in sub.unsupported)
    if sub.conditions:
        parent.conditions.append(SequenceCondition(spec.keyword, tuple(sub.conditions)))
    return RequestedKey(spec.tag, spec.keyword, "SQ", tuple(sub.requested))


def _sps_conditions(conditions: list[Condition]) -> list[Condition]:
    for cond in conditions:
        if isinstance(cond, SequenceCondition) and cond.keyword == SPS_KEYWORD:
            return list(cond.conditions)
    return []


def parse_identifier(
    ds: Dataset, scp: ScpSettings, calling_ae: str = "", called_ae: str = ""
) -> WorklistQuery:
    """Validate the Identifier and plan the query (may raise :class:`QueryError`; may
    also raise whatever pydicom raises while decoding a malformed Identifier)."""
    level = _parse_level(ds, TOP_KEYS, (), top=True)
    conditions = level.conditions
    sps = _sps_conditions(conditions)

    # Worklist hygiene: calling AE title as Scheduled Station AE Title when the query
    # leaves that key universal (Orthanc FilterIssuerAet, dcm4chee #1442).
    if (
        scp.calling_ae_as_station
        and calling_ae
        and not any(isinstance(c, ValueCondition) and c.keyword == STATION for c in sps)
    ):
        sps.append(ValueCondition(STATION, "AE", "single", text=calling_ae.strip()))
        conditions = [
            c
            for c in conditions
            if not (isinstance(c, SequenceCondition) and c.keyword == SPS_KEYWORD)
        ]
        conditions.append(SequenceCondition(SPS_KEYWORD, tuple(sps)))

    equals: dict[str, tuple[str, ...]] = {}
    start_min: int | None = None
    start_max: int | None = None
    top_specs = [(c, TOP_KEYS.get(getattr(c, "keyword", ""))) for c in conditions]
    sps_table = SEQUENCE_KEYS[SPS_KEYWORD]
    sps_specs = [(c, sps_table.get(getattr(c, "keyword", ""))) for c in sps]
    for cond, spec in [*top_specs, *sps_specs]:
        if isinstance(cond, ValueCondition) and spec is not None and spec.index:
            if cond.kind == "single":
                equals[spec.index] = (cond.text,)
            elif cond.kind == "uid_list":
                equals[spec.index] = cond.uids
        elif isinstance(cond, DateTimeCondition) and cond.date_keyword == _SPS_START_DATE:
            interval = cond.interval()
            if interval is not None:
                # Store scores are YYYYMMDDHHMMSS (fractions dropped): widen to a superset.
                start_min = None if interval.lo is None else interval.lo // 10**6
                start_max = None if interval.hi is None else interval.hi // 10**6

    matches_status = any(isinstance(c, ValueCondition) and c.keyword == SPS_STATUS for c in sps)
    hidden = frozenset() if matches_status else frozenset(scp.hide_statuses)
    exclude = {"status": tuple(sorted(hidden))} if hidden else {}
    worklist: str | None = None
    if scp.per_called_ae_worklists:
        worklist = called_ae.strip()
        equals["worklist"] = (worklist,)

    charset: tuple[str, ...] = ()
    charset_requested = _CHARSET_TAG in ds
    if charset_requested:
        raw = ds[_CHARSET_TAG].value
        if isinstance(raw, MultiValue | list | tuple):
            charset = tuple(str(v).strip() for v in raw)
        elif raw:
            charset = (str(raw).strip(),)

    return WorklistQuery(
        conditions=tuple(conditions),
        requested=tuple(level.requested),
        candidate=CandidateQuery(
            equals=equals, exclude=exclude, start_min=start_min, start_max=start_max
        ),
        unsupported=tuple(level.unsupported),
        charset=charset,
        charset_requested=charset_requested,
        matches_status=matches_status,
        worklist=worklist,
        hidden_statuses=hidden,
    )
