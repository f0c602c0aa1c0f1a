"""MPPS status changes applied by the workers (issue #13): the SCP queues an internal
message in ingest order (``bridge.intake.submit.queue_internal``, here called as the SCP
does); real rq workers link it to items and change their SPS status, in ACK order with
the HL7 messages, on a real Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from orm_builder import orm
from worker_helpers import items, run

from bridge.core import metrics
from bridge.core.errors import ConfigError
from bridge.core.settings import Settings, load_settings
from bridge.intake.submit import INTERNAL_MPPS, queue_internal
from bridge.store.keys import Keys
from bridge.worker import rq_worker as workers

UID = "1.2.826.0.1.3680043.2.1125.9.1"
STUDY = "1.2.826.0.1.3680043.2.1125.1.1"
H = 3600.0


@pytest.fixture
def s(redis_url: str) -> Settings:
    return load_settings({"redis.url": redis_url, "worker.worker_class": "simple",
                          "worker.local_timezone": "UTC"}, env={})  # fmt: skip


def ref(rpid: str = "RP1", spsid: str = "SPS1", suid: str = STUDY, acc: str = "ACC1") -> dict:
    return {"StudyInstanceUID": suid, "RequestedProcedureID": rpid,
            "ScheduledProcedureStepID": spsid, "AccessionNumber": acc}  # fmt: skip


def mpps(
    client: redis.Redis,
    status: str,
    refs: list[dict],
    uid: str = UID,
    reason: str = "",
    patient_id: str = "12345",
    issuer: str = "HOSP",
) -> str:
    """Queue an MPPS change exactly as the SCP does (its instance hash included)."""
    keys = Keys()
    payload = {"kind": "mpps", "uid": uid, "event": "set", "status": status,
               "reason_code": reason, "refs": refs, "PatientID": patient_id,
               "IssuerOfPatientID": issuer, "calling_ae": "CT1", "at": time.time()}  # fmt: skip
    pipe = client.pipeline(transaction=True)
    pipe.multi()
    pipe.hset(keys.mpps(uid), mapping={"status": status, "refs": json.dumps(refs)})
    pipe.expire(keys.mpps(uid), 3600)
    mid = queue_internal(pipe, keys, INTERNAL_MPPS, payload, source="CT1",
                         control_id=f"{uid}:{status}", max_retries=3,
                         received_at=time.time())  # fmt: skip
    pipe.execute()
    return mid


def work(client: redis.Redis, s: Settings) -> None:
    run(client, s)  # no new HL7 message: just run the worker over what is queued


def statuses(client: redis.Redis, s: Settings) -> dict[str, str]:
    return {i.sps["ScheduledProcedureStepID"]: i.status for i in items(client, s)}


def two_procedures() -> str:
    return orm(control_id="N1", obrs=[{}, {19: "RP2", 20: "SPS2", 18: "ACC2"}])


def test_in_progress_completed_and_the_record(redis_client: redis.Redis, s: Settings) -> None:
    run(redis_client, s, two_procedures())
    mpps(redis_client, "IN PROGRESS", [ref()])
    work(redis_client, s)
    assert statuses(redis_client, s) == {"SPS1": "STARTED", "SPS2": "SCHEDULED"}
    mpps(redis_client, "COMPLETED", [ref()])
    work(redis_client, s)
    assert statuses(redis_client, s) == {"SPS1": "COMPLETED", "SPS2": "SCHEDULED"}
    record = redis_client.hgetall(Keys().mpps(UID))
    assert json.loads(record[b"items"]) == [i.item_id for i in items(redis_client, s)
                                             if i.sps["ScheduledProcedureStepID"] == "SPS1"]
    assert (record[b"applied_status"], record[b"unscheduled"]) == (b"COMPLETED", b"")
    assert 0 < redis_client.ttl(Keys().mpps(UID)) <= 3600  # the SCP's retention kept


def test_one_mpps_for_several_sps_and_accession_fallback(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, two_procedures())
    # The second reference names no Study UID match: found by its accession number.
    mpps(redis_client, "IN PROGRESS", [ref(), ref("X", "SPS2", "1.2.3.999", "ACC2")])
    work(redis_client, s)
    assert statuses(redis_client, s) == {"SPS1": "STARTED", "SPS2": "STARTED"}


def test_the_item_follows_the_latest_mpps(redis_client: redis.Redis, s: Settings) -> None:
    run(redis_client, s, orm(control_id="N1"))
    mpps(redis_client, "IN PROGRESS", [ref()], uid="1.2.3.1")
    mpps(redis_client, "COMPLETED", [ref()], uid="1.2.3.1")
    mpps(redis_client, "IN PROGRESS", [ref()], uid="1.2.3.2")  # appended by a second MPPS
    work(redis_client, s)
    (item,) = items(redis_client, s)
    assert (item.status, item.extra["mpps"]["uid"]) == ("STARTED", "1.2.3.2")


def test_wrong_worklist_entry_goes_back_to_scheduled(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    mpps(redis_client, "DISCONTINUED", [ref()], reason="110514")
    work(redis_client, s)
    (item,) = items(redis_client, s)
    assert item.status == "SCHEDULED" and "mpps" not in item.extra
    mpps(redis_client, "DISCONTINUED", [ref()], uid="1.2.3.3")  # any other reason
    work(redis_client, s)
    assert items(redis_client, s)[0].status == "DISCONTINUED"


def test_unscheduled_mpps_changes_nothing(redis_client: redis.Redis, s: Settings) -> None:
    run(redis_client, s, orm(control_id="N1"))
    before = metrics.REGISTRY.get_sample_value("mwl_mpps_applied_total",
                                               {"outcome": "unscheduled"}) or 0.0  # fmt: skip
    mpps(redis_client, "IN PROGRESS", [ref(rpid="", spsid="", acc="ACC1")])
    work(redis_client, s)
    assert items(redis_client, s)[0].status == "SCHEDULED"
    assert redis_client.hget(Keys().mpps(UID), "unscheduled") == b"1"
    after = metrics.REGISTRY.get_sample_value("mwl_mpps_applied_total", {"outcome": "unscheduled"})
    assert after == before + 1


def test_a_different_patient_id_is_flagged(redis_client: redis.Redis, s: Settings) -> None:
    run(redis_client, s, orm(control_id="N1"))
    before = metrics.REGISTRY.get_sample_value("mwl_mpps_patient_mismatch_total") or 0.0
    mpps(redis_client, "IN PROGRESS", [ref()], patient_id="OTHER")
    work(redis_client, s)
    (item,) = items(redis_client, s)
    assert json.loads(redis_client.hget(Keys().mpps(UID), "patient_mismatch")) == [item.item_id]
    assert metrics.REGISTRY.get_sample_value("mwl_mpps_patient_mismatch_total") == before + 1


def test_ris_xo_and_sc_do_not_override_mpps_but_ca_does(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    run(redis_client, s, orm(control="XO", status="SC", control_id="X1", station="CT_ROOM9"),
        orm(control="SC", status="SC", control_id="S1"))  # fmt: skip
    (item,) = items(redis_client, s)
    assert (item.status, item.sps["ScheduledStationAETitle"]) == ("STARTED", "CT_ROOM9")
    mpps(redis_client, "COMPLETED", [ref()])
    run(redis_client, s, orm(control="XO", status="", control_id="X2"))
    assert items(redis_client, s)[0].status == "COMPLETED"  # not scheduled again
    run(redis_client, s, orm(control="CA", status="CA", control_id="C1"))
    assert items(redis_client, s)[0].status == "CANCELED"


def test_mpps_after_a_ris_cancel_leaves_the_item_cancelled(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"), orm(control="CA", status="CA", control_id="C1"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    work(redis_client, s)
    assert items(redis_client, s)[0].status == "CANCELED"


# -- status messages back to the RIS (outbound.host set) ---------------------------------


@pytest.fixture
def out(redis_url: str) -> Settings:
    return load_settings({"redis.url": redis_url, "worker.worker_class": "simple",
                          "worker.local_timezone": "UTC", "outbound.host": "127.0.0.1",
                          "outbound.port": 9}, env={})  # fmt: skip


def sent(client: redis.Redis) -> list[dict[str, str]]:
    """The outbound records of every order, in line order: ORC-5 and the OBR-20s."""
    keys = Keys()
    messages = []
    for order in sorted(o.decode() for o in client.smembers(keys.outbound_pending)):
        for mid in client.lrange(keys.outbound_queue(order), 0, -1):
            record = client.hgetall(keys.outbound(mid.decode()))
            segments = record[b"raw"].decode().split("\r")
            orc = next(s for s in segments if s.startswith("ORC|")).split("|")
            obrs = [s.split("|") for s in segments if s.startswith("OBR|")]
            msh = segments[0].split("|")
            assert (record[b"state"], record[b"control_id"].decode()) == (b"pending", msh[9])
            messages.append({"order": order, "ORC-5": orc[5],
                             "SPS": ",".join(obr[20] for obr in obrs)})  # fmt: skip
    return messages


def test_status_messages_follow_the_order_status(redis_client: redis.Redis, out: Settings) -> None:
    run(redis_client, out, two_procedures())
    assert sent(redis_client) == []  # an order from the RIS is not echoed
    mpps(redis_client, "IN PROGRESS", [ref()])
    work(redis_client, out)
    assert [m["ORC-5"] for m in sent(redis_client)] == ["IP"]
    mpps(redis_client, "COMPLETED", [ref()])
    work(redis_client, out)
    # One SPS done, one still scheduled: the order stays IP, so nothing new goes out.
    assert [m["ORC-5"] for m in sent(redis_client)] == ["IP"]
    mpps(redis_client, "IN PROGRESS", [ref("RP2", "SPS2", acc="ACC2")], uid="1.2.3.9")
    mpps(redis_client, "COMPLETED", [ref("RP2", "SPS2", acc="ACC2")], uid="1.2.3.9")
    work(redis_client, out)
    messages = sent(redis_client)
    assert [m["ORC-5"] for m in messages] == ["IP", "CM"]
    assert messages[-1]["SPS"] == "SPS1,SPS2"  # one OBR per procedure step of the order
    # RIS changes afterwards are the RIS's own: never sent back to it.
    run(redis_client, out, orm(control="XO", status="", control_id="X9"))
    assert len(sent(redis_client)) == 2


def test_all_discontinued_is_dc_and_the_message_is_escaped(
    redis_client: redis.Redis, out: Settings
) -> None:
    run(redis_client, out, orm(control_id="N1", patient_name="O\\T\\Brien^Mary"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    mpps(redis_client, "DISCONTINUED", [ref()])
    work(redis_client, out)
    assert [m["ORC-5"] for m in sent(redis_client)] == ["IP", "DC"]
    keys = Keys()
    (order,) = (o.decode() for o in redis_client.smembers(keys.outbound_pending))
    first = redis_client.lindex(keys.outbound_queue(order), 0).decode()
    raw = redis_client.hget(keys.outbound(first), "raw").decode()
    assert "|O\\T\\Brien^Mary\r" in raw  # HL7-escaped, XPN component order


def test_no_outbound_host_writes_no_status_messages(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    work(redis_client, s)
    assert items(redis_client, s)[0].status == "STARTED"
    assert redis_client.scard(Keys().outbound_pending) == 0


def test_outbound_without_a_template_is_a_config_error(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("extends: default\nstatus_messages: null\n")
    s = load_settings({"redis.url": redis_url, "outbound.host": "127.0.0.1",
                       "worker.mapping": str(site)}, env={})  # fmt: skip
    with pytest.raises(ConfigError, match=r"outbound\.host") as err:
        workers.install(s, redis_client)
    assert "status_messages" in str(err.value)


# -- a reused order number inherits the old exam's MPPS status ----------------------
def test_reused_order_number_is_scheduled_not_left_completed(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1", orc9="20260105080000"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    mpps(redis_client, "COMPLETED", [ref()])
    work(redis_client, s)
    # The RIS closes the order (SC/CM = final:COMPLETED), months later reuses the number.
    run(redis_client, s, orm(control="SC", status="CM", control_id="S1", orc9="20260105090000"))
    run(redis_client, s, orm(control_id="N2", orc9="20260705080000", patient_name="NEW^NORA"))
    (item,) = items(redis_client, s)
    assert item.attrs["PatientName"].startswith("NEW^NORA")
    assert item.status == "SCHEDULED"


# -- out_status survives a reused order number: the new exam's IP is never sent -------
def test_reused_order_number_gets_its_own_status_messages(
    redis_client: redis.Redis, out: Settings
) -> None:
    run(redis_client, out, orm(control_id="N1", orc9="20260105080000"))
    mpps(redis_client, "IN PROGRESS", [ref()], uid="1.2.3.1")
    work(redis_client, out)
    run(redis_client, out, orm(control="CA", status="CA", control_id="C1", orc9="20260105090000"))
    run(redis_client, out, orm(control_id="N2", orc9="20260705080000"))
    assert items(redis_client, out)[0].status == "SCHEDULED"
    mpps(redis_client, "IN PROGRESS", [ref()], uid="1.2.3.2")
    work(redis_client, out)
    assert items(redis_client, out)[0].status == "STARTED"
    assert [m["ORC-5"] for m in sent(redis_client)] == ["IP", "IP"]


# -- the workers' HSET re-creates an expired MPPS instance, without a TTL -------------
def test_mpps_applied_after_the_instance_expired_leaves_no_orphan(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"))
    mpps(redis_client, "IN PROGRESS", [ref()])
    redis_client.delete(Keys().mpps(UID))  # expired (or replayed later)
    work(redis_client, s)
    assert items(redis_client, s)[0].status == "STARTED"
    key = Keys().mpps(UID)
    # No instance re-created from the workers' fields alone (no TTL, no attributes: the
    # SCP would answer 0111 to an N-CREATE of that UID and mpps show could not read it).
    assert not redis_client.exists(key) or redis_client.ttl(key) > 0


# -- an unscheduled reference beside a scheduled one is linked by accession ------------
def test_unscheduled_ref_in_a_mixed_mpps_changes_nothing(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, two_procedures())
    mpps(redis_client, "IN PROGRESS", [ref(), ref(rpid="", spsid="", suid="", acc="ACC2")])
    work(redis_client, s)
    assert statuses(redis_client, s) == {"SPS1": "STARTED", "SPS2": "SCHEDULED"}


# -- an older MPPS's final status overrides the newer one's COMPLETED -----------------
def test_older_mpps_discontinued_after_newer_completed(
    redis_client: redis.Redis, out: Settings
) -> None:
    run(redis_client, out, orm(control_id="N1"))
    mpps(redis_client, "IN PROGRESS", [ref()], uid="1.2.3.1")
    mpps(redis_client, "IN PROGRESS", [ref()], uid="1.2.3.2")  # appended
    mpps(redis_client, "COMPLETED", [ref()], uid="1.2.3.2")
    mpps(redis_client, "DISCONTINUED", [ref()], uid="1.2.3.1")  # the abandoned first one
    work(redis_client, out)
    assert items(redis_client, out)[0].status == "COMPLETED"
    assert [m["ORC-5"] for m in sent(redis_client)] == ["IP", "CM"]


# -- idle timeout: planned on the raw item, not ris_view ------------------------------
def test_idle_discontinued_sibling_does_not_complete_the_order(
    redis_client: redis.Redis, redis_url: str
) -> None:
    o = load_settings({"redis.url": redis_url, "worker.worker_class": "simple",
                       "worker.local_timezone": "UTC", "outbound.host": "127.0.0.1",
                       "outbound.port": 9, "worker.idle_scheduled_after_h": 36,
                       "worker.idle_action": "discontinue",
                       "worker.retention_discontinued_s": 7 * 86400}, env={})  # fmt: skip
    t0 = float(int(time.time()))
    run(redis_client, o, two_procedures(), clock=lambda: t0)
    mpps(redis_client, "IN PROGRESS", [ref()])
    run(redis_client, o, clock=lambda: t0 + 60)
    assert workers.maintenance(workers.context(), now=t0 + 36 * H).idle  # SPS2 idle
    assert statuses(redis_client, o) == {"SPS1": "STARTED", "SPS2": "DISCONTINUED"}
    mpps(redis_client, "COMPLETED", [ref()])
    run(redis_client, o, clock=lambda: t0 + 37 * H)
    # For the RIS SPS2 is still SCHEDULED (the timeout is the bridge's own hygiene):
    # the order is in progress, not complete.
    assert [m["ORC-5"] for m in sent(redis_client)] == ["IP"]


def test_mpps_on_an_idle_discontinued_item_is_applied(
    redis_client: redis.Redis, redis_url: str
) -> None:
    o = load_settings({"redis.url": redis_url, "worker.worker_class": "simple",
                       "worker.local_timezone": "UTC", "worker.idle_scheduled_after_h": 36,
                       "worker.idle_action": "discontinue",
                       "worker.retention_discontinued_s": 7 * 86400}, env={})  # fmt: skip
    t0 = float(int(time.time()))
    run(redis_client, o, orm(control_id="N1"), clock=lambda: t0)
    assert workers.maintenance(workers.context(), now=t0 + 36 * H).idle
    mpps(redis_client, "IN PROGRESS", [ref()])  # the modality had it from an earlier query
    run(redis_client, o, clock=lambda: t0 + 36 * H + 60)
    assert items(redis_client, o)[0].status == "STARTED"


def test_an_mpps_outcome_is_unreadable_as_an_order() -> None:
    """Rolling upgrade: a worker of an earlier release that meets an MPPS outcome stored by
    this one must fail to read it (a dead letter, replayable) rather than apply it as an
    empty order and acknowledge it; earlier releases iterate ``groups``."""
    from bridge.worker.mapping.apply import MappingResult
    from bridge.worker.rq_worker import _mpps_result

    payload = {"kind": "mpps", "uid": UID, "event": "create", "status": "IN PROGRESS",
               "reason_code": "", "refs": [ref()], "PatientID": "1", "IssuerOfPatientID": "",
               "calling_ae": "CT1", "at": 0.0}  # fmt: skip
    result = _mpps_result(json.dumps(payload).encode())
    stored = json.loads(json.dumps(result.to_dict()))
    assert stored["groups"] is None
    with pytest.raises(TypeError):
        [g for g in stored["groups"]]  # what an earlier release's from_dict does
    assert MappingResult.from_dict(stored).mpps == result.mpps  # this release reads it


def test_the_same_id_under_another_issuer_is_flagged(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"))  # 12345 issued by HOSP
    mpps(redis_client, "IN PROGRESS", [ref()], issuer="OTHER_HOSPITAL")
    work(redis_client, s)
    (item,) = items(redis_client, s)
    assert item.status == "STARTED"  # linked and applied all the same
    assert json.loads(redis_client.hget(Keys().mpps(UID), "patient_mismatch")) == [item.item_id]
