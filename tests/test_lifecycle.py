"""The order lifecycle (ORC-1 x ORC-5) applied by real rq workers on a real Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from conftest import SAMPLES
from orm_builder import orm
from worker_helpers import items, run

from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys


@pytest.fixture
def wsettings(redis_url: str) -> Settings:
    return load_settings(
        {"redis.url": redis_url, "worker.worker_class": "simple", "worker.local_timezone": "UTC"},
        env={},
    )


def statuses(client: redis.Redis, s: Settings) -> list[tuple[str, str, bool]]:
    """(RPID, SPS status, held) of every item, by RPID."""
    return sorted((i.attrs["RequestedProcedureID"], i.status, i.hidden) for i in items(client, s))


def test_nw_creates_one_item_per_obr_scheduled(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(redis_client, wsettings, (SAMPLES / "orm_v23_two_obr_nozds.hl7").read_bytes())
    got = items(redis_client, wsettings)
    assert sorted((i.attrs["RequestedProcedureID"], i.status) for i in got) == [
        ("RP1", "SCHEDULED"), ("RP2", "SCHEDULED")]  # fmt: skip
    # Type 2 present-and-empty, the generated UID stored, the ingest line empty.
    assert got[0].attrs["MedicalAlerts"] == "" and got[0].sps["ScheduledStationName"] == ""
    assert got[0].attrs["StudyInstanceUID"].startswith("2.25.")
    assert redis_client.llen(Keys().ingest_order) == 0


def test_nw_ip_starts_and_repeated_nw_updates_in_place(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(redis_client, wsettings, orm(status="IP"))
    first = items(redis_client, wsettings)
    assert [i.status for i in first] == ["STARTED"]
    run(redis_client, wsettings, orm(status="SC", patient_name="DOE^JANE"))
    again = items(redis_client, wsettings)
    assert [i.item_id for i in again] == [first[0].item_id]
    assert again[0].attrs["PatientName"] == "DOE^JANE" and again[0].status == "SCHEDULED"


def test_xo_updates_in_place_without_rekey(redis_client: redis.Redis, wsettings: Settings) -> None:
    run(redis_client, wsettings, orm(zds=None))
    before = items(redis_client, wsettings)[0]
    # Reschedule, new room, new procedure (new RPID/SPS ID): same item, same Study UID.
    new_proc = {19: "RP9", 20: "SPS9", 4: "NEW^New proc^LOCAL^NP^New protocol^LOCAL"}
    xo = orm(control="XO", status="SC", zds=None, start="20260706090000", station="CT_ROOM2",
             obrs=[new_proc])  # fmt: skip
    run(redis_client, wsettings, xo)
    after = items(redis_client, wsettings)
    assert len(after) == 1 and after[0].item_id == before.item_id
    a = after[0]
    assert a.sps["ScheduledStationAETitle"] == "CT_ROOM2"
    assert a.sps["ScheduledProcedureStepStartDate"] == "20260706"
    assert a.attrs["RequestedProcedureID"] == "RP9"
    assert a.attrs["StudyInstanceUID"] == before.attrs["StudyInstanceUID"]
    assert a.start_key == 20260706090000


def test_absent_leaves_and_hl7_null_clears_on_update(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(redis_client, wsettings, orm(obrs=[{12: "ISOLATION", 13: "ALLERGY"}]))
    xo = orm(control="XO", status="SC", obrs=[{12: '""'}])  # OBR-13 absent, OBR-12 cleared
    run(redis_client, wsettings, xo)
    it = items(redis_client, wsettings)[0]
    assert it.attrs["PatientState"] == "" and it.attrs["MedicalAlerts"] == "ALLERGY"


def test_sc_status_changes_and_cm_completes(redis_client: redis.Redis, wsettings: Settings) -> None:
    run(redis_client, wsettings, orm())
    run(redis_client, wsettings, orm(control="SC", status="IP"))
    assert [s[1] for s in statuses(redis_client, wsettings)] == ["STARTED"]
    t0 = time.time()
    run(redis_client, wsettings, orm(control="SC", status="CM"))
    assert [s[1] for s in statuses(redis_client, wsettings)] == ["COMPLETED"]
    ((_, score),) = redis_client.zrange(Keys().expiry, 0, -1, withscores=True)
    assert abs(score - (t0 + wsettings.worker.retention_completed_s)) < 30


@pytest.mark.parametrize(
    "control,status,final",
    [("CA", "CA", "CANCELED"), ("DC", "CA", "DISCONTINUED"), ("OC", "", "CANCELED"),
     ("XO", "CM", "COMPLETED")],
)  # fmt: skip
def test_final_states_retained_then_purged(
    redis_client: redis.Redis, wsettings: Settings, control: str, status: str, final: str
) -> None:
    run(redis_client, wsettings, orm())
    run(redis_client, wsettings, orm(control=control, status=status))
    assert [s[1] for s in statuses(redis_client, wsettings)] == [final]
    from bridge.worker import rq_worker

    ctx = rq_worker.context()
    first = rq_worker.maintenance(ctx, now=time.time())
    assert first is not None and not first.purged  # still within retention
    later = rq_worker.maintenance(ctx, now=time.time() + 2 * 86400)
    assert later is not None and later.purged == {final: 1}
    assert items(redis_client, wsettings) == []


def test_hold_and_release(redis_client: redis.Redis, wsettings: Settings) -> None:
    run(redis_client, wsettings, orm(), orm(control="HD", status="HD"))
    assert statuses(redis_client, wsettings) == [("RP1", "SCHEDULED", True)]
    run(redis_client, wsettings, orm(control="RL", status="SC"))
    assert statuses(redis_client, wsettings) == [("RP1", "SCHEDULED", False)]


@pytest.mark.parametrize("control", ["NA", "OK", "CR", "UA", "UC", "SN"])
def test_responses_without_a_full_order_change_nothing(
    redis_client: redis.Redis, wsettings: Settings, control: str
) -> None:
    run(redis_client, wsettings, orm(), orm(control=control, status="", patient_name="OTHER^NAME"))
    it = items(redis_client, wsettings)
    assert len(it) == 1 and it[0].attrs["PatientName"] == "DOE^JOHN^Q^DR^JR PHD"
    assert deadletter.count(redis_client, Keys()) == 0


def test_ca_or_xo_for_unknown_order_create_nothing(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(redis_client, wsettings, orm(control="CA", status="CA", placer="NOPE", filler=""),
        orm(control="XO", status="SC", placer="NOPE2", filler=""))  # fmt: skip
    assert items(redis_client, wsettings) == []
    assert redis_client.llen(Keys().ingest_order) == 0
    assert deadletter.count(redis_client, Keys()) == 0


def test_canceled_order_is_never_resurrected(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(
        redis_client,
        wsettings,
        orm(),
        orm(control="CA", status="CA"),
        orm(),
        orm(control="XO", status="SC"),
    )
    assert [s[1] for s in statuses(redis_client, wsettings)] == ["CANCELED"]


def test_filler_number_learned_later_finds_the_order(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    # NW with the placer number only; CA with the filler number only after an XO told both.
    run(redis_client, wsettings, orm(filler=""), orm(control="XO", status="SC"),
        orm(control="CA", status="CA", placer=""))  # fmt: skip
    assert [s[1] for s in statuses(redis_client, wsettings)] == ["CANCELED"]


def test_update_in_other_charset_keeps_unicode(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(
        redis_client, wsettings, orm(charset="8859/1", patient_name="MÜLLER^JÖRG").encode("latin-1")
    )
    xo = orm(control="XO", status="SC", charset="UNICODE UTF-8", patient_name="MÜLLER^JÖRG^ŁUKASZ")
    run(redis_client, wsettings, xo.encode("utf-8"))
    it = items(redis_client, wsettings)[0]
    assert it.attrs["PatientName"] == "MÜLLER^JÖRG^ŁUKASZ"
    assert it.attrs["SpecificCharacterSet"] == "ISO_IR 192"


def test_unknown_combination_dead_letters_with_metadata(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    raw = orm(control="ZZ", control_id="CTRL-ZZ").encode("latin-1")
    (mid,) = run(redis_client, wsettings, raw)
    letter = deadletter.get(redis_client, Keys(), mid)
    assert letter is not None
    assert letter.raw == raw  # the raw message is kept byte for byte
    assert (letter.stage, letter.code, letter.location) == ("worker", 103, "ORC-1")
    assert letter.meta["control_id"] == "CTRL-ZZ" and letter.meta["sending_app"] == "RIS"
    assert "DOE" not in letter.reason  # reasons name fields, never values
    assert redis_client.llen(Keys().ingest_order) == 0  # the line advanced


def test_rejected_message_does_not_block_the_next(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    run(
        redis_client,
        wsettings,
        (SAMPLES / "orm_bad_missing_pid3.hl7").read_bytes(),
        # Not the samples' CTRL1: the same MSH-3+4+10 would be a duplicate, not queued.
        orm(placer="OK1", control_id="OK1"),
    )
    assert len(items(redis_client, wsettings)) == 1
    assert deadletter.count(redis_client, Keys()) == 1


def test_application_ack_results(redis_client: redis.Redis, wsettings: Settings) -> None:
    bad_date = (SAMPLES / "orm_bad_date.hl7").read_bytes()
    good, bad = run(redis_client, wsettings, orm(control_id="GOOD1"), bad_date,
                    ack_mode="application")  # fmt: skip
    assert good != bad  # two messages (the samples' control id is CTRL1)
    k = Keys()
    # Both verdicts expire (a listener that timed out never pops them).
    assert 0 < redis_client.ttl(k.result(good)) <= 120
    assert 0 < redis_client.ttl(k.result(bad)) <= 120
    ok = json.loads(redis_client.lpop(k.result(good)))
    assert ok == {"ok": True, "code": 0, "text": "", "location": ""}
    err = json.loads(redis_client.lpop(k.result(bad)))
    assert (err["ok"], err["code"], err["location"]) == (False, 102, "OBR-27.4")
    # commit mode pushes nothing
    (mid,) = run(redis_client, wsettings, orm(placer="P2"))
    assert redis_client.exists(k.result(mid)) == 0


def test_per_sender_mapping_and_sender_charset(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A sender whose MSH-18 is empty but who sends UTF-8: mllp.sender_charsets says so
    (the mapping file's default_charset moved there), and its own mapping file applies."""
    site = tmp_path / "utf8-sender.yaml"
    site.write_text(
        "extends: default\nattributes:\n  AdmissionID: {const: SITE}\n", encoding="utf-8"
    )
    s = load_settings(
        {"redis.url": redis_url, "worker.worker_class": "simple",
         "worker.sender_mappings": {"RIS|HOSP": str(site)},
         "mllp.sender_charsets": {"RIS|HOSP": "UNICODE UTF-8"}},
        env={},
    )  # fmt: skip
    run(redis_client, s, orm(patient_name="ŁUKASZ^ZOË").encode("utf-8"))
    [item] = items(redis_client, s)
    assert item.attrs["PatientName"] == "ŁUKASZ^ZOË"
    assert item.attrs["AdmissionID"] == "SITE"


def _ws(redis_url: str, **kw: object) -> Settings:
    return load_settings(
        {"redis.url": redis_url, "worker.worker_class": "simple", "worker.local_timezone": "UTC",
         **kw},
        env={},
    )  # fmt: skip


def test_cancel_after_order_state_retention_still_cancels(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The order hash may outlive its TTL only while items exist: scheduled items never
    expire, so a CA/DC/XO months later must still find the order (review finding 1)."""
    s = _ws(redis_url, **{"worker.order_state_retention_s": 1})
    run(redis_client, s, orm(control_id="N1", filler=""))
    k = Keys()
    # The order hash is kept (no TTL) while the order has items.
    assert redis_client.ttl(k.order("P|PL1")) == -1
    time.sleep(1.5)  # past worker.order_state_retention_s
    run(redis_client, s, orm(control="XO", status="SC", control_id="X1", start="20260706090000"))
    assert redis_client.ttl(k.order("F|FL1")) == -1  # the alias learned by the XO
    # Even if the hash is gone (an older release set a TTL), the store's order index
    # finds the order by its number.
    redis_client.delete(k.order("P|PL1"), k.order("F|FL1"))
    run(redis_client, s, orm(control="CA", status="CA", control_id="C1"))
    got = [(i.status, i.sps["ScheduledProcedureStepStartDate"]) for i in items(redis_client, s)]
    assert got == [("CANCELED", "20260706")]


def test_final_order_record_outlives_dedupe_window(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A final order's record lasts worker.final_order_retention_s (≥ the MLLP dedupe
    window), so a replay or a resent NW with a new control id does not resurrect it."""
    s = _ws(redis_url)
    run(redis_client, s, orm(control_id="N1"), orm(control="CA", status="CA", control_id="C1"))
    ttl = redis_client.ttl(Keys().order("P|PL1"))
    assert ttl > s.mllp.dedupe_retention_s - 60
    assert s.worker.final_order_retention_s >= s.mllp.dedupe_retention_s
    run(redis_client, s, orm(control_id="N2"))
    assert [i.status for i in items(redis_client, s)] == ["CANCELED"]


def test_xo_renumbering_a_multi_obr_order_leaves_no_duplicates(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    """New OBR-19/OBR-20 in every OBR of an XO: the items are paired by OBR position
    and updated in place, never duplicated (review finding 2)."""
    two = [{}, {19: "RP2", 20: "SPS2", 18: "ACC2"}]
    run(redis_client, wsettings, orm(control_id="N", obrs=two))
    before = {i.attrs["AccessionNumber"]: i for i in items(redis_client, wsettings)}
    new = [{19: "RP1B", 20: "SPS1B"}, {19: "RP2B", 20: "SPS2B", 18: "ACC2"}]
    xo = orm(control="XO", status="SC", control_id="X", obrs=new, start="20260706090000")
    run(redis_client, wsettings, xo)
    after = items(redis_client, wsettings)
    date = "ScheduledProcedureStepStartDate"
    got = sorted((i.attrs["RequestedProcedureID"], i.status, i.sps[date]) for i in after)
    assert got == [("RP1B", "SCHEDULED", "20260706"), ("RP2B", "SCHEDULED", "20260706")]
    for it in after:
        old = before[it.attrs["AccessionNumber"]]
        assert it.item_id == old.item_id
        assert it.attrs["StudyInstanceUID"] == old.attrs["StudyInstanceUID"]


def test_xo_is_the_complete_order_dropped_procedure_is_discontinued(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    two = [{}, {19: "RP2", 20: "SPS2", 18: "ACC2"}]
    run(redis_client, wsettings, orm(control_id="N", obrs=two))
    run(redis_client, wsettings, orm(control="XO", status="SC", control_id="X", obrs=[{}]))
    assert statuses(redis_client, wsettings) == [
        ("RP1", "SCHEDULED", False), ("RP2", "DISCONTINUED", False)]  # fmt: skip
    assert redis_client.zcard(Keys().expiry) == 1
    # An order-level status change leaves the dropped procedure finished.
    run(redis_client, wsettings, orm(control="SC", status="IP", control_id="S"))
    assert [s[1] for s in statuses(redis_client, wsettings)] == ["STARTED", "DISCONTINUED"]
    assert redis_client.zcard(Keys().expiry) == 1
    # A new procedure at its old position is a new item, not the dropped one renamed.
    three = [{}, {19: "RP3", 20: "SPS3", 18: "ACC3"}]
    run(redis_client, wsettings, orm(control="XO", status="", control_id="X2", obrs=three))
    assert [s[:2] for s in statuses(redis_client, wsettings)] == [
        ("RP1", "STARTED"), ("RP2", "DISCONTINUED"), ("RP3", "SCHEDULED")]  # fmt: skip
    # An XO that lists it again puts it back on the worklist (and now drops RP3).
    run(redis_client, wsettings, orm(control="XO", status="", control_id="X3", obrs=two))
    assert [s[:2] for s in statuses(redis_client, wsettings)] == [
        ("RP1", "STARTED"), ("RP2", "SCHEDULED"), ("RP3", "DISCONTINUED")]  # fmt: skip
    assert redis_client.zcard(Keys().expiry) == 1


def test_xo_adding_a_procedure_to_a_held_order_stays_hidden(
    redis_client: redis.Redis, wsettings: Settings
) -> None:
    """Review finding 3: a new item of a held (HD) order is hidden like the others."""
    run(redis_client, wsettings, orm(control_id="A"), orm(control="HD", status="HD",
        control_id="B"))  # fmt: skip
    run(redis_client, wsettings, orm(control="XO", status="SC", control_id="C",
        obrs=[{}, {19: "RP2", 20: "SPS2", 18: "ACC2"}]))  # fmt: skip
    assert statuses(redis_client, wsettings) == [
        ("RP1", "SCHEDULED", True), ("RP2", "SCHEDULED", True)]  # fmt: skip
    run(redis_client, wsettings, orm(control="RL", status="SC", control_id="D"))
    assert [s[2] for s in statuses(redis_client, wsettings)] == [False, False]
