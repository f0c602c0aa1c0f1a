"""Helpers for SCP tests: a pynetdicom SCU that collects every C-FIND response."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from bridge.scp.server import MwlScp

#: The ``start_scp`` fixture (conftest.py): starts an in-process SCP on a free port.
StartScp = Callable[..., MwlScp]


@dataclass
class FindResult:
    statuses: list[int]
    identifiers: list[Dataset]
    final: Dataset

    @property
    def final_status(self) -> int:
        return int(self.final.Status)

    @property
    def pending(self) -> list[int]:
        return [s for s in self.statuses if s in (0xFF00, 0xFF01)]


def scu(calling: str = "MODALITY1", explicit_only: bool = False) -> AE:
    ae = AE(ae_title=calling)
    syntaxes = [ExplicitVRLittleEndian] if explicit_only else [ImplicitVRLittleEndian]
    ae.add_requested_context(ModalityWorklistInformationFind, syntaxes)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae


def find(
    port: int,
    query: Dataset,
    calling: str = "MODALITY1",
    called: str = "MWL_BRIDGE",
    explicit_only: bool = False,
    max_pdu: int = 16382,
) -> FindResult:
    assoc = scu(calling, explicit_only).associate(
        "127.0.0.1", port, ae_title=called, max_pdu=max_pdu
    )
    assert assoc.is_established, "association failed"
    statuses: list[int] = []
    identifiers: list[Dataset] = []
    final: Dataset | None = None
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status, "no response (timeout or abort)"
            statuses.append(int(status.Status))
            if int(status.Status) in (0xFF00, 0xFF01):
                identifiers.append(identifier)
            else:
                final = status
    finally:
        assoc.release()
    assert final is not None
    return FindResult(statuses, identifiers, final)


def mwl_query(**sps: Any) -> Dataset:
    """A typical modality query: patient keys plus an SPS item with ``sps`` keys."""
    q = Dataset()
    q.PatientName = ""
    q.PatientID = ""
    item = Dataset()
    item.ScheduledStationAETitle = ""
    item.ScheduledProcedureStepStartDate = ""
    item.ScheduledProcedureStepStartTime = ""
    item.Modality = ""
    for k, v in sps.items():
        setattr(item, k, v)
    q.ScheduledProcedureStepSequence = [item]
    return q


def dcmtk(tool: str) -> str | None:
    """Path of DCMTK's ``tool`` binary, or None. pynetdicom installs Python scripts named
    findscu/echoscu too (they may come first on PATH): only an ELF binary counts."""
    for candidate in (f"/usr/bin/{tool}", shutil.which(tool)):
        if candidate and os.path.exists(candidate):
            with open(candidate, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return candidate
    return None
