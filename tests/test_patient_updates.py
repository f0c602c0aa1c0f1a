"""Patient updates and merges (issue #12; HL7 v2.5 ch. 3, IHE RAD-12 / ITI-30), applied
by real rq workers in ACK order with the orders, on a real Redis. The sample messages are
``tests/samples/adt/*.hl7`` (each names the HL7 clause it exercises)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import SAMPLES
from orm_builder import orm
from worker_helpers import items, run

from bridge.core import metrics
from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys

ADT = SAMPLES / "adt"


def _settings(redis_url: str, **kw: object) -> Settings:
    flags = {"redis.url": redis_url, "worker.worker_class": "simple",
             "worker.local_timezone": "UTC", **kw}  # fmt: skip
    return load_settings(flags, env={})


@pytest.fixture
def s(redis_url: str) -> Settings:
    return _settings(redis_url)


def adt(name: str) -> bytes:
    return (ADT / name).read_bytes()


def patient(client: redis.Redis, s: Settings) -> list[tuple[str, str, str, str, str]]:
    """(placer, Patient ID, name, location, status) of every item, sorted."""
    return sorted(
        (i.attrs["PlacerOrderNumberImagingServiceRequest"], i.attrs["PatientID"],
         i.attrs["PatientName"], i.attrs["CurrentPatientLocation"], i.status)
        for i in items(client, s)
    )  # fmt: skip


def counted(event: str, outcome: str) -> float:
    labels = {"event": event, "outcome": outcome}
    return metrics.REGISTRY.get_sample_value("mwl_patient_events_total", labels) or 0.0


def test_a08_updates_open_items_but_not_final_ones(redis_client: redis.Redis, s: Settings) -> None:
    """Today's listener answered ADT with AR 200 and the worklist kept the old name."""
    run(redis_client, s, orm(placer="O1", filler="", control_id="N1"),
        orm(placer="O2", filler="", control_id="N2"),
        orm(control="SC", status="CM", placer="O2", filler="", control_id="C2"))  # fmt: skip
    before = counted("A08", "updated")
    run(redis_client, s, adt("adt_a08_update_patient.hl7"))
    got = {x[0]: x for x in patient(redis_client, s)}
    assert got["O1"][2:] == ("DOE^JOHANNA^Q", "WARD7^702^1", "SCHEDULED")
    assert got["O2"][2:] == ("DOE^JOHN^Q^DR^JR PHD", "RAD^101^1", "COMPLETED")  # as performed
    (o1,) = [i for i in items(redis_client, s) if i.attrs["PlacerOrderNumberImagingServiceRequest"]
             == "O1"]  # fmt: skip
    assert (o1.attrs["PatientBirthDate"], o1.attrs["PatientSex"]) == ("19700102", "F")
    assert counted("A08", "updated") == before + 1


def test_a31_keeps_the_visit_and_a02_changes_only_the_visit(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1"))
    run(redis_client, s, adt("adt_a31_update_person.hl7"))
    assert patient(redis_client, s)[0][2:4] == ("DOE^JO", "RAD^101^1")  # placeholder PV1
    run(redis_client, s, adt("adt_a02_transfer.hl7"))
    assert patient(redis_client, s)[0][2:4] == ("DOE^JO", "ICU^1^1")  # PID not applied


def test_a40_moves_open_items_to_the_survivor_with_its_demographics(
    redis_client: redis.Redis, s: Settings
) -> None:
    dup = {"patient_id": "99999^^^HOSP", "patient_name": "DUP^JANE"}
    run(redis_client, s,
        orm(placer="M1", filler="", control_id="N1", **dup),
        orm(placer="M2", filler="", control_id="N2", **dup),
        orm(control="SC", status="CM", placer="M2", filler="", control_id="C2"),
        orm(placer="R1", filler="", control_id="N3", patient_id="77777^^^HOSP",
            patient_name="ROE^R"))  # fmt: skip
    run(redis_client, s, adt("adt_a40_merge_two_pairs.hl7"))
    got = {x[0]: x[1:] for x in patient(redis_client, s)}
    assert got["M1"][:2] == ("12345", "DOE^JOHANNA^Q")
    assert got["M2"][:2] == ("99999", "DUP^JANE")  # completed: kept as performed
    assert got["R1"][:2] == ("54321", "ROE^RICHARD")
    k = Keys()
    assert redis_client.hget(k.patient("HOSP|99999"), "survivor") == b"HOSP|12345"
    assert redis_client.hget(k.patient("HOSP|77777"), "survivor") == b"HOSP|54321"


def test_merge_is_recorded_without_items_and_later_orders_reach_the_survivor(
    redis_client: redis.Redis, s: Settings
) -> None:
    before = metrics.REGISTRY.get_sample_value(
        "mwl_order_anomalies_total", {"kind": "merged_patient_redirect"}) or 0.0  # fmt: skip
    (mid,) = run(redis_client, s, adt("adt_a34_merge_v23.hl7"), ack_mode="application")
    assert json.loads(redis_client.lpop(Keys().result(mid)))["ok"] is True  # AA, no items
    run(redis_client, s, orm(control_id="N1", patient_id="88888^^^HOSP"))
    assert [x[1] for x in patient(redis_client, s)] == ["12345"]
    after = metrics.REGISTRY.get_sample_value(
        "mwl_order_anomalies_total", {"kind": "merged_patient_redirect"})  # fmt: skip
    assert after == before + 1


def test_merges_chain(redis_client: redis.Redis, s: Settings) -> None:
    """88888 → 12345 (A34), then 12345 → 12399 (A47): an order for 88888 lands on 12399."""
    run(redis_client, s, adt("adt_a34_merge_v23.hl7"), adt("adt_a47_change_id.hl7"))
    run(redis_client, s, orm(control_id="N1", patient_id="88888^^^HOSP"))
    assert [x[1] for x in patient(redis_client, s)] == ["12399"]


def test_a47_changes_the_identifier_of_open_items(redis_client: redis.Redis, s: Settings) -> None:
    run(redis_client, s, orm(control_id="N1"))
    run(redis_client, s, adt("adt_a47_change_id.hl7"))
    assert patient(redis_client, s)[0][1] == "12399"


def test_a35_and_a_patient_without_items_are_aa_and_counted(
    redis_client: redis.Redis, s: Settings
) -> None:
    ignored, no_items = counted("A35", "ignored"), counted("A08", "no_items")
    a35, a08 = run(redis_client, s, adt("adt_a35_merge_account.hl7"),
                   adt("adt_a08_update_patient.hl7"), ack_mode="application")  # fmt: skip
    for mid in (a35, a08):
        assert json.loads(redis_client.lpop(Keys().result(mid)))["ok"] is True
    assert (counted("A35", "ignored"), counted("A08", "no_items")) == (ignored + 1, no_items + 1)
    assert deadletter.count(redis_client, Keys()) == 0


def _final(client: redis.Redis, s: Settings) -> list[dict[str, Any]]:
    out = []
    for it in items(client, s):
        doc = json.loads(it.to_json())
        doc.pop("updated_at")
        doc.pop("seq")
        doc["extra"].pop("created_at", None)  # wall-clock times of the two runs
        out.append(doc)
    return sorted(out, key=lambda d: d["item_id"])


def test_a40_between_nw_and_xo_equals_applying_them_one_by_one(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """NW (merged ID), A40, XO (still naming the merged ID): in one batch of runs, and
    each message alone. Both must end the same: the XO reaches the survivor's item."""
    s = _settings(redis_url, **{"worker.batch_size": 64})
    msgs = [orm(control_id="N1", patient_id="99999^^^HOSP", patient_name="DUP^JANE"),
            adt("adt_a40_merge_two_pairs.hl7"),
            orm(control="XO", status="SC", control_id="X1", patient_id="99999^^^HOSP",
                patient_name="DUP^JANE", station="CT_ROOM2")]  # fmt: skip
    run(redis_client, s, *msgs)
    together = _final(redis_client, s)
    redis_client.flushall()
    for m in msgs:
        run(redis_client, s, m)
    assert _final(redis_client, s) == together
    (item,) = together
    assert item["attrs"]["PatientID"] == "12345"
    assert item["attrs"]["ScheduledProcedureStepSequence"][0]["ScheduledStationAETitle"] == (
        "CT_ROOM2")  # fmt: skip


def test_adt_uses_the_mapping_of_its_sender(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The ADT sender ADT1|HOSP has its own file: its Patient ID comes from the issuer
    OTHER (PID-3 repetition 2), as for its orders."""
    site = tmp_path / "adt1.yaml"
    site.write_text("extends: default\nvars:\n  issuer: OTHER\n", encoding="utf-8")
    s = _settings(redis_url, **{"worker.sender_mappings": {"ADT1": str(site)}})
    run(redis_client, s, orm(control_id="N1", patient_id="555^^^OTHER"))
    raw = adt("adt_a08_update_patient.hl7").replace(
        b"12345^^^HOSP^MR", b"12345^^^HOSP^MR~555^^^OTHER")
    run(redis_client, s, raw)
    assert patient(redis_client, s)[0][1:3] == ("555", "DOE^JOHANNA^Q")
