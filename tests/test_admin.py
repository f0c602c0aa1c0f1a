"""Admin CLI on real data in a real Redis, called through bridge.cli.main."""

from __future__ import annotations

import json

import pytest
import redis
from rq import Queue

from bridge.intake import deadletter
from bridge.intake.deadletter import DeadLetter
from bridge.ops.admin import date_range, table
from bridge.ops.cli import main
from bridge.store.item import SPS, WorklistItem, to_dataset
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore


def make_item(
    n: int, date: str, modality: str = "CT", station: str = "CT1", status: str = "SCHEDULED"
) -> WorklistItem:
    return WorklistItem(
        item_id=f"it{n}",
        order_key=f"RIS|ord{n}",
        attrs={
            "PatientName": "MÜLLER^JÜRGEN",
            "PatientID": f"P{n}",
            "AccessionNumber": f"ACC{n}",
            "StudyInstanceUID": f"1.2.3.{n}",
            "ReferencedStudySequence": [],
            SPS: [
                {
                    "ScheduledStationAETitle": station,
                    "ScheduledProcedureStepStartDate": date,
                    "ScheduledProcedureStepStartTime": "101500",
                    "Modality": modality,
                    "ScheduledProcedureStepID": f"SPS{n}",
                    "ScheduledProcedureStepStatus": status,
                    "ScheduledProtocolCodeSequence": [
                        {"CodeValue": "X1", "CodingSchemeDesignator": "LOCAL"}
                    ],
                }
            ],
        },
    )  # fmt: skip


@pytest.fixture
def data(redis_client: redis.Redis, keys: Keys) -> WorklistStore:
    store = WorklistStore(redis_client, keys)
    store.upsert(make_item(1, "20260101"))
    store.upsert(make_item(2, "20260705", modality="MR", station="MR1"))
    store.upsert(make_item(3, "20260706", status="COMPLETED"))
    store.upsert(make_item(4, "20260707"))
    return store


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_worklist_list_filters_and_json(data, redis_url, capsys) -> None:
    code, out, _ = run(capsys, "worklist", "list", "--redis-url", redis_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "DATE", "TIME", "MODALITY", "STATION", "STATUS",
                                "ACCESSION", "PATIENT", "ID"]  # fmt: skip
    assert [ln.split()[0] for ln in lines[1:5]] == ["it1", "it2", "it3", "it4"]  # by start
    assert lines[-1] == "4 item(s)"

    def ids(*flags: str) -> list[str]:
        code, out, _ = run(capsys, "worklist", "list", "--redis-url", redis_url, "--json", *flags)
        assert code == 0
        return [i["item_id"] for i in json.loads(out)]

    assert ids("--modality", "MR") == ["it2"]
    assert ids("--station", "CT1", "--status", "COMPLETED") == ["it3"]
    assert ids("--date", "20260705-20260706") == ["it2", "it3"]
    assert ids("--date", "20260707") == ["it4"]
    assert ids("--date", "-20260101") == ["it1"]
    assert ids("--modality", "US") == []


def test_bad_date_is_a_config_error(redis_url, capsys) -> None:
    code, _, err = run(capsys, "worklist", "list", "--redis-url", redis_url, "--date", "2026-07")
    assert code == 2 and "--date" in err
    assert date_range("20260705") == (20260705000000, 20260705235959)


def test_worklist_show_is_a_dicom_dump(data, redis_url, capsys) -> None:
    code, out, _ = run(capsys, "worklist", "show", "it2", "--redis-url", redis_url)
    assert code == 0
    assert "(0010,0010) Patient's Name" in out and "MÜLLER^JÜRGEN" in out
    assert "(0040,0100)  Scheduled Procedure Step Sequence" in out
    assert "(0040,0001) Scheduled Station AE Title" in out and "MR1" in out
    assert "(0040,0008)  Scheduled Protocol Code Sequence" in out
    code, out, _ = run(capsys, "worklist", "show", "it2", "--redis-url", redis_url, "--json")
    assert json.loads(out)["attrs"]["AccessionNumber"] == "ACC2"
    code, _, err = run(capsys, "worklist", "show", "nope", "--redis-url", redis_url)
    assert code == 1 and "no worklist item nope" in err


def test_to_dataset_keeps_multivalues_and_empty_type2() -> None:
    ds = to_dataset({"PatientID": "", "OtherPatientIDs": ["A", "B"], "NotDicom": "x"})
    assert ds.PatientID == ""
    assert list(ds.OtherPatientIDs) == ["A", "B"]
    assert len(ds) == 2  # the unknown keyword was skipped


def test_worklist_delete(data, redis_url, redis_client, keys, capsys) -> None:
    code, out, _ = run(capsys, "worklist", "delete", "it2", "--redis-url", redis_url)
    assert (code, out.strip()) == (0, "deleted it2")
    assert data.get("it2") is None
    assert data.ids_for("station", "MR1") == []
    code, _, err = run(capsys, "worklist", "delete", "it2", "--redis-url", redis_url)
    assert code == 1 and "no worklist item it2" in err


def test_worklist_purge_before(data, redis_url, capsys) -> None:
    data.upsert(WorklistItem(item_id="nodate", attrs={SPS: [{"Modality": "CT"}]}))
    code, out, _ = run(capsys, "worklist", "purge", "--before", "20260706", "--dry-run",
                       "--json", "--redis-url", redis_url)  # fmt: skip
    assert code == 0 and json.loads(out)["matched"] == 2
    assert data.count() == 5
    code, out, _ = run(capsys, "worklist", "purge", "--before", "20260706",
                       "--redis-url", redis_url)  # fmt: skip
    assert (code, out.strip()) == (0, "deleted 2 item(s) scheduled before 20260706")
    remaining = {i.item_id for i in data.load(data.candidate_ids(data_query()))}
    assert remaining == {"it3", "it4", "nodate"}  # an item without a date needs a human
    code, _, err = run(capsys, "worklist", "purge", "--before", "July", "--redis-url", redis_url)
    assert code == 2 and "--before" in err


def data_query():
    from bridge.store.worklist_store import CandidateQuery

    return CandidateQuery()


def test_deadletter_list_show_drop(redis_client, keys, redis_url, capsys) -> None:
    first = deadletter.put(
        redis_client, keys,
        DeadLetter(raw=b"MSH|^~\\&|RIS|HOSP\rPID|1||P9\r", reason="PID-3 missing",
                   stage="worker", code=101, location="PID-3",
                   meta={"control_id": "C77", "sender": "RIS|HOSP"}),
    )  # fmt: skip
    second = deadletter.put(
        redis_client, keys, DeadLetter(raw=b"\xffgarbage", reason="no MSH", stage="listener")
    )
    code, out, _ = run(capsys, "deadletter", "list", "--redis-url", redis_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[1].startswith(second) and lines[2].startswith(first)  # newest first
    assert "PID-3 missing" in lines[2] and "C77" in lines[2]
    code, out, _ = run(capsys, "deadletter", "list", "--redis-url", redis_url, "--json")
    assert [d["id"] for d in json.loads(out)] == [second, first]

    code, out, _ = run(capsys, "deadletter", "show", first, "--redis-url", redis_url)
    assert code == 0
    assert "PID-3 missing" in out and "\nPID|1||P9" in out and "meta.sender: RIS|HOSP" in out
    code, out, _ = run(capsys, "deadletter", "show", second, "--json", "--redis-url", redis_url)
    assert json.loads(out)["raw_base64"] == "/2dhcmJhZ2U="

    code, out, _ = run(capsys, "deadletter", "drop", first, "--redis-url", redis_url)
    assert (code, out.strip()) == (0, f"dropped {first}")
    assert deadletter.count(redis_client, keys) == 1
    assert run(capsys, "deadletter", "drop", first, "--redis-url", redis_url)[0] == 1
    assert run(capsys, "deadletter", "show", first, "--redis-url", redis_url)[0] == 1


def test_status(data, redis_client, keys, redis_url, capsys) -> None:
    deadletter.put(redis_client, keys, DeadLetter(raw=b"x", reason="r", stage="listener"))
    Queue(keys.queue_name(), connection=redis_client).enqueue("builtins.len", "ab")
    redis_client.set(keys.heartbeat("scp", "host1-42"), "1", ex=30)
    code, out, _ = run(capsys, "status", "--redis-url", redis_url, "--json")
    assert code == 0
    st = json.loads(out)
    assert st["queue"] == {
        "name": "mwl-ingest", "depth": 1, "started": 0, "failed": 0, "backlog": 0
    }  # fmt: skip
    assert st["workers"] == []
    assert st["instances"] == ["scp:host1-42"]
    assert st["items"] == {"total": 4, "by_status": {"SCHEDULED": 3, "COMPLETED": 1}}
    assert st["deadletters"] == 1
    assert st["redis"]["aof_enabled"] == 1 and st["redis"]["appendfsync"] == "always"
    code, out, _ = run(capsys, "status", "--redis-url", redis_url)
    assert code == 0
    assert "Queue        mwl-ingest: 1 waiting" in out and "Dead letters 1" in out
    assert "aof_enabled" in out


def test_status_without_redis_fails_cleanly(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("MWL_BRIDGE_REDIS_URL", raising=False)
    code, _, err = run(capsys, "status")
    assert code == 2 and "redis.url" in err and "no embedded Redis" in err
    from redis_server import free_port

    code, _, err = run(capsys, "status", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1 and "unavailable" in err


def test_table_aligns() -> None:
    assert table([{"a": "x", "bb": "yyy"}], ("a", "bb")) == "A  BB\nx  yyy"
