"""Worklist items for the SCP tests: complete Type 1 content, easy to vary."""

from __future__ import annotations

from typing import Any

from bridge.store.item import SPS, WorklistItem


def make_item(
    n: int,
    *,
    name: str = "DOE^JANE",
    pid: str | None = None,
    date: str = "20260705",
    time: str = "101500",
    station: str | list[str] = "CT1",
    modality: str = "CT",
    status: str = "SCHEDULED",
    worklist: str = "",
    hidden: bool = False,
    extra: dict[str, Any] | None = None,
    sps_extra: dict[str, Any] | None = None,
) -> WorklistItem:
    """Item ``it<n>`` with every Type 1 key of PS3.4 Table K.6-1 filled and Type 2 empty."""
    sps: dict[str, Any] = {
        "ScheduledStationAETitle": station,
        "ScheduledProcedureStepStartDate": date,
        "ScheduledProcedureStepStartTime": time,
        "Modality": modality,
        "ScheduledPerformingPhysicianName": "",
        "ScheduledProcedureStepDescription": f"Protocol {n}",
        "ScheduledProcedureStepID": f"SPS{n}",
        "ScheduledStationName": "",
        "ScheduledProcedureStepLocation": "",
        "ScheduledProcedureStepStatus": status,
        "ScheduledProtocolCodeSequence": [
            {"CodeValue": f"P{n}", "CodingSchemeDesignator": "LOCAL", "CodeMeaning": "Proto"}
        ],
    }
    sps.update(sps_extra or {})
    attrs: dict[str, Any] = {
        "PatientName": name,
        "PatientID": pid if pid is not None else f"PID{n}",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "AccessionNumber": f"ACC{n}",
        "RequestedProcedureID": f"RP{n}",
        "RequestedProcedureDescription": "CT Chest",
        "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1.{n}",
        "ReferringPhysicianName": "WHO^DOCTOR",
        "AdmissionID": "",
        "ReferencedStudySequence": [],
        "ReferencedPatientSequence": [],
        SPS: [sps],
    }
    attrs.update(extra or {})
    return WorklistItem(
        item_id=f"it{n}", attrs=attrs, order_key=f"ord{n}", worklist=worklist, hidden=hidden
    )
