"""Clients we did not write, for the interoperability tests: python-hl7's ``mllp_send``
console script (HL7 over MLLP) and DCMTK's ``findscu`` (MWL C-FIND)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
from scp_support import dcmtk

FINDSCU = dcmtk("findscu")


def mllp_send(port: int, path: Path, tmp: Path) -> str:
    """python-hl7's console script (MLLP-framed file), the reply text."""
    script = Path(sys.executable).parent / "mllp_send"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "hl7.client"]
    framed = tmp / (path.name + ".mllp")
    framed.write_bytes(b"\x0b" + path.read_bytes() + b"\x1c\r")
    out = subprocess.run([*cmd, "--port", str(port), "--file", str(framed), "127.0.0.1"],
                         capture_output=True, timeout=60, check=True)  # fmt: skip
    return out.stdout.decode("latin-1").replace("\n", "\r")


def findscu(port: int, tmp: Path, *keys: str) -> list[pydicom.Dataset]:
    out = tmp / f"rsp{len(list(tmp.glob('q*')))}"
    out.mkdir()
    (tmp / f"q{out.name}").touch()
    args = [FINDSCU, "-W", "-aet", "MODALITY1", "-aec", "MWL_BRIDGE", "-X", "-od", str(out)]
    for k in ("PatientName", "PatientID", "AccessionNumber", "RequestedProcedureID",
              "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
              "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
              "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
              "CurrentPatientLocation", *keys):  # fmt: skip
        args += ["-k", k]
    subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, timeout=60, check=True)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
