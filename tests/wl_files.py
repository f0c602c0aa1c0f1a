"""DICOM worklist files as the servers sites replace keep them (DCMTK wlmscpfs ``.wl``,
Orthanc's worklist folder, ``.dcm`` exports), written with pydicom like bench/scp_bench.py."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MWL_FIND = "1.2.840.10008.5.1.4.31"


def wl_dataset(n: int, **kw: Any) -> Dataset:
    """Item ``n`` of a worklist folder (:func:`_wl_dataset`); invalid values that a test
    sets on purpose are kept without pydicom's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _wl_dataset(n, **kw)


def _wl_dataset(
    n: int,
    *,
    name: str = "DOE^JANE",
    pid: str | None = None,
    date: str = "20260705",
    time: str = "101500",
    station: str | list[str] = "CT1",
    modality: str = "CT",
    charset: str | None = "ISO_IR 100",
    placer: str | None = None,
    placer_ns: str | None = None,
    filler: str | None = None,
    filler_ns: str | None = None,
    drop: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    sps_extra: dict[str, Any] | None = None,
    steps: int = 1,
) -> Dataset:
    """Item ``n`` of a worklist folder: every Type 1 key of PS3.4 Table K.6-1 and the
    Type 2 keys wlmscpfs's own examples carry. ``drop`` removes attributes (SPS ones by
    their keyword too); ``steps`` > 1 gives the SPS sequence several items."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.PatientID = pid if pid is not None else f"PID{n}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AccessionNumber = f"ACC{n}"
    ds.RequestedProcedureID = f"RP{n}"
    ds.RequestedProcedureDescription = "Imaging procedure"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.77.{n}"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.ReferencedStudySequence = []
    ds.ReferencedPatientSequence = []
    if placer is not None:
        ds.PlacerOrderNumberImagingServiceRequest = placer
        if placer_ns is not None:
            issuer = Dataset()
            issuer.LocalNamespaceEntityID = placer_ns
            ds.OrderPlacerIdentifierSequence = [issuer]
    if filler is not None:
        ds.FillerOrderNumberImagingServiceRequest = filler
        if filler_ns is not None:
            issuer = Dataset()
            issuer.LocalNamespaceEntityID = filler_ns
            ds.OrderFillerIdentifierSequence = [issuer]
    items = []
    for k in range(1, steps + 1):
        sps = Dataset()
        sps.ScheduledStationAETitle = station
        sps.ScheduledProcedureStepStartDate = date
        sps.ScheduledProcedureStepStartTime = time
        sps.Modality = modality
        sps.ScheduledPerformingPhysicianName = ""
        sps.ScheduledProcedureStepDescription = f"Protocol {n}"
        sps.ScheduledProcedureStepID = f"SPS{n}" + (f".{k}" if steps > 1 else "")
        code = Dataset()
        code.CodeValue = f"P{n}"
        code.CodingSchemeDesignator = "LOCAL"
        code.CodeMeaning = "Protocol"
        sps.ScheduledProtocolCodeSequence = [code]
        for kw, value in (sps_extra or {}).items():
            setattr(sps, kw, value)
        for kw in drop:
            if kw in sps:
                delattr(sps, kw)
        items.append(sps)
    ds.ScheduledProcedureStepSequence = items
    for kw, value in (extra or {}).items():
        setattr(ds, kw, value)
    for kw in drop:
        if kw in ds:
            delattr(ds, kw)
    return ds


def write_wl(path: Path, ds: Dataset, *, file_format: bool = True) -> Path:
    """Write ``ds`` to ``path``: with a file meta header (DCMTK's and Orthanc's ``.wl``),
    or as a bare dataset in implicit VR little endian (``file_format=False``: older tools
    write those; both servers read them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Tests write invalid values on purpose; pydicom would warn about each.
        warnings.simplefilter("ignore")
        _save(path, ds, file_format)
    return path


def _save(path: Path, ds: Dataset, file_format: bool) -> None:
    if file_format:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MWL_FIND
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)


def ae_folder(root: Path, ae: str) -> Path:
    """A wlmscpfs per-AE folder ``<root>/<ae>/`` with its lockfile."""
    folder = root / ae
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    return folder
