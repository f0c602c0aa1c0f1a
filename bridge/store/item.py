"""The one internal shape of a worklist item: one Scheduled Procedure Step.

An item is what the workers write and the SCP reads. Its DICOM content is a plain,
JSON-friendly dict keyed by DICOM keyword (pydicom's data dictionary names), holding
*decoded Unicode*:

* a single value is a ``str`` (``""`` = present but empty, the Type 2 "unknown");
* a multi-valued attribute is a ``list[str]`` (e.g. two Scheduled Station AE Titles);
* a sequence is a ``list[dict]`` of the same shape;
* PN values are DICOM-ordered ``family^given^middle^prefix^suffix`` strings;
  DA is ``YYYYMMDD``, TM ``HHMMSS`` (local time, no offset).

The Scheduled Procedure Step attributes live in the one item of
``ScheduledProcedureStepSequence`` (PS3.4 Table K.6-1: exactly one item per response).
Character sets are a property of an encoded response, not of the item: the SCP chooses
one per query.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from bridge.core.codes import SpsStatus

SPS = "ScheduledProcedureStepSequence"

AttrValue = str | list[str] | list[dict[str, Any]]

_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})


def to_dataset(attrs: dict[str, Any]) -> Dataset:
    """A pydicom Dataset from an item's keyword → value dict, for dumps and tools.

    Sequences become nested Datasets, multi-valued strings stay lists, integer VRs
    (e.g. PregnancyStatus, US) become ints. Keywords pydicom does not know are skipped:
    they are bridge bookkeeping, not DICOM. (C-FIND responses are built by
    ``bridge.scp.response``, which also chooses the character set and checks every VR.)
    """
    ds = Dataset()
    for keyword, value in attrs.items():
        if tag_for_keyword(keyword) is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            setattr(ds, keyword, DicomSequence([to_dataset(v) for v in value]))
        elif isinstance(value, list) and not value and dictionary_VR(keyword) == "SQ":
            setattr(ds, keyword, DicomSequence())
        elif dictionary_VR(keyword) in _INT_VRS and isinstance(value, str):
            setattr(ds, keyword, int(value) if value.isdigit() else None)
        elif isinstance(value, list):
            setattr(ds, keyword, [str(v) for v in value])
        else:
            setattr(ds, keyword, "" if value is None else value)
    return ds


def as_values(value: Any) -> list[str]:
    """The non-empty string values of an attribute (for indexes and matching)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str) and v != ""]


@dataclass
class WorklistItem:
    """One worklist entry (one SPS) with the bookkeeping the lifecycle needs."""

    item_id: str
    attrs: dict[str, Any]
    #: Identity of the order the item belongs to (sender + placer/filler numbers).
    order_key: str = ""
    #: Logical worklist label (per-called-AE worklists); "" is the default worklist.
    worklist: str = ""
    #: Held by an HD order control; hidden from queries until RL.
    hidden: bool = False
    #: Ingest sequence number of the last message applied to this item.
    seq: int = 0
    #: Epoch seconds of the last change.
    updated_at: float = 0.0
    #: Bookkeeping that is not DICOM: ``obr`` (the OBR position that last wrote the item),
    #: ``created_at`` and ``idle`` (see the properties). Kept here rather than as new
    #: fields so that a store stays readable by the release before (``from_json`` of that
    #: release rejects unknown fields): a roll-back must not break the SCP.
    extra: dict[str, Any] = field(default_factory=dict)

    # -- bookkeeping ------------------------------------------------------------------
    @property
    def created_at(self) -> float:
        """Epoch seconds at which the item was created; items stored before this was
        recorded answer their last change (``updated_at``), never an earlier time."""
        return float(self.extra.get("created_at") or self.updated_at)

    @property
    def idle(self) -> dict[str, Any] | None:
        """What the workers' idle timeout did to the item, or None: ``{"action": "hide" |
        "discontinue" | "none", "at": epoch, "status": ..., "hidden": ...}`` with the
        status and hidden flag the RIS had left (restored by its next message)."""
        mark = self.extra.get("idle")
        return mark if isinstance(mark, dict) else None

    # -- SPS accessors ----------------------------------------------------------------
    @property
    def sps(self) -> dict[str, Any]:
        items = self.attrs.get(SPS) or [{}]
        first = items[0]
        assert isinstance(first, dict)
        return first

    @property
    def status(self) -> str:
        return str(self.sps.get("ScheduledProcedureStepStatus") or SpsStatus.SCHEDULED)

    @property
    def start_key(self) -> int:
        """SPS start as the number YYYYMMDDHHMMSS (the store's range index score).

        A missing time counts as 000000; a missing date as 0 (sorts first). Type 1 checks
        at ingest guarantee both in practice.
        """
        date = str(self.sps.get("ScheduledProcedureStepStartDate") or "")
        time = str(self.sps.get("ScheduledProcedureStepStartTime") or "")
        digits_time = "".join(ch for ch in time.split(".")[0] if ch.isdigit())
        if len(date) != 8 or not date.isdigit():
            return 0
        return int(date + digits_time.ljust(6, "0")[:6])

    def index_entries(self) -> list[tuple[str, str]]:
        """(index field, value) pairs this item must be findable by."""
        sps = self.sps
        pairs: list[tuple[str, str]] = []
        for fld, value in (
            ("station", sps.get("ScheduledStationAETitle")),
            ("modality", sps.get("Modality")),
            ("spsid", sps.get("ScheduledProcedureStepID")),
            ("pid", self.attrs.get("PatientID")),
            ("acc", self.attrs.get("AccessionNumber")),
            ("rpid", self.attrs.get("RequestedProcedureID")),
            ("suid", self.attrs.get("StudyInstanceUID")),
        ):
            pairs.extend((fld, v) for v in as_values(value))
        pairs.append(("status", self.status))
        pairs.append(("worklist", self.worklist))
        if self.order_key:
            pairs.append(("order", self.order_key))
        if self.idle is not None:
            pairs.append(("idle", str(self.idle.get("action", ""))))
        return pairs

    # -- serialisation -----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorklistItem:
        data = json.loads(text)
        return cls(**data)
