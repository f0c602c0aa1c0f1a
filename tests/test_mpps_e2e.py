"""The whole loop of issue #13 through ``mwl-bridge run``, with clients we did not write:
an order over MLLP (python-hl7's ``mllp_send``), the worklist as DCMTK ``findscu`` sees
it, the modality's MPPS N-CREATE / N-SET (pynetdicom's SCU), and the procedure status
back to a RIS (python-hl7's MLLP server) that drops the connection before its first ACK
of every message: each is sent again with the same MSH-10 and applied once."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import redis
from bridge_process import Run, wait_for
from interop_clients import FINDSCU, findscu, mllp_send
from mpps_support import MppsScu, create_ds, final_ds, step
from orm_builder import orm
from ris_server import FakeRis

pytestmark = pytest.mark.skipif(not FINDSCU, reason="DCMTK not installed")
UID1 = "1.2.826.0.1.3680043.2.1125.9.101"
UID2 = "1.2.826.0.1.3680043.2.1125.9.102"


@pytest.fixture
def ris() -> FakeRis:
    server = FakeRis()
    yield server
    server.stop()


def steps(port: int, tmp: Path, status: str = "") -> dict[str, str]:
    """SPS ID → SPS status of patient 12345's items (``status``: the SPS Status key)."""
    key = f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus={status}"
    found: list[pydicom.Dataset] = findscu(port, tmp, "PatientID=12345", *([key] if status else []))
    return {ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID:
            ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus
            for ds in found}  # fmt: skip


def test_order_worklist_mpps_and_status_back_to_the_ris(
    ris: FakeRis, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    ris.default = ["drop"]  # every message's first ACK is lost
    config = tmp_path / "settings.toml"
    config.write_text("[worker]\nlocal_timezone = \"UTC\"\n"
                      "[outbound]\nretry_initial_s = 0.3\nretry_max_s = 1.0\n")  # fmt: skip
    run = Run(tmp_path, "--workers", "1", "--redis-url", redis_url, "--config", str(config),
              "--outbound-host", "127.0.0.1", "--outbound-port", str(ris.port))  # fmt: skip
    try:
        assert wait_for(lambda: run.get("/readyz") == 200, 60, 0.2), run.text()
        assert "child.started child=outbound" in run.text()
        message = tmp_path / "orm.hl7"
        message.write_bytes(orm(control_id="E2E-1", obrs=[{}, {19: "RP2", 20: "SPS2",
                                                               18: "ACC2"}]).encode())  # fmt: skip
        assert "MSA|AA|E2E-1" in mllp_send(run.mllp_port, message, tmp_path)
        assert wait_for(lambda: steps(run.dicom_port, tmp_path)
                        == {"SPS1": "SCHEDULED", "SPS2": "SCHEDULED"}, 20, 0.3)  # fmt: skip
        assert ris.received == []  # the order came from the RIS: nothing is echoed

        with MppsScu(run.dicom_port) as scu:
            assert scu.create(create_ds([step()]), UID1).status == 0
            assert wait_for(lambda: steps(run.dicom_port, tmp_path, "STARTED")
                            == {"SPS1": "STARTED"}, 20, 0.3)  # fmt: skip
            assert scu.set(final_ds(), UID1).status == 0
            both = [step(), step("RP2", "SPS2", "ACC2")]
            assert scu.create(create_ds(both, PerformedProcedureStepID="PPS2"), UID2).status == 0
            assert scu.set(final_ds(), UID2).status == 0
        # Completed steps leave the modality's worklist; asked for by status, they are there.
        assert wait_for(lambda: steps(run.dicom_port, tmp_path) == {}, 20, 0.3)
        assert steps(run.dicom_port, tmp_path, "COMPLETED") == {"SPS1": "COMPLETED",
                                                                "SPS2": "COMPLETED"}
        # IP when the first step started, CM once both were done (the second MPPS started
        # SPS2 while SPS1 was complete: still IP, so no message for it).
        assert wait_for(lambda: len(ris.applied) == 2 and len(ris.received) == 4, 30), run.text()
        assert [r.status for r in ris.received] == ["IP", "IP", "CM", "CM"]
        first, resent = ris.received[0], ris.received[1]
        assert first.raw == resent.raw and first.control_id == resent.control_id
        assert ris.applied == [ris.received[0].control_id, ris.received[2].control_id]
        assert {r.placer for r in ris.received} == {"PL1"}
        assert run.terminate() == 0
    finally:
        run.kill()
