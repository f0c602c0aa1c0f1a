"""OMI^O23, OMG^O19 and ADT over MLLP from a client we did not write (python-hl7's
``mllp_send``), applied by a real worker, checked with DCMTK ``findscu`` against the real
SCP (issue #12). Samples: ``tests/samples/omi/*.hl7`` (HL7 v2.5.1 4.4.15 OMI^O23 with
IPC, IHE RAD-4 v2.5.1 option; 4.4.1 OMG^O19) and ``tests/samples/adt/*.hl7``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from interop_clients import FINDSCU, findscu, mllp_send
from mllp_harness import StartFn
from orm_builder import orm
from scp_support import StartScp

from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys
from bridge.worker import rq_worker as workers

SAMPLES = Path(__file__).parent / "samples"
pytestmark = pytest.mark.skipif(not FINDSCU, reason="DCMTK not installed")


def work(client: redis.Redis, settings: Settings) -> None:
    ctx = workers.install(settings, client)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    workers.make_worker(ctx).work(burst=True, logging_level="WARNING")


def test_omi_omg_and_adt_over_mllp_then_findscu(
    mllp: StartFn, start_scp: StartScp, redis_client: redis.Redis, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Today's listener refused OMI, OMG and ADT with AR 200 (only ORM^O01 accepted)."""
    s = load_settings({"redis.url": redis_url, "worker.local_timezone": "UTC"}, env={})
    lt = mllp()
    orm_file = tmp_path / "orm.hl7"
    orm_file.write_bytes(orm(control_id="ORM-1", placer="ORM1", filler="", station="US_1",
                             modality="US").encode())  # fmt: skip
    for path in (orm_file, SAMPLES / "omi" / "omi_o23_two_ipc.hl7",
                 SAMPLES / "omi" / "omg_o19_order.hl7"):  # fmt: skip
        assert "MSA|AA|" in mllp_send(lt.port, path, tmp_path), path.name
    work(redis_client, s)
    scp = start_scp()
    got = findscu(scp.port, tmp_path, "PatientID=12345")
    sps = {ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID: ds for ds in got}
    assert set(sps) == {"SPS1", "SPS-OMI1", "SPS-OMI2", "SPS-OMG2"}  # one SPS per IPC
    omi = sps["SPS-OMI2"]
    assert (omi.AccessionNumber, omi.RequestedProcedureID) == ("ACC-OMI1", "RP-OMI1")
    assert omi.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT_ROOM2"
    assert sps["SPS-OMG2"].ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "MR_ROOM1"
    # An ADT^A08 renames the patient on every open item, whatever order type made it.
    assert "MSA|AA|ADT-A08-1" in mllp_send(lt.port, SAMPLES / "adt" / "adt_a08_update_patient.hl7",
                                           tmp_path)  # fmt: skip
    work(redis_client, s)
    got = findscu(scp.port, tmp_path, "PatientID=12345")
    assert len(got) == 4
    assert {str(ds.PatientName) for ds in got} == {"DOE^JOHANNA^Q"}
    assert {ds.CurrentPatientLocation for ds in got} == {"WARD7^702^1"}
    # A47 moves them all to the new identifier.
    assert "MSA|AA|ADT-A47-1" in mllp_send(lt.port, SAMPLES / "adt" / "adt_a47_change_id.hl7",
                                           tmp_path)  # fmt: skip
    work(redis_client, s)
    assert findscu(scp.port, tmp_path, "PatientID=12345") == []
    assert len(findscu(scp.port, tmp_path, "PatientID=12399")) == 4
    assert deadletter.count(redis_client, Keys()) == 0


def test_omi_lifecycle_xo_and_ca(
    start_scp: StartScp, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """XO and CA work on OMI orders as on ORM: an XO that drops an IPC discontinues that
    SPS; a CA cancels the rest (hidden from the default query)."""
    from worker_helpers import run

    s = load_settings({"redis.url": redis_url, "worker.local_timezone": "UTC"}, env={})
    nw = (SAMPLES / "omi" / "omi_o23_two_ipc.hl7").read_bytes()
    xo = nw.replace(b"ORC|NW|", b"ORC|XO|").replace(b"|OMI-1|", b"|OMI-2|")
    xo = b"\r".join(seg for seg in xo.split(b"\r") if b"SPS-OMI2" not in seg)
    run(redis_client, s, nw, xo)
    scp = start_scp()
    got = findscu(scp.port, tmp_path, "PatientID=12345")
    assert [ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in got] == [
        "SPS-OMI1"]  # fmt: skip
    ca = nw.replace(b"ORC|NW|OMI100^RIS|OMF100^PACS||SC", b"ORC|CA|OMI100^RIS|OMF100^PACS||CA")
    run(redis_client, s, ca.replace(b"|OMI-1|", b"|OMI-3|"))
    assert findscu(scp.port, tmp_path, "PatientID=12345") == []
