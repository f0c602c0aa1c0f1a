"""MPPS interoperability with a second, independent SCU in another language: the npm
package dcmjs-dimse (``NCreateRequest`` / ``NSetRequest``), run by node from ``tests/js``
against the in-process SCP on a real Redis.

dcmjs-dimse 0.3.3 keeps optional fields of an earlier response (Error Comment, Offending
Element) in the command it parses for a later one on the same association, so success
responses are checked by their status only; pynetdicom's SCU (tests/test_mpps_scp.py)
shows they carry no such field on the wire.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
from js_support import NODE, js_script
from scp_support import StartScp

from bridge.store.keys import Keys

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")
KEYS = Keys()
UID = "1.2.826.0.1.3680043.2.1125.9.77"
STUDY = "1.2.826.0.1.3680043.2.1125.1.1"

CREATE = {
    "SpecificCharacterSet": "ISO_IR 192",
    "PatientName": "GARCÍA^JOSÉ",
    "PatientID": "12345",
    "IssuerOfPatientID": "HOSP",
    "ScheduledStepAttributesSequence": [
        {"StudyInstanceUID": STUDY, "AccessionNumber": "ACC1", "RequestedProcedureID": "RP1",
         "ScheduledProcedureStepID": "SPS1"}
    ],
    "PerformedProcedureStepID": "PPS1",
    "PerformedStationAETitle": "US1",
    "PerformedProcedureStepStartDate": "20260705",
    "PerformedProcedureStepStartTime": "101500",
    "PerformedProcedureStepStatus": "IN PROGRESS",
    "PerformedProcedureStepEndDate": "",
    "PerformedProcedureStepEndTime": "",
    "Modality": "US",
    "PerformedSeriesSequence": [],
}  # fmt: skip
FINAL = {
    "PerformedProcedureStepStatus": "COMPLETED",
    "PerformedProcedureStepEndDate": "20260705",
    "PerformedProcedureStepEndTime": "103000",
    "PerformedSeriesSequence": [
        {"ProtocolName": "ABDOMEN", "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.2.1",
         "ReferencedImageSequence": [
             {"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1",
              "ReferencedSOPInstanceUID": "1.2.826.0.1.3680043.2.1125.3.1"}]}
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def js_mpps() -> Path:
    return js_script("mpps.js")


def js_steps(script: Path, port: int, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert NODE
    proc = subprocess.run(
        [NODE, str(script), "127.0.0.1", str(port), "JSUS", "MWL_BRIDGE", json.dumps(steps)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["rejected"] is None
    assert len(out["results"]) == len(steps)
    return list(out["results"])


def test_dcmjs_create_complete_and_a_late_set(
    js_mpps: Path, start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    created, completed, late = js_steps(
        js_mpps,
        scp.port,
        [
            {"op": "create", "uid": UID, "dataset": CREATE},
            {"op": "set", "uid": UID, "dataset": FINAL},
            {"op": "set", "uid": UID, "dataset": {"PerformedProcedureStepDescription": "x"}},
        ],
    )
    assert (created["status"], created["errorComment"]) == (0x0000, "")
    assert created["command"]["AffectedSOPInstanceUID"] == UID
    assert completed["status"] == 0x0000
    assert late["status"] == 0x0110
    assert late["errorComment"] == "Performed Procedure Step Object may no longer be updated"
    assert late["command"]["ErrorID"] == 0xA710

    h = {k.decode(): v.decode() for k, v in redis_client.hgetall(KEYS.mpps(UID)).items()}
    assert (h["status"], h["calling_ae"], h["patient_id"]) == ("COMPLETED", "JSUS", "12345")
    dataset = json.loads(h["dataset"])
    assert dataset["PatientName"] == "GARCÍA^JOSÉ"  # UTF-8 from dcmjs, decoded
    assert dataset["PerformedSeriesSequence"][0]["ProtocolName"] == "ABDOMEN"
    payloads = [
        json.loads(redis_client.hget(KEYS.message(m.decode()), "raw") or b"{}")
        for m in redis_client.lrange(KEYS.ingest_order, 0, -1)
    ]
    assert [(p["event"], p["status"], p["calling_ae"]) for p in payloads] == [
        ("create", "IN PROGRESS", "JSUS"),
        ("set", "COMPLETED", "JSUS"),
    ]
    assert payloads[0]["refs"] == [{"StudyInstanceUID": STUDY, "RequestedProcedureID": "RP1",
                                    "ScheduledProcedureStepID": "SPS1",
                                    "AccessionNumber": "ACC1"}]  # fmt: skip


def test_dcmjs_refusals_carry_the_offending_elements(
    js_mpps: Path, start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    bad_create, created, fixed, duplicate, unknown = js_steps(
        js_mpps,
        scp.port,
        [
            {"op": "create", "uid": UID, "dataset": {**CREATE,
                                                     "PerformedProcedureStepStatus": "COMPLETED"}},
            {"op": "create", "uid": UID, "dataset": CREATE},
            {"op": "set", "uid": UID, "dataset": {"PatientID": "9", "Modality": "MR"}},
            {"op": "create", "uid": UID, "dataset": CREATE},
            {"op": "set", "uid": UID + ".1", "dataset": FINAL},
        ],
    )  # fmt: skip
    assert bad_create["status"] == 0x0106
    assert bad_create["errorComment"] == "PerformedProcedureStepStatus must be IN PROGRESS"
    assert bad_create["command"]["OffendingElement"] in (0x00400252, [0x00400252])
    assert created["status"] == 0x0000
    assert fixed["status"] == 0x0106
    assert fixed["errorComment"] == "Not settable by N-SET: PatientID, Modality"
    assert fixed["command"]["OffendingElement"] == [0x00100020, 0x00080060]
    assert (duplicate["status"], duplicate["errorComment"]) == (
        0x0111,
        "SOP Instance UID already exists",
    )
    assert (unknown["status"], unknown["errorComment"]) == (0x0112, "No such MPPS instance")
    assert redis_client.hget(KEYS.mpps(UID), "status") == b"IN PROGRESS"
    assert redis_client.llen(KEYS.ingest_order) == 1
