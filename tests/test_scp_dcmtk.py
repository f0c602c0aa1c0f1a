"""Interoperability with DCMTK's findscu -W and echoscu (an independent C++ SCU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from mwl_items import make_item
from scp_support import StartScp, dcmtk

from bridge.store.worklist_store import WorklistStore

FINDSCU = dcmtk("findscu")
ECHOSCU = dcmtk("echoscu")
pytestmark = pytest.mark.skipif(not (FINDSCU and ECHOSCU), reason="DCMTK not installed")


def findscu(
    port: int, keys: list[str | bytes], out: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[bytes], list[pydicom.Dataset]]:
    assert FINDSCU
    args: list[str | bytes] = [FINDSCU, "-W", "-v", "-aet", "MODALITY1", "-aec", "MWL_BRIDGE"]
    args += [*extra, "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    args += ["127.0.0.1", str(port)]
    proc = subprocess.run(args, capture_output=True, timeout=60)
    responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return proc, responses


BASE_KEYS = [
    "PatientName",
    "PatientID",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].Modality",
]


def test_echoscu(start_scp: StartScp) -> None:
    assert ECHOSCU
    port = start_scp().port
    proc = subprocess.run(
        [ECHOSCU, "-v", "-aec", "MWL_BRIDGE", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_findscu_combined_date_time_range(
    store: WorklistStore, start_scp: StartScp, tmp_path: Path
) -> None:
    store.apply(
        [
            make_item(1, date="20260705", time="095900"),
            make_item(2, date="20260705", time="100000"),
            make_item(3, date="20260706", time="030000"),
            make_item(4, date="20260707", time="180000"),
            make_item(5, date="20260707", time="181500"),
        ]
    )
    proc, responses = findscu(
        start_scp().port,
        [
            *BASE_KEYS,
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260705-20260707",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1000-1800",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r.PatientID for r in responses) == ["PID2", "PID3", "PID4"]
    for r in responses:
        assert len(r.ScheduledProcedureStepSequence) == 1
        assert {e.keyword for e in r} == {
            "PatientName",
            "PatientID",
            "ScheduledProcedureStepSequence",
        }


@pytest.mark.parametrize(
    ("charset", "codec", "name", "pattern"),
    [
        ("ISO_IR 100", "latin-1", "MÜLLER^JÜRGEN", "MÜLLER*"),
        ("ISO_IR 192", "utf-8", "ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ", "δημητρίου*"),
    ],
)
def test_findscu_non_ascii_patient_name(
    store: WorklistStore,
    start_scp: StartScp,
    tmp_path: Path,
    charset: str,
    codec: str,
    name: str,
    pattern: str,
) -> None:
    store.apply([make_item(1, name=name), make_item(2, name="SMITH^JOHN")])
    # findscu passes the bytes of -k through: give them in the query's charset.
    keys: list[str | bytes] = [
        f"(0008,0005)={charset}",
        f"PatientName={pattern}".encode(codec),
        "PatientID",
        "ScheduledProcedureStepSequence[0].Modality",
    ]
    scp = start_scp(pn_accent_insensitive=charset == "ISO_IR 192")
    proc, responses = findscu(scp.port, keys, tmp_path)
    assert proc.returncode == 0, proc.stderr
    [rsp] = responses
    assert rsp.SpecificCharacterSet == charset
    assert str(rsp.PatientName) == name
    raw = (tmp_path / "rsp0001.dcm").read_bytes()
    assert name.split("^")[0].encode(codec) in raw


def test_findscu_cancel(store: WorklistStore, start_scp: StartScp, tmp_path: Path) -> None:
    store.apply([make_item(n) for n in range(200)])
    proc, responses = findscu(start_scp().port, BASE_KEYS, tmp_path, "--cancel", "5")
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, output
    assert "Cancel" in output, output
    assert 5 <= len(responses) < 200


def test_findscu_rejected_calling_ae(start_scp: StartScp, tmp_path: Path) -> None:
    port = start_scp(allowed_calling_aes=("OTHER",)).port
    proc, _ = findscu(port, BASE_KEYS, tmp_path)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in output or "Rejected" in output
