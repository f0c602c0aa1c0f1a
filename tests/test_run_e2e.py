"""The whole bridge in one command: `mwl-bridge run` on the embedded Redis, an ORM sent
with `mwl-bridge send`, found with DCMTK `findscu -W` and `mwl-bridge find`, then SIGTERM
and nothing left running."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bridge_process import Run, gone, processes_with_env, wait_for
from scp_support import dcmtk

SAMPLES = Path(__file__).parent / "samples" / "ops"
FINDSCU = dcmtk("findscu")


def findscu(port: int) -> str:
    out = subprocess.run(
        [str(FINDSCU), "-v", "-W", "-aec", "MWL_BRIDGE", "-aet", "TEST_SCU",
         "-k", "AccessionNumber", "-k", "PatientID",
         "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260705",
         "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.skipif(FINDSCU is None, reason="DCMTK not installed")
def test_run_send_find_stop(tmp_path: Path) -> None:
    run = Run(tmp_path, "--workers", "2")
    try:
        assert wait_for(lambda: run.get("/readyz") == 200, 60, 0.2), run.text()

        sent = subprocess.run(
            [sys.executable, "-m", "bridge", "send", "--port", str(run.mllp_port),
             str(SAMPLES / "orm_new.hl7")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "MSA-1=AA  MSA-2=OPS0001" in sent.stdout

        # The worker maps the order asynchronously: poll until the SCP serves it.
        # DCMTK prints values as encoded: SH padded to even length with a space.
        accession = re.compile(r"\(0008,0050\) SH \[OPSACC1 ?\]")
        assert wait_for(lambda: accession.search(findscu(run.dicom_port)), 30, 0.3), run.text()
        answer = findscu(run.dicom_port)
        assert "Find Response: 1 (Pending)" in answer
        assert "Find Response: 2" not in answer
        assert "Received Final Find Response (Success)" in answer

        found = subprocess.run(
            [sys.executable, "-m", "bridge", "find", "--json", "--port", str(run.dicom_port),
             "--modality", "CT"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        matches = json.loads(found.stdout)["matches"]
        assert [m["AccessionNumber"] for m in matches] == ["OPSACC1"]
        assert matches[0]["ScheduledStationAETitle"] == "CT1"

        metrics_text = ""

        def scraped() -> bool:
            nonlocal metrics_text
            import urllib.request

            url = f"http://127.0.0.1:{run.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                metrics_text = resp.read().decode()
            return 'mwl_worklist_items{status="SCHEDULED"} 1.0' in metrics_text

        assert wait_for(scraped, 10, 0.2), metrics_text
        assert "mwl_workers_alive" in metrics_text

        assert run.terminate() == 0
    finally:
        run.kill()
    assert all(gone(pid) for pid in run.pids()), run.text()
    assert processes_with_env(f"XDG_DATA_HOME={tmp_path / 'data'}") == []
