"""Interoperability with a second, independent SCU in another language: the npm package
dcmjs-dimse (``createWorklistFindRequest``), run by node from ``tests/js``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from js_support import NODE, js_script
from mwl_items import make_item
from scp_support import StartScp

from bridge.store.worklist_store import WorklistStore

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture(scope="module")
def js_scu() -> Path:
    return js_script("worklist_find.js")


def js_find(script: Path, port: int, query: dict[str, Any], calling: str = "JSSCU") -> Any:
    assert NODE
    proc = subprocess.run(
        [NODE, str(script), "127.0.0.1", str(port), calling, "MWL_BRIDGE", json.dumps(query)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_dcmjs_worklist_query_gets_ff01_and_complete_items(
    js_scu: Path, store: WorklistStore, start_scp: StartScp
) -> None:
    store.apply([make_item(1, name="MÜLLER^JÜRGEN"), make_item(2, modality="MR", station="MR1")])
    out = js_find(
        js_scu, start_scp().port, {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "müller*"}
    )
    # Its default query carries an empty Query/Retrieve Level, Study Description, ...:
    # answered as unsupported optional keys (FF01), never refused.
    assert [r["status"] for r in out["results"]] == [0xFF01, 0x0000]
    ds = out["results"][0]["dataset"]
    assert ds["SpecificCharacterSet"] == "ISO_IR 192"
    assert ds["PatientName"] == [{"Alphabetic": "MÜLLER^JÜRGEN"}]
    assert ds["PatientID"] == "PID1"
    assert ds["AdmissionID"] == ""
    [sps] = ds["ScheduledProcedureStepSequence"]
    assert sps["ScheduledProcedureStepID"] == "SPS1"
    assert sps["ScheduledProtocolCodeSequence"][0]["CodeValue"] == "P1"


def test_dcmjs_modality_and_date_range(
    js_scu: Path, store: WorklistStore, start_scp: StartScp
) -> None:
    store.apply(
        [
            make_item(1, date="20260705", time="090000"),
            make_item(2, date="20260706", time="090000"),
            make_item(3, date="20260706", time="090000", modality="MR", station="MR1"),
        ]
    )
    sps = {
        "ScheduledStationAETitle": "",
        "ScheduledProcedureStepStartDate": "20260706-20260707",
        "ScheduledProcedureStepStartTime": "",
        "Modality": "CT",
        "ScheduledProcedureStepID": "",
    }
    out = js_find(js_scu, start_scp().port, {"ScheduledProcedureStepSequence": [sps]})
    pending = [r["dataset"] for r in out["results"] if r["status"] in (0xFF00, 0xFF01)]
    assert [d["PatientID"] for d in pending] == ["PID2"]


def test_dcmjs_rejected_calling_ae(js_scu: Path, start_scp: StartScp) -> None:
    out = js_find(js_scu, start_scp(allowed_calling_aes=("OTHER",)).port, {}, calling="JSSCU")
    assert out["rejected"] is not None
    assert out["results"] == []
