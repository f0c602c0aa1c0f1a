"""Helpers for the MPPS tests: a real pynetdicom MPPS SCU that keeps every response's
whole command set (pynetdicom's own status Dataset drops fields its N-CREATE/N-SET
primitives do not know, e.g. Offending Element), and complete N-CREATE / final N-SET
data sets as a modality sends them (PS3.4 Table F.7.2-1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

STUDY = "1.2.826.0.1.3680043.2.1125.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Answer:
    """One N-CREATE-RSP / N-SET-RSP: its command set as received."""

    command: Dataset

    @property
    def status(self) -> int:
        return int(self.command.Status)

    @property
    def comment(self) -> str:
        return str(self.command.get("ErrorComment", ""))

    @property
    def error_id(self) -> int | None:
        value = self.command.get("ErrorID")
        return None if value is None else int(value)

    def tags(self, keyword: str) -> list[int]:
        """Offending Element / Attribute Identifier List as a list of tags ([] if absent)."""
        if keyword not in self.command:
            return []
        value = self.command[keyword].value
        return [int(t) for t in (value if isinstance(value, MultiValue | list) else [value])]


class MppsScu:
    """One association of pynetdicom's MPPS SCU (``send_n_create`` / ``send_n_set``)."""

    def __init__(self, port: int, calling: str = "CT1") -> None:
        ae = AE(ae_title=calling)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        self._commands: list[Dataset] = []
        self.assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="MWL_BRIDGE",
            evt_handlers=[(evt.EVT_DIMSE_RECV, self._received)],
        )
        assert self.assoc.is_established, "association failed"

    def _received(self, event: Any) -> None:
        self._commands.append(event.message.command_set)

    def create(self, ds: Dataset, uid: str | None) -> Answer:
        status, _ = self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        assert status, "no N-CREATE-RSP"
        return Answer(self._commands[-1])

    def set(self, ds: Dataset, uid: str) -> Answer:
        status, _ = self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        assert status, "no N-SET-RSP"
        return Answer(self._commands[-1])

    def close(self) -> None:
        self.assoc.release()

    def __enter__(self) -> MppsScu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def step(rpid: str = "RP1", spsid: str = "SPS1", acc: str = "ACC1", study: str = STUDY) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study
    item.ReferencedStudySequence = []
    item.AccessionNumber = acc
    item.RequestedProcedureID = rpid
    item.RequestedProcedureDescription = "CT HEAD"
    item.ScheduledProcedureStepID = spsid
    item.ScheduledProcedureStepDescription = "CT HEAD W/O"
    item.ScheduledProtocolCodeSequence = []
    return item


def create_ds(steps: list[Dataset] | None = None, **attrs: Any) -> Dataset:
    """A complete N-CREATE Attribute List (Table F.7.2-1), Latin-1 patient name."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ScheduledStepAttributesSequence = steps if steps is not None else [step()]
    ds.PatientName = "MÜLLER^HANS"
    ds.PatientID = "12345"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedStationName = "CT ROOM 1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20260705"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "S1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def series(images: int = 2, **attrs: Any) -> Dataset:
    item = Dataset()
    item.PerformingPhysicianName = ""
    item.ProtocolName = "HEAD ROUTINE"
    item.OperatorsName = ""
    item.SeriesInstanceUID = generate_uid()
    item.SeriesDescription = "AXIAL"
    item.RetrieveAETitle = ""
    refs = []
    for _ in range(images):
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_IMAGE
        ref.ReferencedSOPInstanceUID = generate_uid()
        refs.append(ref)
    item.ReferencedImageSequence = refs
    item.ReferencedNonImageCompositeSOPInstanceSequence = []
    for keyword, value in attrs.items():
        if value is None:
            delattr(item, keyword)
        else:
            setattr(item, keyword, value)
    return item


def final_ds(status: str = "COMPLETED", **attrs: Any) -> Dataset:
    """An N-SET Modification List that ends the step with its Final State attributes."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20260705"
    ds.PerformedProcedureStepEndTime = "103000"
    ds.PerformedSeriesSequence = [series()]
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def reason(code: str = "110514") -> Dataset:
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "Incorrect worklist entry selected"
    return item
