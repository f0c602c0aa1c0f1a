"""DICOM worklist files → validated worklist item content (``worklist import``; no Redis).

What is read (:func:`discover`), the way the servers sites replace serve it:

* DCMTK ``wlmscpfs``: ``<dir>/<AE title>/*.wl``, each AE folder with the ``lockfile``
  wlmscpfs read-locks during a query (it cannot serve a folder without one). The AE
  folder's name becomes the items' worklist label (``WorklistItem.worklist``: the called
  AE title that serves them when ``scp.per_called_ae_worklists`` is on).
* Orthanc's worklist folder: flat ``*.wl`` (and ``*.dcm``) files, no label unless
  ``--worklist`` gives one.
* single files of any name (``.dcm`` exports with Modality Worklist attributes).

A PATH folder's own files are read; one level of subfolders is read only where the
subfolder has a ``lockfile`` (a wlmscpfs AE folder). Other subfolders and deeper levels
are not read and are named in the report: neither server serves them, and an archive
folder imported by mistake would put finished exams back on a modality.

Each file becomes one item per item of its Scheduled Procedure Step Sequence (wlmscpfs
serves only files with exactly one; a file with several becomes several items, each
with the file's other attributes), through the checks a mapped HL7 order passes
(:class:`Rules`): the Type 1 attributes of PS3.4 Table K.6-1 that the mapping requires,
its one-of pairs and its modality table, then every value against its VR (PS3.5 Table
6.2-1: length, characters, value multiplicity, valid DA/TM/UI), decoded with the file's
Specific Character Set. A file that fails any check is rejected as a whole, with a reason
naming the attribute and the rule, never its value. Type 2 attributes of Table K.6-1
the file lacks are stored present and empty, as wlmscpfs serves them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

from bridge.core.codes import SpsStatus
from bridge.scp.matching import SEQUENCE_KEYS, SPS_KEYS, TOP_KEYS, KeySpec
from bridge.store.item import SPS
from bridge.worker.mapping.load import VR_MAX
from bridge.worker.mapping.schema import Mapping
from bridge.worker.mapping.transforms import valid_uid

#: File name endings read inside folders (case-insensitive); single files of any name.
SUFFIXES = (".wl", ".dcm")
#: wlmscpfs's lock file: a folder that has one is a per-AE worklist folder.
LOCKFILE = "lockfile"

#: Type 1 attributes every item needs whatever the mapping says (PS3.4 Table K.6-1, the
#: ones the bridge's mapping fills): top level, and in the SPS item.
TYPE1_TOP = ("PatientID", "PatientName", "StudyInstanceUID", "RequestedProcedureID")
TYPE1_SPS = (
    "Modality",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepID",
)
#: Type 1C pairs of Table K.6-1: at least one of each filled.
ONE_OF = (
    ("ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence"),
    ("RequestedProcedureDescription", "RequestedProcedureCodeSequence"),
)
#: Code Sequence Macro (PS3.3 Table 8.8-1): one of these carries the code.
_CODE_VALUES = ("CodeValue", "LongCodeValue", "URNCodeValue")
_CODE_SEQUENCES = frozenset({"ScheduledProtocolCodeSequence", "RequestedProcedureCodeSequence"})
#: Read for the order key (:func:`_order_numbers`), not kept: the worklist model has no
#: place for them.
_ORDER_SEQUENCES = frozenset({"OrderPlacerIdentifierSequence", "OrderFillerIdentifierSequence"})
#: VRs whose values may hold CR, LF, FF and TAB (PS3.5 6.2); no other control character
#: is allowed in any string VR once the text is decoded.
_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})


class Rejected(Exception):
    """The file cannot be imported; the message names the attribute and the rule (never
    a value: it is shown and may be logged)."""


@dataclass(frozen=True)
class Rules:
    """What an item must satisfy, taken from the mapping an HL7 order goes through, so a
    file passes exactly the checks a mapped order does (with the Table K.6-1 floor)."""

    required_top: tuple[str, ...] = TYPE1_TOP
    required_sps: tuple[str, ...] = TYPE1_SPS
    one_of: tuple[tuple[str, ...], ...] = ONE_OF
    #: Allowed Modality values (the values of the mapping's modality table); None = any.
    modalities: frozenset[str] | None = None
    #: Attributes the mapping says to warn about when empty (``missing: warn``).
    warn_empty_top: tuple[str, ...] = ()
    warn_empty_sps: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> Rules:
        top = [*TYPE1_TOP, *(r.keyword for r in mapping.rules if r.required)]
        sps = [*TYPE1_SPS, *(r.keyword for r in mapping.sps_rules if r.required)]
        one_of = [*ONE_OF, *(tuple(g) for g in mapping.one_of)]
        modalities: frozenset[str] | None = None
        rule = next((r for r in mapping.sps_rules if r.keyword == "Modality"), None)
        if rule is not None and rule.table and rule.on_missing == "reject":
            modalities = frozenset(v for v in mapping.tables[rule.table].values() if v)
        return cls(
            required_top=tuple(dict.fromkeys(top)),
            required_sps=tuple(dict.fromkeys(sps)),
            one_of=tuple(dict.fromkeys(one_of)),
            modalities=modalities,
            warn_empty_top=tuple(r.keyword for r in mapping.rules if r.missing == "warn"),
            warn_empty_sps=tuple(r.keyword for r in mapping.sps_rules if r.missing == "warn"),
        )


@dataclass(frozen=True)
class Source:
    """One file to read, with the worklist label its items get."""

    path: Path
    worklist: str = ""
    #: Why the label cannot be used (a folder name that is no AE title); "" = fine.
    label_error: str = ""


@dataclass
class Discovery:
    sources: list[Source] = field(default_factory=list)
    #: Folders and files found but not read, and why (for the report).
    not_read: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OrderNumbers:
    """Placer / filler order numbers of the Imaging Service Request, (0040,2016) and
    (0040,2017), with the namespace (Local Namespace Entity ID) of the Order Placer /
    Filler Identifier Sequence, (0040,0026) and (0040,0027): HL7 EI.1 and EI.2."""

    placer: str = ""
    placer_ns: str = ""
    filler: str = ""
    filler_ns: str = ""


@dataclass
class FileContent:
    """The items of one file (one attrs dict per SPS) and notes for the report."""

    items: list[dict[str, Any]]
    order: OrderNumbers
    notes: list[str] = field(default_factory=list)


# -- what to read ---------------------------------------------------------------------------


def label_problem(label: str) -> str:
    """Why ``label`` cannot be a worklist label (a called AE title, VR AE), or ""."""
    if len(label) > VR_MAX["AE"]:
        return f"longer than {VR_MAX['AE']} characters (VR AE)"
    if "\\" in label or _CONTROL.search(label) or not label.strip():
        return "not an AE title (VR AE: no backslash or control characters, not blank)"
    return ""


def _is_worklist_file(entry: os.DirEntry[str]) -> bool:
    return entry.is_file() and entry.name.lower().endswith(SUFFIXES)


def discover(paths: Sequence[str | Path], worklist: str | None = None) -> Discovery:
    """The files ``worklist import PATH...`` reads, in a stable order (see the module
    docstring). ``worklist`` labels the files that are not in a per-AE folder; a PATH
    that does not exist is kept as a source (its read fails and is reported)."""
    found = Discovery()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.sources.append(_source(path, worklist or ""))
            continue
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        own = worklist
        if own is None:
            # A wlmscpfs AE folder given directly: its name is its label.
            own = path.resolve().name if any(e.name == LOCKFILE for e in entries) else ""
        for entry in entries:
            if _is_worklist_file(entry):
                found.sources.append(_source(Path(entry.path), own))
            elif entry.is_dir():
                _subfolder(found, Path(entry.path))
    return found


def _subfolder(found: Discovery, folder: Path) -> None:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    if not any(e.name == LOCKFILE and e.is_file() for e in entries):
        found.not_read.append(f"{folder}: no {LOCKFILE}, not a wlmscpfs AE folder")
        return
    for entry in entries:
        if _is_worklist_file(entry):
            found.sources.append(_source(Path(entry.path), folder.name))
        elif entry.is_dir():
            found.not_read.append(f"{entry.path}: below an AE folder (wlmscpfs does not read it)")


def _source(path: Path, label: str) -> Source:
    problem = label_problem(label) if label else ""
    return Source(path, label, f"worklist label {problem}" if problem else "")


# -- reading and decoding ---------------------------------------------------------------------


@contextlib.contextmanager
def _pydicom_reading(mode: int) -> Iterator[None]:
    """pydicom's reading validation set to ``mode`` (RAISE: undecodable bytes and an
    unknown character set raise instead of being replaced or guessed), and its warnings
    silenced: they quote values (patient data) and go to its logger too. Process-wide:
    the import runs in the CLI's one thread."""
    logger = logging.getLogger("pydicom")
    before, disabled = pydicom_config.settings.reading_validation_mode, logger.disabled
    pydicom_config.settings.reading_validation_mode = mode
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = before
        logger.disabled = disabled


def _element(ds: Dataset, tag: Any, where: str) -> DataElement:
    """The decoded element; raises :class:`Rejected` when its bytes are not text in the
    file's Specific Character Set. A value that fails pydicom's VR check is read again
    unchecked: our check (:func:`value_problem`) names the rule it breaks."""
    try:
        with _pydicom_reading(pydicom_config.RAISE):
            return ds[tag]
    except UnicodeError:
        raise Rejected(f"{where}: bytes not valid in the file's Specific Character Set") from None
    except LookupError:
        raise Rejected("SpecificCharacterSet: not a defined term pydicom can decode") from None
    except ValueError:
        pass
    except Exception as exc:  # pydicom raises many types on malformed bytes
        raise Rejected(f"{where}: cannot be decoded ({type(exc).__name__})") from None
    try:
        with _pydicom_reading(pydicom_config.IGNORE):
            return ds[tag]
    except Exception as exc:
        raise Rejected(f"{where}: cannot be decoded ({type(exc).__name__})") from None


def _check_charset(ds: Dataset) -> None:
    """Every term of (0008,0005) must be one pydicom decodes: it resolves the file's
    character set once, at read time, and would silently fall back to its default for
    an unknown term (text decoded in the wrong repertoire)."""
    if 0x00080005 not in ds:
        return
    terms = _element(ds, 0x00080005, "SpecificCharacterSet").value
    try:
        with _pydicom_reading(pydicom_config.RAISE):
            convert_encodings(terms or "")
    except LookupError:
        raise Rejected("SpecificCharacterSet: not a defined term pydicom can decode") from None


def _scalar(value: Any, vr: str, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        raise Rejected(f"{where}: binary value (VR {vr}) cannot be stored")
    return str(value)


def _convert(
    ds: Dataset, table: dict[str, KeySpec] | None, where: str, left_out: set[str]
) -> dict[str, Any]:
    """``ds`` in the item shape (:mod:`bridge.store.item`), keeping the attributes of
    ``table`` (the Modality Worklist model, :mod:`bridge.scp.matching`; None = all
    public ones). Others are left out (named in ``left_out``): the SCP could never
    return them."""
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.is_private or tag.group == 0x0002 or tag == 0x00080005:
            continue  # file meta, private data, and the charset (decoded with, not stored)
        keyword = keyword_for_tag(tag)
        if keyword in _ORDER_SEQUENCES and not where:
            continue
        if not keyword or (table is not None and keyword not in table):
            left_out.add(keyword or f"({tag.group:04X},{tag.element:04X})")
            continue
        elem = _element(ds, tag, f"{where}{keyword}")
        if elem.VR == "SQ":
            items = elem.value or []
            sub = SEQUENCE_KEYS.get(keyword)
            out[keyword] = [
                _convert(item, sub, f"{where}{keyword}[{n}].", left_out)
                for n, item in enumerate(items, start=1)
            ]
        elif isinstance(elem.value, MultiValue | list | tuple):
            out[keyword] = [_scalar(v, elem.VR, f"{where}{keyword}") for v in elem.value]
        else:
            out[keyword] = _scalar(elem.value, elem.VR, f"{where}{keyword}")
    return out


def _identifier(ds: Dataset, keyword: str, where: str) -> str:
    if keyword not in ds:
        return ""
    value = _element(ds, keyword, where).value
    return "" if value is None else str(value).strip()


def _order_numbers(ds: Dataset) -> OrderNumbers:
    """The order numbers and their namespaces, checked to be usable in an order name
    (``P|<number>^<namespace>``, the HL7 EI)."""
    parts: dict[str, str] = {}
    for role, number_kw, seq_kw in (
        ("placer", "PlacerOrderNumberImagingServiceRequest", "OrderPlacerIdentifierSequence"),
        ("filler", "FillerOrderNumberImagingServiceRequest", "OrderFillerIdentifierSequence"),
    ):
        number = _identifier(ds, number_kw, number_kw)
        namespace = ""
        if number and seq_kw in ds:
            seq = _element(ds, seq_kw, seq_kw).value or []
            if seq:
                where = f"{seq_kw}[1].LocalNamespaceEntityID"
                namespace = _identifier(seq[0], "LocalNamespaceEntityID", where)
        for kw, text in ((number_kw, number), (f"{seq_kw}[1].LocalNamespaceEntityID", namespace)):
            if any(ch in text for ch in "|^\\") or _CONTROL.search(text):
                raise Rejected(
                    f"{kw}: contains '|', '^', '\\' or a control character, which an HL7 "
                    "order number (EI) cannot hold"
                )
        parts[role], parts[f"{role}_ns"] = number, namespace
    return OrderNumbers(**parts)


def read_file(path: Path, rules: Rules) -> FileContent:
    """Read, decode, convert and validate one worklist file: one item content (keyword →
    value) per SPS. Raises :class:`Rejected` with the first problem found."""
    try:
        with _pydicom_reading(pydicom_config.IGNORE):
            ds = pydicom.dcmread(path, force=True)
    except OSError as exc:
        raise Rejected(f"cannot be read ({type(exc).__name__})") from None
    except Exception as exc:  # pydicom raises many types on a file that is not DICOM
        raise Rejected(f"not readable as DICOM ({type(exc).__name__})") from None
    left_out: set[str] = set()
    try:
        tags = list(ds.keys())  # tags only: iterating a Dataset would decode every value
        known = [t for t in tags if keyword_for_tag(t) in TOP_KEYS]
    except Exception as exc:
        raise Rejected(f"not readable as DICOM ({type(exc).__name__})") from None
    if not known:
        raise Rejected("no Modality Worklist attributes (not a worklist file)")
    _check_charset(ds)
    top = _convert(ds, TOP_KEYS, "", left_out)
    order = _order_numbers(ds)
    steps = top.pop(SPS, None) or []
    if not steps:
        raise Rejected(f"{SPS}: missing or empty (Type 1, PS3.4 Table K.6-1)")
    items = []
    for n, step in enumerate(steps, start=1):
        attrs = copy.deepcopy(top)
        attrs[SPS] = [step]
        check_item(attrs, rules, f"{SPS}[{n}].")
        items.append(attrs)
    notes = []
    if len(steps) > 1:
        notes.append(f"{len(steps)} SPS items: one worklist item each")
    empty = [kw for kw in rules.warn_empty_top if not _filled(items[0].get(kw))] + [
        kw for kw in rules.warn_empty_sps if any(not _filled(i[SPS][0].get(kw)) for i in items)
    ]
    notes.extend(f"{kw} empty (the mapping warns about it)" for kw in empty)
    if left_out:
        notes.append(f"{len(left_out)} attribute(s) outside the worklist model left out")
    return FileContent(items, order, notes)


# -- validation -------------------------------------------------------------------------------


def _filled(value: Any) -> bool:
    return value not in (None, "", []) and not (
        isinstance(value, list) and all(v in ("", {}) for v in value)
    )


def check_item(attrs: dict[str, Any], rules: Rules, sps_where: str) -> None:
    """Validate one item's content in place (Type 2 gaps filled, SPS status and start
    time normalised); raises :class:`Rejected`."""
    sps = attrs[SPS][0]
    for kw in rules.required_top:
        if not _filled(attrs.get(kw)):
            raise Rejected(f"{kw}: missing or empty (Type 1, PS3.4 Table K.6-1)")
    for kw in rules.required_sps:
        if not _filled(sps.get(kw)):
            raise Rejected(f"{sps_where}{kw}: missing or empty (Type 1, PS3.4 Table K.6-1)")
    for group in rules.one_of:
        if not any(_filled(attrs.get(kw)) or _filled(sps.get(kw)) for kw in group):
            raise Rejected(f"{' / '.join(group)}: none present (Type 1C, one of them is required)")
    _check_values(attrs, TOP_KEYS, "")
    _check_values(sps, SPS_KEYS, sps_where)
    if not valid_uid(str(attrs["StudyInstanceUID"])):
        raise Rejected("StudyInstanceUID: not a valid UID (PS3.5 9.1)")
    modality = sps["Modality"]
    if rules.modalities is not None and modality not in rules.modalities:
        raise Rejected(f"{sps_where}Modality: not a value of the mapping's modality table")
    status = str(sps.get("ScheduledProcedureStepStatus") or "")
    if status and status not in set(SpsStatus):
        raise Rejected(
            f"{sps_where}ScheduledProcedureStepStatus: not a defined term (PS3.3 C.4.10)"
        )
    sps["ScheduledProcedureStepStatus"] = status or SpsStatus.SCHEDULED.value
    # The store's start index and the mapped items use HHMMSS: 10 and 1015 are 10:00:00
    # and 10:15:00 (PS3.5 6.2 TM: reduced precision).
    start = _TM.match(str(sps["ScheduledProcedureStepStartTime"]))
    assert start is not None  # checked by _check_values
    hh, mm, ss, frac = start.groups()
    sps["ScheduledProcedureStepStartTime"] = hh + (mm or "00") + (ss or "00") + (frac or "")
    _fill_type2(attrs, TOP_KEYS)
    _fill_type2(sps, SPS_KEYS)


def _fill_type2(target: dict[str, Any], table: dict[str, KeySpec]) -> None:
    """Type 2 attributes of Table K.6-1 the file lacks: present and empty."""
    for spec in table.values():
        if spec.return_type == "2" and spec.keyword not in target:
            target[spec.keyword] = [] if spec.vr == "SQ" else ""


def _check_values(attrs: dict[str, Any], table: dict[str, KeySpec] | None, where: str) -> None:
    for keyword, value in attrs.items():
        if keyword == SPS:
            continue
        spec = table.get(keyword) if table is not None else None
        vr = spec.vr if spec is not None else str(dictionary_VR(keyword))
        if vr == "SQ":
            sub = SEQUENCE_KEYS.get(keyword)
            for n, item in enumerate(value if isinstance(value, list) else [], start=1):
                if isinstance(item, dict):
                    _check_values(item, sub, f"{where}{keyword}[{n}].")
                    if keyword in _CODE_SEQUENCES:
                        _check_code_item(item, f"{where}{keyword}[{n}]")
            continue
        values = value if isinstance(value, list) else [value]
        if len(values) > 1 and str(dictionary_VM(keyword)) == "1":
            raise Rejected(f"{where}{keyword}: several values where one is allowed (VM 1)")
        for v in values:
            if isinstance(v, str) and v:
                problem = value_problem(v, vr)
                if problem:
                    raise Rejected(f"{where}{keyword}: {problem}")


def _check_code_item(item: dict[str, Any], where: str) -> None:
    if not any(_filled(item.get(k)) for k in _CODE_VALUES):
        raise Rejected(f"{where}: no CodeValue (Code Sequence Macro, PS3.3 Table 8.8-1)")
    if _filled(item.get("CodeValue")) and not _filled(item.get("CodingSchemeDesignator")):
        raise Rejected(f"{where}: CodeValue without CodingSchemeDesignator (PS3.3 Table 8.8-1)")


def value_problem(value: str, vr: str) -> str:
    """Why ``value`` is not valid for ``vr`` (PS3.5 Table 6.2-1), or "". Never quotes
    the value."""
    vr = vr.split(" or ")[0]
    if vr in _NUMERIC_VRS:
        return "" if _number(value) else f"not a number (VR {vr})"
    pattern = _TEXT_CONTROL if vr in _TEXT_VRS else _CONTROL
    if pattern.search(value):
        return f"control characters are not allowed in VR {vr}"
    limit = VR_MAX.get(vr, 0)
    groups = value.split("=") if vr == "PN" else [value]
    if limit and any(len(g) > limit for g in groups):
        per = " per component group" if vr == "PN" else ""
        return f"longer than {limit} characters{per} (VR {vr})"
    if vr == "DA" and not _valid_date(value):
        return "not a valid date (VR DA, YYYYMMDD)"
    if vr == "TM" and not _valid_time(value):
        return "not a valid time (VR TM, HHMMSS[.FFFFFF])"
    if vr == "UI" and not valid_uid(value):
        return "not a valid UID (PS3.5 9.1)"
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except ValueError:
        return f"characters or format not allowed in VR {vr} (PS3.5 Table 6.2-1)"
    return ""


def _number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _valid_date(value: str) -> bool:
    if not _DA.match(value):
        return False
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    m = _TM.match(value)
    if not m:
        return False
    hh, mm, ss, _frac = m.groups()
    return int(hh) <= 23 and (mm is None or int(mm) <= 59) and (ss is None or int(ss) <= 60)
