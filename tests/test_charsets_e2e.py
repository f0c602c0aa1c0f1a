"""Names in six scripts, from MLLP to C-FIND, with parts we did not write at both ends.

Japanese (ISO 2022 with ``~ISO IR87`` and XPN-8 groups, JAHIS), Korean (KS X 1001 =
EUC-KR), Chinese (GB 18030-2000), Greek (8859/7), Cyrillic (8859/5) and Latin-1
(8859/1) orders (tests/samples/orm_charset_*.hl7, see tests/charset_samples.py) go in
with python-hl7's ``mllp_send`` to the real listener, a real rq worker maps them, the
real SCP answers DCMTK's ``findscu -W -X``, and pydicom reads the response files.

Only the decoded Unicode is compared: whichever Specific Character Set (0008,0005) the
SCP picks for its response is its business (PS3.4 C.4.1.1.3.2), and pydicom decodes it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import redis
from charset_samples import SAMPLES_BY_LANGUAGE
from mllp_harness import StartFn
from scp_support import StartScp, dcmtk
from worker_helpers import items, run

from bridge.core.settings import load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys

FINDSCU = dcmtk("findscu")
pytestmark = pytest.mark.skipif(not FINDSCU, reason="DCMTK not installed")


def mllp_send(port: int, framed_file: Path) -> bytes:
    """python-hl7's console script (of this interpreter's environment): it reads an
    MLLP-framed file as bytes and sends each message unchanged, one ACK read per message."""
    script = Path(sys.executable).parent / "mllp_send"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "hl7.client"]
    out = subprocess.run(
        [*cmd, "--port", str(port), "--file", str(framed_file), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def findscu(port: int, patient_id: str, out: Path) -> list[pydicom.Dataset]:
    assert FINDSCU
    out.mkdir()
    keys = [
        "PatientName",
        f"PatientID={patient_id}",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    ]
    args = [FINDSCU, "-W", "-aet", "MODALITY1", "-aec", "MWL_BRIDGE", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_six_scripts_reach_a_dcmtk_worklist_query_as_the_same_unicode(
    mllp: StartFn,
    redis_url: str,
    redis_client: redis.Redis,
    keys: Keys,
    start_scp: StartScp,
    tmp_path: Path,
) -> None:
    """Today: the Japanese order was stored as ``Yamada^Tarou`` only (first PID-5
    repetition) or, with the kanji first, as ``$B;3ED (B``; the others passed."""
    samples = list(SAMPLES_BY_LANGUAGE.values())
    framed = tmp_path / "orders.mllp"
    framed.write_bytes(b"".join(b"\x0b" + s.message() + b"\x1c\r" for s in samples))

    lt = mllp()
    acks = mllp_send(lt.port, framed)
    assert acks.count(b"MSA|AA|") == len(samples), acks

    settings = load_settings(
        {"redis.url": redis_url, "worker.worker_class": "simple", "worker.local_timezone": "UTC"},
        env={},
    )
    run(redis_client, settings)
    assert deadletter.count(redis_client, keys) == 0
    assert len(items(redis_client, settings)) == len(samples)

    port = start_scp().port
    for sample in samples:
        [rsp] = findscu(port, sample.patient_id, tmp_path / sample.patient_id)
        assert rsp.PatientID == sample.patient_id
        assert str(rsp.PatientName) == sample.patient_name, (sample.file, sample.clause)
