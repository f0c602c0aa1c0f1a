"""``mwl-bridge find``: a Modality Worklist C-FIND SCU, to test the SCP without a modality.

It asks what a typical modality asks (PS3.4 K.6.1: patient, requested procedure and the
Scheduled Procedure Step attributes, return keys empty = universal) with the given
matching keys, and prints one row per match, or JSON with ``--json``. Exit code 0 when
the SCP ends with Success, 1 when the association fails or the SCP returns a failure
status (e.g. A700 out of resources, C000 unable to process).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydicom.dataset import Dataset

from bridge.core.settings import Settings
from bridge.ops.admin import table

EXIT_FAILED = 1

_SPS_KEYS = (
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepStatus",
)
_TOP_KEYS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "StudyInstanceUID",
)


def build_query(
    date: str | None = None,
    modality: str | None = None,
    station: str | None = None,
    patient_id: str | None = None,
) -> Dataset:
    """The C-FIND identifier: matching keys from the arguments, the rest universal."""
    ds = Dataset()
    for key in _TOP_KEYS:
        setattr(ds, key, "")
    ds.SpecificCharacterSet = "ISO_IR 192"  # we can read any answer; ask for Unicode
    ds.PatientID = patient_id or ""
    sps = Dataset()
    for key in _SPS_KEYS:
        setattr(sps, key, "")
    sps.ScheduledStationAETitle = station or ""
    sps.ScheduledProcedureStepStartDate = date or ""
    sps.Modality = modality or ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def flatten(identifier: Dataset) -> dict[str, str]:
    """A match as keyword → text, the SPS attributes lifted to the top level."""
    row = {k: _text(identifier.get(k)) for k in _TOP_KEYS if k != "SpecificCharacterSet"}
    seq = identifier.get("ScheduledProcedureStepSequence")
    sps = seq[0] if seq else Dataset()
    row.update({k: _text(sps.get(k)) for k in _SPS_KEYS})
    return row


def find(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    query: Dataset,
    timeout_s: float = 30.0,
) -> tuple[int, list[Dataset]]:
    """Run one C-FIND; returns (final status, matches). Status -1 = no association."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return -1, []
    matches: list[Dataset] = []
    final = -1
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if not status:  # no response within the DIMSE timeout / aborted
                final = -1
                break
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                matches.append(identifier)
            else:
                final = code
    finally:
        assoc.release()
    return final, matches


def command(settings: Settings, args: argparse.Namespace) -> int:
    port = args.port or settings.scp.port
    query = build_query(args.date, args.modality, args.station, args.patient_id)
    status, matches = find(args.host, port, settings.scp.ae_title, args.calling_ae, query)
    rows = [flatten(m) for m in matches]
    if status == -1:
        print(
            f"mwl-bridge: no C-FIND answer from {settings.scp.ae_title}@{args.host}:{port} "
            "(association rejected, aborted or timed out)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"status": f"0x{status:04X}", "matches": rows}, ensure_ascii=False))
    else:
        cols = {
            "AccessionNumber": "accession",
            "PatientID": "patient_id",
            "PatientName": "patient_name",
            "ScheduledProcedureStepStartDate": "date",
            "ScheduledProcedureStepStartTime": "time",
            "Modality": "modality",
            "ScheduledStationAETitle": "station",
            "ScheduledProcedureStepID": "sps_id",
            "ScheduledProcedureStepStatus": "status",
            "ScheduledProcedureStepDescription": "description",
        }
        shown = [{cols[k]: r.get(k, "") for k in cols} for r in rows]
        print(table(shown, list(cols.values())))
        print(f"{len(rows)} match(es), final status 0x{status:04X}")
    if status != 0x0000:
        print(f"mwl-bridge: C-FIND ended with status 0x{status:04X}", file=sys.stderr)
        return EXIT_FAILED
    return 0
