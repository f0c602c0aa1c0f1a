"""PS3.4 Annex F.7 as data and pure checks for the MPPS SCP.

What an N-CREATE must carry (F.7.2.1.3, Table F.7.2-1 "Req. Type N-CREATE"), what an
N-SET may not change (Table F.7.2-1 "Not allowed"), which statuses may follow which
(F.1.5, F.7.2.2.3) and what a COMPLETED or DISCONTINUED instance must hold (Table F.7.2-1
"Final State", F.7.2.2.2). Also the conversion of a request's data set to the stored
shape: DICOM keyword → ``str`` / ``list[str]`` / ``list[dict]`` of decoded Unicode, as a
worklist item is stored (:mod:`bridge.store.item`).

No Redis and no network here. A request that breaks a rule raises :class:`Refusal` with
the PS3.7 Annex C status, an Error Comment naming the attributes (keywords, never
values) and their tags; :mod:`bridge.scp.mpps` answers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from bridge.core.codes import (
    MPPS_FINAL_COMMENT,
    MPPS_FINAL_ERROR_ID,
    NStatus,
    PpsStatus,
    specific_character_set,
)

Attrs = dict[str, Any]

#: (0000,0902) Error Comment is LO: at most 64 characters, and ASCII (the command set
#: has no Specific Character Set).
COMMENT_MAX = 64
CHARSET_TAG = 0x00080005
STATUS = "PerformedProcedureStepStatus"
SSAS = "ScheduledStepAttributesSequence"
DISCONTINUATION_REASON = "PerformedProcedureStepDiscontinuationReasonCodeSequence"

#: Table F.7.2-1: the attributes whose N-SET requirement is "Not allowed" (top level; the
#: items of a settable sequence are replaced as a whole, F.7.2.2.2).
NOT_SETTABLE = (
    SSAS, "PatientName", "PatientID", "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientBirthDate",
    "PatientSex", "ReferencedPatientSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedStationName",
    "PerformedLocation", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "Modality", "StudyID",
)  # fmt: skip

#: Table F.7.2-1: Type 1 at N-CREATE besides the status and the Scheduled Step
#: Attributes Sequence (checked with its Study Instance UID).
CREATE_TYPE1 = (
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "Modality",
)  # fmt: skip

#: Table F.7.2-1 "Final State" 1 (top level) and Note 2: the Performed Series Sequence
#: must hold at least one item when the status becomes COMPLETED or DISCONTINUED.
FINAL_TYPE1 = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
FINAL_SERIES = "PerformedSeriesSequence"
#: Type 1 in every item of the Performed Series Sequence (1/1, Final State 1).
FINAL_SERIES_TYPE1 = ("ProtocolName", "SeriesInstanceUID")
#: Sequences of a series item whose items need both references (1/1).
FINAL_REFERENCES = ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")
FINAL_REFERENCE_TYPE1 = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")


def tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


class Refusal(Exception):
    """A request the SCP answers with a failure status (nothing is stored).

    ``offending`` becomes Offending Element (0000,0901), ``missing`` Attribute
    Identifier List (0000,1005, PS3.7 C.5.13 for 0120), ``error_id`` Error ID (0000,0903).
    """

    def __init__(
        self,
        status: NStatus,
        comment: str,
        offending: Iterable[int] = (),
        *,
        missing: Iterable[int] = (),
        error_id: int | None = None,
        names: Iterable[str] = (),
    ) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = tuple(offending)
        self.missing = tuple(missing)
        self.error_id = error_id
        #: Every attribute the refusal is about (the comment may shorten the list).
        self.names = tuple(names)


def comment(text: str, names: Iterable[str] = ()) -> str:
    """``text`` followed by ``names`` (keywords or paths) that fit an LO Error Comment,
    whole names only, then ``+N more`` (Offending Element lists every tag)."""
    names = list(names)
    for shown in range(len(names), 0, -1):
        rest = len(names) - shown
        joined = text + ", ".join(names[:shown]) + (f" +{rest} more" if rest else "")
        if len(joined) <= COMMENT_MAX:
            return joined
    joined = text + ", ".join(names)
    return joined if len(joined) <= COMMENT_MAX else joined[: COMMENT_MAX - 3] + "..."


# -- the request's data set → the stored shape -------------------------------------------
def charset_of(ds: Dataset, inherited: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Specific Character Set the request's text is in: its own (0008,0005), else
    ``inherited`` (F.7.2.2.1: an N-SET uses the N-CREATE's). An unknown term is refused
    (0106): pydicom would fall back to its default and decode the text wrongly."""
    if CHARSET_TAG not in ds:
        if inherited:
            # Decode the N-SET's text as the N-CREATE's was (pydicom reads this element
            # when it converts the others, lazily, on first access).
            ds.SpecificCharacterSet = list(inherited)
        return inherited
    value = ds[CHARSET_TAG].value
    terms: tuple[str, ...] | list[str] | str
    if isinstance(value, MultiValue | list | tuple):
        terms = [str(v) for v in value]
    else:
        terms = "" if value is None else str(value)
    try:
        return specific_character_set(terms)
    except ValueError:
        raise Refusal(
            NStatus.INVALID_ATTRIBUTE_VALUE,
            "SpecificCharacterSet is not a defined term",
            (CHARSET_TAG,),
        ) from None


def to_attrs(ds: Dataset) -> Attrs:
    """The request's attributes in the stored shape (decoded Unicode).

    Left out: group 0000/0002 elements, (0008,0005) (the values are Unicode now),
    private and unknown tags, and binary values (no attribute of Table F.7.2-1 is
    binary). Text that cannot be decoded in the request's character set is refused with
    0106 (F.7.2.2.3 Note: the SCP "may return the Invalid Attribute Value error code").
    """
    return _convert(ds, "")


def _convert(ds: Dataset, where: str) -> Attrs:
    out: Attrs = {}
    for raw_tag in list(ds.keys()):
        tag = Tag(raw_tag)
        if tag.group in (0x0000, 0x0002) or tag.is_private or tag.element == 0:
            continue
        if tag == CHARSET_TAG:
            continue
        keyword = keyword_for_tag(tag)
        if not keyword:
            continue
        name = f"{where}{keyword}"
        try:
            elem = ds[tag]
        except Exception:  # pydicom raises many types on malformed bytes
            raise _undecodable(name, tag) from None
        value = elem.value
        if elem.VR == "SQ":
            out[keyword] = [
                _convert(item, f"{name}[{n}].") for n, item in enumerate(value or [], start=1)
            ]
            continue
        if isinstance(value, bytes | bytearray):
            continue
        if isinstance(value, MultiValue | list | tuple):
            texts = [_text(v) for v in value]
            out[keyword] = texts
        else:
            texts = [_text(value)]
            out[keyword] = texts[0]
        if any("\ufffd" in t for t in texts):
            # pydicom replaced bytes it could not decode in the character set.
            raise _undecodable(name, tag)
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _undecodable(name: str, tag: int) -> Refusal:
    return Refusal(
        NStatus.INVALID_ATTRIBUTE_VALUE,
        comment("Cannot be decoded in its character set: ", [name]),
        (tag,),
    )


# -- checks ---------------------------------------------------------------------------------
def valid_uid(uid: str) -> bool:
    """PS3.5 9.1: digits and dots, no empty or zero-led component, at most 64 characters."""
    return bool(uid) and UID(uid).is_valid


def filled(value: Any) -> bool:
    """A Type 1 value: a non-blank string, a multi-value with one, or a sequence item."""
    if isinstance(value, str):
        return value.strip() != ""
    if isinstance(value, list):
        return any(isinstance(v, dict) or filled(v) for v in value)
    return False


def first_text(value: Any) -> str:
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str)), "")
    return value.strip() if isinstance(value, str) else ""


def _status_value(attrs: Attrs) -> str:
    return first_text(attrs.get(STATUS))


@dataclass
class _Lacks:
    """Type 1 attributes absent (0120) or present without a value (0121)."""

    absent: list[tuple[str, int]] = field(default_factory=list)
    empty: list[tuple[str, int]] = field(default_factory=list)

    def check(self, attrs: Attrs, keyword: str, where: str = "") -> None:
        if keyword not in attrs:
            self.absent.append((f"{where}{keyword}", tag_of(keyword)))
        elif not filled(attrs[keyword]):
            self.empty.append((f"{where}{keyword}", tag_of(keyword)))


def check_create(attrs: Attrs) -> None:
    """F.7.2.1.3: only IN PROGRESS may be created (anything else, absent included: 0106
    with (0040,0252)); the Type 1 attributes of Table F.7.2-1 must be there (0120) with a
    value (0121), among them the Scheduled Step Attributes Sequence with a Study Instance
    UID in every item, which links the step to the worklist."""
    if _status_value(attrs) != PpsStatus.IN_PROGRESS:
        raise Refusal(
            NStatus.INVALID_ATTRIBUTE_VALUE,
            f"{STATUS} must be {PpsStatus.IN_PROGRESS}",
            (tag_of(STATUS),),
        )
    lacks = _Lacks()
    for keyword in (SSAS, *CREATE_TYPE1):
        lacks.check(attrs, keyword)
    for n, item in enumerate(_items(attrs.get(SSAS)), start=1):
        lacks.check(item, "StudyInstanceUID", f"{SSAS}[{n}].")
    if lacks.absent:
        names, tags = zip(*lacks.absent, strict=True)
        raise Refusal(
            NStatus.MISSING_ATTRIBUTE, comment("Missing: ", names), tags, missing=tags, names=names
        )
    if lacks.empty:
        names, tags = zip(*lacks.empty, strict=True)
        raise Refusal(
            NStatus.MISSING_ATTRIBUTE_VALUE, comment("No value: ", names), tags, names=names
        )


def check_updatable(stored_status: str) -> None:
    """F.7.2.2.3: only an IN PROGRESS instance may be changed (0110, Error ID A710)."""
    if stored_status != PpsStatus.IN_PROGRESS:
        raise Refusal(NStatus.PROCESSING_FAILURE, MPPS_FINAL_COMMENT, error_id=MPPS_FINAL_ERROR_ID)


def check_set(stored: Attrs, changes: Attrs) -> tuple[PpsStatus, Attrs]:
    """The status after an N-SET of ``changes`` on an IN PROGRESS instance, and its
    attributes: Table F.7.2-1 "Not allowed" attributes are refused (0106, all of them
    named), a status outside the enumerated values too (0106), and a final status needs
    the Final State Type 1 attributes, sent now or before (0110)."""
    fixed = [k for k in NOT_SETTABLE if k in changes]
    if fixed:
        raise Refusal(
            NStatus.INVALID_ATTRIBUTE_VALUE,
            comment("Not settable by N-SET: ", fixed),
            [tag_of(k) for k in fixed],
            names=fixed,
        )
    status = PpsStatus.IN_PROGRESS
    if STATUS in changes:
        value = _status_value(changes)
        if value not in set(PpsStatus):
            raise Refusal(
                NStatus.INVALID_ATTRIBUTE_VALUE,
                f"{STATUS} is not an enumerated value",
                (tag_of(STATUS),),
            )
        status = PpsStatus(value)
    # F.7.2.2.2: a sequence in an N-SET carries all its items, so a top-level replace is
    # the whole update.
    merged = {**stored, **changes}
    if status.is_final:
        lacking = list(final_state_lacks(merged))
        if lacking:
            names, tags = zip(*lacking, strict=True)
            raise Refusal(
                NStatus.PROCESSING_FAILURE, comment(f"{status} needs: ", names), tags, names=names
            )
    return status, merged


def final_state_lacks(attrs: Attrs) -> Iterator[tuple[str, int]]:
    """The Final State Type 1 attributes (Table F.7.2-1, F.7.2.2.2) ``attrs`` lacks or
    leaves empty, as (path, tag). Type 2 ones (Performing Physician's Name, ...) are
    not checked."""
    for keyword in FINAL_TYPE1:
        if not filled(attrs.get(keyword)):
            yield keyword, tag_of(keyword)
    series = list(_items(attrs.get(FINAL_SERIES)))
    if not series:
        yield FINAL_SERIES, tag_of(FINAL_SERIES)
    for n, item in enumerate(series, start=1):
        where = f"{FINAL_SERIES}[{n}]."
        for keyword in FINAL_SERIES_TYPE1:
            if not filled(item.get(keyword)):
                yield f"{where}{keyword}", tag_of(keyword)
        for sequence in FINAL_REFERENCES:
            for m, ref in enumerate(_items(item.get(sequence)), start=1):
                for keyword in FINAL_REFERENCE_TYPE1:
                    if not filled(ref.get(keyword)):
                        yield f"{where}{sequence}[{m}].{keyword}", tag_of(keyword)


def _items(value: Any) -> Iterator[Attrs]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


# -- what the workers get ---------------------------------------------------------------
REF_KEYS = ("StudyInstanceUID", "RequestedProcedureID", "ScheduledProcedureStepID",
            "AccessionNumber")  # fmt: skip


def refs(attrs: Attrs) -> list[dict[str, str]]:
    """The Scheduled Step Attributes Sequence items as the workers link them: Study
    Instance UID + Requested Procedure ID + SPS ID, Accession Number as a fallback
    ("" when absent)."""
    return [{k: first_text(item.get(k)) for k in REF_KEYS} for item in _items(attrs.get(SSAS))]


def reason_code(attrs: Attrs) -> str:
    """Code Value of the first Discontinuation Reason item (e.g. 110514), else ""."""
    first = next(_items(attrs.get(DISCONTINUATION_REASON)), {})
    return first_text(first.get("CodeValue"))
