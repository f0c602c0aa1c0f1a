"""``mwl-bridge mpps list`` and ``mpps show`` on instances a real pynetdicom MPPS SCU
created through the SCP, with the fields the workers write back added as the contract
says (``items``, ``unscheduled``, ``patient_mismatch``, ``applied_status``,
``applied_at``), called through bridge.ops.cli.main."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from mpps_support import MppsScu, create_ds, final_ds, step
from pydicom.uid import generate_uid
from scp_support import StartScp

from bridge.ops.cli import main
from bridge.store.keys import Keys

KEYS = Keys()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def reported(start_scp: StartScp, redis_client: redis.Redis) -> dict[str, str]:
    """Three instances, oldest first: a COMPLETED one the workers linked to two items
    (one of another patient), an unscheduled one they applied, one not applied yet."""
    scp = start_scp()
    uids = {name: generate_uid() for name in ("done", "unscheduled", "fresh")}
    with MppsScu(scp.port, "CT1") as scu:
        assert scu.create(create_ds(), uids["done"]).status == 0
        assert scu.set(final_ds(), uids["done"]).status == 0
        time.sleep(0.01)  # distinct creation times: the index orders by them
        blank = step(rpid="", spsid="", acc="")
        assert scu.create(create_ds(steps=[blank]), uids["unscheduled"]).status == 0
        time.sleep(0.01)
    with MppsScu(scp.port, "MR7") as scu:
        assert scu.create(create_ds(Modality="MR"), uids["fresh"]).status == 0
    writeback: dict[str, dict[str, Any]] = {
        "done": {"items": '["it1","it2"]', "patient_mismatch": '["it2"]',
                 "applied_status": "COMPLETED", "applied_at": "1783246200.5"},
        "unscheduled": {"items": "[]", "unscheduled": "1", "applied_status": "IN PROGRESS",
                        "applied_at": "1783246300"},
    }  # fmt: skip
    for name, fields in writeback.items():
        redis_client.hset(KEYS.mpps(uids[name]), mapping=fields)
    return uids


def test_mpps_list_newest_first_with_links_and_flags(
    reported: dict[str, str], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "mpps", "list", "--redis-url", redis_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["UID", "CREATED", "CALLING", "AE", "STATUS", "APPLIED", "ITEMS",
                                "FLAGS"]  # fmt: skip
    rows = [line.split() for line in lines[1:4]]
    assert [r[0] for r in rows] == [reported["fresh"], reported["unscheduled"], reported["done"]]
    assert rows[0][2:] == ["MR7", "IN", "PROGRESS", "-", "-"]
    assert rows[1][2:] == ["CT1", "IN", "PROGRESS", "IN", "PROGRESS", "0", "unscheduled"]
    assert rows[2][2:] == ["CT1", "COMPLETED", "COMPLETED", "2", "patient-mismatch"]
    assert lines[-1] == "3 instance(s) shown, 3 in the index"

    code, out, _ = run(capsys, "mpps", "list", "--status", "completed", "--redis-url", redis_url)
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == [reported["done"]]

    code, out, _ = run(capsys, "mpps", "list", "--json", "--limit", "2", "--redis-url", redis_url)
    doc = json.loads(out)
    assert [d["uid"] for d in doc] == [reported["fresh"], reported["unscheduled"]]
    assert doc[0]["applied_status"] is None and doc[0]["items"] is None
    assert doc[1]["unscheduled"] is True and doc[1]["items"] == []
    assert doc[1]["refs"] == [{"StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.1.1",
                               "RequestedProcedureID": "", "ScheduledProcedureStepID": "",
                               "AccessionNumber": ""}]  # fmt: skip


def test_mpps_show_not_applied_yet(
    reported: dict[str, str], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "mpps", "show", reported["fresh"], "--redis-url", redis_url)
    assert code == 0
    assert f"# mpps {reported['fresh']}" in out
    assert "# status=IN PROGRESS  calling_ae=MR7" in out
    assert "# applied: not applied yet" in out
    assert "linked items" not in out and "flag:" not in out
    assert "  1  1.2.826.0.1.3680043.2.1125.1.1  RP1    SPS1    ACC1" in out
    assert "(0010,0010) Patient's Name" in out and "MÜLLER^HANS" in out
    assert "(0040,0270)  Scheduled Step Attributes Sequence" in out
    assert "(0008,0060) Modality" in out and "'MR'" in out


def test_mpps_show_links_and_flags(
    reported: dict[str, str], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "mpps", "show", reported["done"], "--redis-url", redis_url)
    assert code == 0
    assert "# status=COMPLETED" in out
    assert "# applied: COMPLETED at 2026-07-05T10:10:00Z" in out
    assert "# linked items: it1, it2" in out
    assert "# flag: patient mismatch: Patient ID differs from that of item(s) it2" in out
    assert "(0040,0340)  Performed Series Sequence  1 item(s)" in out
    code, out, _ = run(capsys, "mpps", "show", reported["unscheduled"], "--redis-url", redis_url)
    assert "# linked items: none" in out
    assert "# flag: unscheduled" in out

    code, out, _ = run(capsys, "mpps", "show", reported["done"], "--json", "--redis-url",
                       redis_url)  # fmt: skip
    doc = json.loads(out)
    assert (doc["status"], doc["applied_status"], doc["items"]) == (
        "COMPLETED",
        "COMPLETED",
        ["it1", "it2"],
    )
    assert doc["patient_mismatch"] == ["it2"] and doc["unscheduled"] is False
    assert doc["patient_id"] == "12345" and doc["dataset"]["PatientName"] == "MÜLLER^HANS"


def test_mpps_show_unknown(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "mpps", "show", "1.2.3.4", "--redis-url", redis_url)
    assert code == 1 and "no MPPS instance 1.2.3.4 (unknown or expired)" in err
