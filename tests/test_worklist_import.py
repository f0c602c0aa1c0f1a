"""``mwl-bridge worklist import`` (issue #12): DICOM worklist files of the servers sites
replace become items through the checks a mapped order passes, keyed by their order
numbers so the RIS's later XO/CA finds them, written under the workers' apply lock. Real
Redis, real rq workers, the CLI through ``bridge.ops.cli.main``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import SAMPLES
from orm_builder import orm
from pydicom.dataset import Dataset
from test_order_identity import load_store
from wl_files import ae_folder, wl_dataset, write_wl
from worker_helpers import items, run

from bridge.core.settings import Settings, load_settings
from bridge.ops.cli import main
from bridge.store.item import SPS, WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import AlreadyStored, CandidateQuery, FenceLost, WorklistStore
from bridge.worker import migrations
from bridge.worker.lifecycle import item_id


def run_import(
    capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, dict[str, Any]]:
    code = main(["worklist", "import", "--redis-url", url, "--json", *args])
    out, _err = capsys.readouterr()
    return code, json.loads(out)


def by_file(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {Path(f["file"]).name: f for f in report["files"]}


@pytest.fixture
def s(redis_url: str) -> Settings:
    return load_settings(
        {"redis.url": redis_url, "worker.worker_class": "simple", "worker.local_timezone": "UTC"},
        env={},
    )


# -- what is read, and the worklist label ----------------------------------------------------


def test_layouts_per_ae_folders_flat_folder_and_single_files(
    tmp_path: Path, redis_url: str, store: WorklistStore, capsys
) -> None:
    root = tmp_path / "wlmscpfs"
    write_wl(ae_folder(root, "CT_ROOM1") / "a.wl", wl_dataset(1))
    write_wl(ae_folder(root, "MR_ROOM2") / "b.WL", wl_dataset(2))
    (root / "MR_ROOM2" / "notes.txt").write_text("not a worklist file")
    write_wl(root / "MR_ROOM2" / "old" / "c.wl", wl_dataset(3))  # below an AE folder
    write_wl(root / "archive" / "d.wl", wl_dataset(4))  # no lockfile: wlmscpfs cannot serve it
    orthanc = tmp_path / "orthanc"
    write_wl(orthanc / "e.wl", wl_dataset(5), file_format=False)
    write_wl(orthanc / "f.dcm", wl_dataset(6))
    single = write_wl(tmp_path / "export.bin", wl_dataset(7))

    code, report = run_import(capsys, redis_url, str(root), str(orthanc), str(single),
                              "--worklist", "FLAT")  # fmt: skip
    assert code == 0, report
    assert sorted(by_file(report)) == ["a.wl", "b.WL", "e.wl", "export.bin", "f.dcm"]
    assert {f["result"] for f in report["files"]} == {"imported"}
    assert sorted(report["not_read"]) == [
        f"{root / 'MR_ROOM2' / 'old'}: below an AE folder (wlmscpfs does not read it)",
        f"{root / 'archive'}: no lockfile, not a wlmscpfs AE folder",
    ]
    labels = {it.attrs["PatientID"]: it.worklist for it in store.load(store.candidate_ids(
        CandidateQuery()))}  # fmt: skip
    assert labels == {"PID1": "CT_ROOM1", "PID2": "MR_ROOM2", "PID5": "FLAT", "PID6": "FLAT",
                      "PID7": "FLAT"}  # fmt: skip

    # An AE folder given directly is labelled by its own name (its lockfile says what it is).
    write_wl(root / "CT_ROOM1" / "g.wl", wl_dataset(8))
    code, report = run_import(capsys, redis_url, str(root / "CT_ROOM1"))
    assert code == 0
    assert [(f["file"], f["result"], f["worklist"]) for f in report["files"]] == [
        (str(root / "CT_ROOM1" / "a.wl"), "skipped", "CT_ROOM1"),
        (str(root / "CT_ROOM1" / "g.wl"), "imported", "CT_ROOM1"),
    ]


def test_per_called_ae_worklists_need_a_label(
    tmp_path: Path, redis_url: str, store: WorklistStore, capsys, monkeypatch
) -> None:
    """With per-called-AE worklists an unlabelled item would be served to nobody."""
    monkeypatch.setenv("MWL_BRIDGE_SCP_PER_CALLED_AE_WORKLISTS", "true")
    path = write_wl(tmp_path / "flat" / "a.wl", wl_dataset(1))
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 1
    assert (
        "no worklist label while scp.per_called_ae_worklists is on" in report["files"][0]["reason"]
    )
    assert store.count() == 0
    code, report = run_import(capsys, redis_url, str(path), "--worklist", "CT_ROOM1")
    assert code == 0 and store.count() == 1


def test_a_folder_name_that_is_no_ae_title_is_rejected(
    tmp_path: Path, redis_url: str, store: WorklistStore, capsys
) -> None:
    write_wl(ae_folder(tmp_path, "A_FOLDER_NAME_TOO_LONG") / "a.wl", wl_dataset(1))
    code, report = run_import(capsys, redis_url, str(tmp_path))
    assert code == 1
    assert report["files"][0]["reason"] == "worklist label longer than 16 characters (VR AE)"
    assert store.count() == 0


# -- validation -------------------------------------------------------------------------------


def _relabel(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("missing_patient_id", {"drop": ("PatientID",)},
     "PatientID: missing or empty (Type 1, PS3.4 Table K.6-1)"),
    ("missing_start_date", {"drop": ("ScheduledProcedureStepStartDate",)},
     "ScheduledProcedureStepSequence[1].ScheduledProcedureStepStartDate: missing or empty"),
    ("missing_sps_id", {"drop": ("ScheduledProcedureStepID",)},
     "ScheduledProcedureStepSequence[1].ScheduledProcedureStepID: missing or empty"),
    ("empty_sps_sequence", {"drop": ("ScheduledProcedureStepSequence",)},
     "ScheduledProcedureStepSequence: missing or empty (Type 1"),
    ("no_description_nor_code",
     {"drop": ("ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence")},
     "ScheduledProcedureStepDescription / ScheduledProtocolCodeSequence: none present"),
    ("bad_uid", {"extra": {"StudyInstanceUID": "1.2.03.4"}},
     "StudyInstanceUID: not a valid UID"),
    ("bad_date", {"date": "20260230"},
     "ScheduledProcedureStepSequence[1].ScheduledProcedureStepStartDate: not a valid date"),
    ("bad_time", {"time": "2561"},
     "ScheduledProcedureStepSequence[1].ScheduledProcedureStepStartTime: not a valid time"),
    ("too_long_accession", {"extra": {"AccessionNumber": "ACC4567890123456X"}},
     "AccessionNumber: longer than 16 characters (VR SH)"),
    ("modality_not_in_table", {"modality": "XYZ"},
     "ScheduledProcedureStepSequence[1].Modality: not a value of the mapping's modality table"),
    ("lowercase_modality", {"modality": "ct"},
     "ScheduledProcedureStepSequence[1].Modality: characters or format not allowed in VR CS"),
    ("two_patient_ids", {"pid": ["PIDA", "PIDB"]},
     "PatientID: several values where one is allowed (VM 1)"),
    ("control_character", {"name": "DOE^JA\x01NE"},
     "PatientName: control characters are not allowed in VR PN"),
    ("bad_status", {"sps_extra": {"ScheduledProcedureStepStatus": "WAITING"}},
     "ScheduledProcedureStepStatus: not a defined term"),
    ("unknown_charset", {"charset": "ISO_IR 999"},
     "SpecificCharacterSet: not a defined term pydicom can decode"),
    ("order_number_with_separator", {"placer": "PL^1"},
     "PlacerOrderNumberImagingServiceRequest: contains '|', '^'"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kwargs", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejected_files_name_attribute_and_rule_never_the_value(
    case: str, kwargs: dict[str, Any], reason: str, tmp_path: Path, redis_url: str,
    store: WorklistStore, capsys,
) -> None:  # fmt: skip
    path = write_wl(tmp_path / f"{case}.wl", wl_dataset(1, **kwargs))
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 1
    (row,) = report["files"]
    assert row["result"] == "rejected"
    assert reason in row["reason"]
    for value in ("ACC4567890123456X", "PIDA", "DOE^JA", "1.2.03.4", "20260230", "WAITING"):
        assert value not in row["reason"]
    assert store.count() == 0


def test_bytes_not_in_the_files_character_set_are_rejected(
    tmp_path: Path, redis_url: str, store: WorklistStore, capsys
) -> None:
    """Latin-1 bytes in a file that says UTF-8: pydicom would put U+FFFD in the name."""
    path = write_wl(tmp_path / "a.wl", wl_dataset(1, name="MÜLLER^JÜRGEN"))
    _relabel(path, b"ISO_IR 100", b"ISO_IR 192")
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 1
    assert report["files"][0]["reason"] == (
        "PatientName: bytes not valid in the file's Specific Character Set"
    )
    assert store.count() == 0


def test_not_a_worklist_file(tmp_path: Path, redis_url: str, capsys) -> None:
    (tmp_path / "x.wl").write_bytes(b"this is not DICOM at all\n" * 10)
    empty = Dataset()
    empty.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    write_wl(tmp_path / "y.wl", empty)
    code, report = run_import(capsys, redis_url, str(tmp_path), str(tmp_path / "gone.wl"))
    assert code == 1
    rows = by_file(report)
    assert rows["x.wl"]["reason"].startswith(("not readable as DICOM", "no Modality Worklist"))
    assert rows["y.wl"]["reason"] == "no Modality Worklist attributes (not a worklist file)"
    assert rows["gone.wl"]["reason"] == "cannot be read (FileNotFoundError)"


def test_item_content_type2_empty_latin1_decoded_one_item_per_sps(
    tmp_path: Path, redis_url: str, store: WorklistStore, capsys
) -> None:
    ds = wl_dataset(1, name="MÜLLER^JÜRGEN", time="1015", steps=2,
                    drop=("PatientBirthDate", "ReferencedStudySequence"),
                    extra={"PatientComments": "private note"})  # fmt: skip
    ds.add_new(0x00091010, "LO", "private tag")
    path = write_wl(ae_folder(tmp_path, "CT_ROOM1") / "a.wl", ds)
    code, report = run_import(capsys, redis_url, str(tmp_path))
    assert code == 0
    row = report["files"][0]
    assert row["result"] == "imported" and len(row["items"]) == 2
    assert "2 SPS items: one worklist item each" in row["notes"]
    assert ("no placer or filler order number: found by C-FIND, not updatable by the RIS"
            in row["notes"])  # fmt: skip
    stored = sorted(store.load(row["items"]), key=lambda i: i.sps["ScheduledProcedureStepID"])
    suid = "1.2.826.0.1.3680043.10.77.1"
    for n, it in enumerate(stored, start=1):
        spsid = f"SPS1.{n}"
        assert it.item_id == item_id(f"import|{suid}|{spsid}", "RP1", spsid)
        assert it.order_key == f"import|{suid}|{spsid}"
        assert it.worklist == "CT_ROOM1"
        assert it.attrs["PatientName"] == "MÜLLER^JÜRGEN"  # decoded from ISO_IR 100
        assert it.attrs["PatientComments"] == "private note"  # Type 3 of Table K.6-1: kept
        # Type 2 the file lacks: present and empty, as wlmscpfs serves them.
        assert it.attrs["PatientBirthDate"] == "" and it.attrs["ReferencedStudySequence"] == []
        assert it.attrs["Allergies"] == "" and it.sps["ScheduledStationName"] == ""
        assert it.sps["ScheduledProcedureStepStartTime"] == "101500"
        assert it.sps["ScheduledProcedureStepStatus"] == "SCHEDULED"
        assert it.sps["ScheduledProtocolCodeSequence"] == [
            {"CodeValue": "P1", "CodingSchemeDesignator": "LOCAL", "CodeMeaning": "Protocol"}
        ]
        assert "SpecificCharacterSet" not in it.attrs  # items are Unicode
        assert not any(k.startswith("(0009") for k in it.attrs)
    assert path.exists()


def test_empty_station_is_imported_with_the_mappings_warning(
    tmp_path: Path, redis_url: str, store: WorklistStore, capsys
) -> None:
    path = write_wl(tmp_path / "a.wl", wl_dataset(1, station=""))
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 0
    assert report["files"][0]["notes"] == [
        "ScheduledStationAETitle empty (the mapping warns about it)",
        "no placer or filler order number: found by C-FIND, not updatable by the RIS",
    ]
    # The strict profile requires a station, for HL7 orders and imported files alike.
    store.delete(store.candidate_ids(CandidateQuery()))
    code, report = run_import(capsys, redis_url, str(path), "--mapping", "strict")
    assert code == 1
    assert report["files"][0]["reason"].startswith(
        "ScheduledProcedureStepSequence[1].ScheduledStationAETitle: missing or empty"
    )
    assert store.count() == 0


def test_a_finished_step_is_stored_as_the_workers_store_one(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: WorklistStore,
    s: Settings, capsys,
) -> None:  # fmt: skip
    """COMPLETED in the file: kept out of the default worklist and purged on schedule."""
    path = write_wl(tmp_path / "a.wl", wl_dataset(
        1, sps_extra={"ScheduledProcedureStepStatus": "COMPLETED"}))  # fmt: skip
    before = time.time()
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 0
    (iid,) = report["files"][0]["items"]
    assert store.get(iid).status == "COMPLETED"  # type: ignore[union-attr]
    purge_at = redis_client.zscore(Keys().expiry, iid)
    assert purge_at is not None
    retention = s.worker.retention_completed_s
    assert int(before) + retention <= purge_at <= time.time() + retention  # whole seconds


# -- dry run, re-import ---------------------------------------------------------------------


def test_dry_run_reports_the_same_and_writes_nothing_then_reimport_skips(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys
) -> None:
    folder = ae_folder(tmp_path, "CT_ROOM1")
    write_wl(folder / "1.wl", wl_dataset(1, placer="PL1", filler="FL1"))
    # Same order, second procedure; and the first file again under another name.
    write_wl(folder / "2.wl", wl_dataset(2, placer="PL1", filler="FL1"))
    write_wl(folder / "3.wl", wl_dataset(1, placer="PL1", filler="FL1"))
    write_wl(folder / "4.wl", wl_dataset(4, drop=("PatientName",)))

    code_dry, dry = run_import(capsys, redis_url, str(tmp_path), "--dry-run")
    assert redis_client.dbsize() == 0
    code, real = run_import(capsys, redis_url, str(tmp_path))
    assert (code_dry, code) == (1, 1)
    assert dry["dry_run"] is True and real["dry_run"] is False
    assert dry["files"] == real["files"]
    assert [(f["result"], len(f["items"]), f["order"]) for f in real["files"]] == [
        ("imported", 1, "P|PL1"), ("imported", 1, "P|PL1"), ("skipped", 0, ""),
        ("rejected", 0, ""),
    ]  # fmt: skip
    assert real["summary"] == {"files": 4, "imported": 2, "skipped": 1, "rejected": 1,
                               "items": 2}  # fmt: skip

    before = {k: redis_client.dump(k) for k in redis_client.keys("mwl:*")}
    code, again = run_import(capsys, redis_url, str(tmp_path))
    assert [f["result"] for f in again["files"]] == ["skipped", "skipped", "skipped", "rejected"]
    assert {k: redis_client.dump(k) for k in redis_client.keys("mwl:*")} == before


def test_text_report(tmp_path: Path, redis_url: str, capsys) -> None:
    write_wl(tmp_path / "ok.wl", wl_dataset(1, placer="PL1"))
    write_wl(tmp_path / "bad.wl", wl_dataset(2, drop=("RequestedProcedureID",)))
    code = main(["worklist", "import", "--redis-url", redis_url, str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0].split() == ["FILE", "RESULT", "ITEMS", "WORKLIST", "ORDER", "DETAIL"]
    assert out[1].split()[:2] == [str(tmp_path / "bad.wl"), "rejected"]
    assert "RequestedProcedureID: missing or empty" in out[1]
    assert out[2].split()[:4] == [str(tmp_path / "ok.wl"), "imported", "1", "P|PL1"]
    assert out[-1] == "2 file(s): 1 imported (1 item(s)), 0 skipped (already present), 1 rejected"


# -- order keys: the RIS's later messages find imported items --------------------------------

ORDERS = [
    # (file placer, its namespace, file filler, the RIS's ORC-2, ORC-3, order name)
    ("PL1", None, "FL1", "PL1", "FL1", "P|PL1"),
    ("PL2", "RIS", None, "PL2^RIS", "", "P|PL2^RIS"),
    # The file did not record the namespace the RIS sends in ORC-2.
    ("PL3", None, None, "PL3^RIS", "", "P|PL3"),
    # Only the filler number in the file: the XO names the order by its placer number.
    (None, None, "FL4", "PL4", "FL4", "F|FL4"),
]


@pytest.mark.parametrize(("placer", "ns", "filler", "orc2", "orc3", "name"), ORDERS,
                         ids=["placer+filler", "namespace", "namespace_in_hl7_only",
                              "filler_only"])  # fmt: skip
def test_xo_and_ca_from_the_ris_update_and_cancel_the_imported_item(
    placer: str | None, ns: str | None, filler: str | None, orc2: str, orc3: str, name: str,
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, s: Settings, capsys,
) -> None:  # fmt: skip
    path = write_wl(tmp_path / "a.wl", wl_dataset(1, placer=placer, placer_ns=ns, filler=filler))
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 0 and report["files"][0]["order"] == name
    (imported,) = report["files"][0]["items"]
    assert imported == item_id(name, "RP1", "SPS1")
    keys = Keys()
    assert redis_client.hget(keys.order(name), "canonical") == name.encode()
    assert redis_client.ttl(keys.order(name)) == -1  # no TTL while the order has items

    suid = "1.2.826.0.1.3680043.10.77.1"
    run(redis_client, s, orm(control="XO", status="SC", placer=orc2, filler=orc3, zds=suid,
                             station="CT_ROOM9", control_id="X1"))  # fmt: skip
    (item,) = items(redis_client, s)
    assert item.item_id == imported  # updated in place, not a second item
    assert item.sps["ScheduledStationAETitle"] == "CT_ROOM9"
    assert item.status == "SCHEDULED"

    run(redis_client, s, orm(control="CA", status="CA", placer=orc2, filler=orc3, zds=suid,
                             control_id="C1"))  # fmt: skip
    (item,) = items(redis_client, s)
    assert item.item_id == imported and item.status == "CANCELED"
    assert redis_client.hget(keys.order(name), "final") == b"CANCELED"

    # The file is stale now: importing it again does not bring the exam back.
    WorklistStore(redis_client, keys).delete([imported])  # (even once it is purged)
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 1
    assert "the order is finished (CANCELED) in the bridge" in report["files"][0]["reason"]


def test_an_imported_order_joins_an_order_the_ris_sent(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, s: Settings, capsys
) -> None:
    """A second procedure of an order the bridge has from HL7 belongs to that order."""
    run(redis_client, s, orm(placer="PL7^RIS", filler="FL7", control_id="N1"))
    path = write_wl(tmp_path / "a.wl", wl_dataset(2, filler="FL7"))
    code, report = run_import(capsys, redis_url, str(path))
    assert code == 0 and report["files"][0]["order"] == "P|PL7^RIS"
    run(redis_client, s, orm(control="CA", status="CA", placer="PL7^RIS", filler="FL7",
                             control_id="C1"))  # fmt: skip
    assert sorted(i.status for i in items(redis_client, s)) == ["CANCELED", "CANCELED"]


def test_a_store_of_the_previous_release_is_upgraded_first_and_its_orders_found(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys
) -> None:
    """Orders the previous release named '<sender>|P|<number>': the import upgrades the
    store as a worker would (before it, the old names are not found), then a file of such
    an order joins it, and the number two senders shared is refused."""
    load_store(redis_client, SAMPLES / "store_written_by_e69e4ae.json")
    assert migrations.current(redis_client, Keys()) == 1
    write_wl(tmp_path / "leg1.wl", wl_dataset(9, placer="LEG1"))
    write_wl(tmp_path / "dup1.wl", wl_dataset(10, placer="DUP1"))
    code, dry = run_import(capsys, redis_url, str(tmp_path), "--dry-run")
    assert dry["notes"] == [
        "the store is in an earlier release's layout: the import (like a worker) upgrades "
        "it first; orders named the old way are not found by this dry run"
    ]
    assert migrations.current(redis_client, Keys()) == 1  # a dry run writes nothing
    code, report = run_import(capsys, redis_url, str(tmp_path))
    assert migrations.current(redis_client, Keys()) == migrations.SCHEMA_VERSION
    rows = by_file(report)
    assert rows["leg1.wl"]["order"] == "RIS^HOSP|P|LEG1"
    assert rows["leg1.wl"]["items"] == [item_id("RIS^HOSP|P|LEG1", "RP9", "SPS9")]
    assert "(ambiguous)" in rows["dup1.wl"]["reason"]
    assert code == 1 and report["notes"] == []


def test_order_conflicts_are_rejected(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: WorklistStore, capsys
) -> None:
    keys = Keys()
    redis_client.hset(keys.order("P|PLA"), mapping={"canonical": "P|PLA"})
    redis_client.hset(keys.order("P|PLB"), mapping={"canonical": "P|PLB"})
    redis_client.hset(keys.order("F|FLB"), mapping={"canonical": "P|PLB"})
    redis_client.hset(keys.order("P|PLC"), mapping={"ambiguous": "1"})
    write_wl(tmp_path / "1.wl", wl_dataset(1, placer="PLA", filler="FLB"))
    write_wl(tmp_path / "2.wl", wl_dataset(2, placer="PLC"))
    write_wl(tmp_path / "3.wl", wl_dataset(3, placer="PLD"))
    # Same order, procedure and SPS as 3.wl, another Study Instance UID.
    write_wl(tmp_path / "4.wl", wl_dataset(3, placer="PLD",
                                           extra={"StudyInstanceUID": "1.2.3.99"}))  # fmt: skip
    code, report = run_import(capsys, redis_url, str(tmp_path))
    assert code == 1
    rows = by_file(report)
    assert rows["1.wl"]["reason"].endswith("they name two different orders in the bridge")
    assert "(ambiguous)" in rows["2.wl"]["reason"]
    assert rows["3.wl"]["result"] == "imported"
    assert rows["4.wl"]["reason"] == (
        "RequestedProcedureID + ScheduledProcedureStepID: the same pair twice for one order "
        "(two files or SPS items would be one item)"
    )
    # The same in a later run, against the stored item.
    code, report = run_import(capsys, redis_url, str(tmp_path / "4.wl"))
    assert report["files"][0]["reason"] == (
        "StudyInstanceUID: an item of this order with the same Requested Procedure ID and "
        "SPS ID is stored with another Study Instance UID"
    )
    assert store.count() == 1


# -- the apply lock and the atomic write ----------------------------------------------------


def test_import_waits_for_the_apply_lock_and_releases_only_its_own(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: WorklistStore, capsys
) -> None:
    keys = Keys()
    path = write_wl(tmp_path / "a.wl", wl_dataset(1))
    redis_client.set(keys.apply_lock, "worker-token", px=60_000)
    code = main(["worklist", "import", "--redis-url", redis_url, "--lock-wait", "0.3", str(path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "the workers kept the apply lock for 0.3 s" in captured.err
    assert store.count() == 0
    assert redis_client.get(keys.apply_lock) == b"worker-token"  # not ours: left alone

    redis_client.delete(keys.apply_lock)
    code, _ = run_import(capsys, redis_url, str(path))
    assert code == 0 and store.count() == 1
    assert redis_client.get(keys.apply_lock) is None  # released after the file


def _item(n: int, suid: str) -> WorklistItem:
    return WorklistItem(
        item_id=f"it{n}",
        attrs={"StudyInstanceUID": suid, SPS: [{"ScheduledProcedureStepID": "SPS1"}]},
        order_key="P|X",
    )


def test_insert_new_is_fenced_and_never_overwrites(
    redis_client: redis.Redis, store: WorklistStore
) -> None:
    keys = Keys()
    states = {keys.order("P|X"): {"canonical": "P|X"}}
    redis_client.set(keys.apply_lock, "tok")
    redis_client.hset(keys.order("P|X"), "canonical", "P|X")
    redis_client.expire(keys.order("P|X"), 100)
    with pytest.raises(FenceLost):
        store.insert_new([_item(1, "1.2.3")], states, fence=(keys.apply_lock, "other"))
    assert store.count() == 0
    assert store.insert_new([_item(1, "1.2.3")], states, fence=(keys.apply_lock, "tok")) == 1
    assert redis_client.ttl(keys.order("P|X")) == -1  # persisted with its item
    before = redis_client.get(keys.item("it1"))
    with pytest.raises(AlreadyStored) as same_id:
        store.insert_new([_item(1, "1.2.4")], {}, fence=(keys.apply_lock, "tok"))
    assert same_id.value.same_id
    with pytest.raises(AlreadyStored) as same_step:
        # Another id, same Study Instance UID + SPS ID; the new order state is not written.
        store.insert_new([_item(2, "1.2.3")], {keys.order("P|Y"): {"canonical": "P|Y"}},
                         fence=(keys.apply_lock, "tok"))  # fmt: skip
    assert not same_step.value.same_id
    assert redis_client.get(keys.item("it1")) == before
    assert store.count() == 1 and not redis_client.exists(keys.order("P|Y"))
