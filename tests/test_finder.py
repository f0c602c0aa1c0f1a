"""`mwl-bridge find` against a real MWL SCP: DCMTK wlmscpfs here, the bridge's own SCP
end to end when it is on this branch (tests/test_run_e2e.py)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from redis_server import free_port

from bridge.ops.cli import main
from bridge.ops.find import build_query, flatten

pytestmark = pytest.mark.skipif(shutil.which("wlmscpfs") is None, reason="DCMTK not installed")


def write_wl(path: Path, n: int, modality: str, station: str, date: str) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"MÜLLER^ANNA{n}"
    ds.PatientID = f"PID{n}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AccessionNumber = f"ACC{n}"
    ds.RequestedProcedureID = f"RP{n}"
    ds.RequestedProcedureDescription = "CT chest"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.99.{n}"
    sps = Dataset()
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepStartDate = date
    sps.ScheduledProcedureStepStartTime = "101500"
    sps.Modality = modality
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = "chest w/o"
    sps.ScheduledProcedureStepID = f"SPS{n}"
    sps.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = [sps]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.99.{n}.1"
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def wlmscpfs(tmp_path_factory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("wl")
    aedir = root / "MWL_BRIDGE"
    aedir.mkdir()
    (aedir / "lockfile").touch()
    write_wl(aedir / "1.wl", 1, "CT", "CT1", "20260705")
    write_wl(aedir / "2.wl", 2, "MR", "MR1", "20260705")
    write_wl(aedir / "3.wl", 3, "CT", "CT1", "20260706")
    port = free_port()
    proc = subprocess.Popen(
        ["wlmscpfs", "-dfp", str(root), "-csk", "--single-process", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "wlmscpfs did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def find(port: int, capsys, *flags: str) -> tuple[int, dict]:
    code = main(["find", "--port", str(port), "--json", *flags])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_find_all_and_filtered(wlmscpfs: int, capsys) -> None:
    code, doc = find(wlmscpfs, capsys)
    assert code == 0 and doc["status"] == "0x0000"
    assert sorted(m["AccessionNumber"] for m in doc["matches"]) == ["ACC1", "ACC2", "ACC3"]
    first = next(m for m in doc["matches"] if m["AccessionNumber"] == "ACC1")
    assert first["PatientName"] == "MÜLLER^ANNA1"  # decoded from ISO_IR 100
    assert first["ScheduledStationAETitle"] == "CT1" and first["Modality"] == "CT"

    assert [
        m["AccessionNumber"] for m in find(wlmscpfs, capsys, "--modality", "MR")[1]["matches"]
    ] == ["ACC2"]
    code, doc = find(wlmscpfs, capsys, "--modality", "CT", "--date", "20260706")
    assert [m["AccessionNumber"] for m in doc["matches"]] == ["ACC3"]
    code, doc = find(wlmscpfs, capsys, "--patient-id", "PID2", "--station", "MR1")
    assert [m["AccessionNumber"] for m in doc["matches"]] == ["ACC2"]
    assert find(wlmscpfs, capsys, "--modality", "US")[1]["matches"] == []


def test_find_prints_a_table(wlmscpfs: int, capsys) -> None:
    assert main(["find", "--port", str(wlmscpfs), "--station", "CT1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["ACCESSION", "PATIENT", "ID", "PATIENT"]
    assert {ln.split()[0] for ln in out[1:3]} == {"ACC1", "ACC3"}
    assert out[-1] == "2 match(es), final status 0x0000"


def test_find_without_scp_fails(capsys) -> None:
    assert main(["find", "--port", str(free_port())]) == 1
    assert "no C-FIND answer" in capsys.readouterr().err


def test_query_shape() -> None:
    q = build_query(date="20260705", modality="CT")
    sps = q.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledProcedureStepStartDate, q.PatientID) == (
        "CT",
        "20260705",
        "",
    )
    assert flatten(q)["Modality"] == "CT"
