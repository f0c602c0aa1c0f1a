"""Order identity and message order as real RIS feeds behave (issue #11): an order is its
placer number with namespace (the filler number an alias), whatever interface a message
comes through; the sender's transaction time tells a late message from a new one; a
repeated NW never leaves two live items; and a store written by the previous release
keeps working. Every test runs real rq workers on a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from conftest import SAMPLES
from orm_builder import orm
from worker_helpers import items, run

from bridge.core import metrics
from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys
from bridge.worker import migrations


def _settings(redis_url: str, **kw: object) -> Settings:
    flags = {"redis.url": redis_url, "worker.worker_class": "simple",
             "worker.local_timezone": "UTC", **kw}  # fmt: skip
    return load_settings(flags, env={})


@pytest.fixture
def s(redis_url: str) -> Settings:
    return _settings(redis_url)


def state(client: redis.Redis, s: Settings) -> list[tuple[str, str, str, str]]:
    """(placer, RPID, SPS status, patient name) of every item, sorted."""
    return sorted(
        (i.attrs["PlacerOrderNumberImagingServiceRequest"], i.attrs["RequestedProcedureID"],
         i.status, i.attrs["PatientName"])
        for i in items(client, s)
    )  # fmt: skip


def anomalies(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("mwl_order_anomalies_total", {"kind": kind}) or 0.0


# -- identity ---------------------------------------------------------------------------


def test_xo_and_ca_through_another_interface_find_the_order(
    redis_client: redis.Redis, s: Settings
) -> None:
    """Engine failover: the NW came from RIS|HOSP, the XO from RIS2|HOSP and the CA from
    RIS|ANNEX. Today's code scoped orders by MSH-3/MSH-4: the XO and CA were 'unknown'
    and the exam stayed SCHEDULED in the old room."""
    run(redis_client, s, orm(control_id="N1"))
    run(redis_client, s, orm(control="XO", status="SC", control_id="X1", sender="RIS2",
                             station="CT_ROOM9"))  # fmt: skip
    (item,) = items(redis_client, s)
    assert item.sps["ScheduledStationAETitle"] == "CT_ROOM9"
    run(redis_client, s, orm(control="CA", status="CA", control_id="C1", facility="ANNEX"))
    assert [i.status for i in items(redis_client, s)] == ["CANCELED"]


def test_the_placer_namespace_is_part_of_the_order(redis_client: redis.Redis, s: Settings) -> None:
    """ORC-2 is an EI: 100^CARDIO and 100^ORTHO are two orders. Today's code read only
    EI.1, so the second NW overwrote the first patient's exam."""
    run(redis_client, s, orm(placer="100^CARDIO", filler="", control_id="A",
                             patient_name="ONE^ANNA"))  # fmt: skip
    run(redis_client, s, orm(placer="100^ORTHO", filler="", control_id="B",
                             patient_name="TWO^BERT"))  # fmt: skip
    assert [x[3] for x in state(redis_client, s)] == ["ONE^ANNA", "TWO^BERT"]
    assert redis_client.exists(Keys().order("P|100^CARDIO"), Keys().order("P|100^ORTHO")) == 2


def test_order_scope_sender_keeps_shared_numbers_apart(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "shared-numbers.yaml"
    site.write_text("extends: default\norder_scope: sender\n", encoding="utf-8")
    s = _settings(redis_url, **{"worker.mapping": str(site)})
    run(redis_client, s, orm(placer="7", filler="", control_id="A", sender="RISA",
                             patient_name="ONE^ANNA"))  # fmt: skip
    run(redis_client, s, orm(placer="7", filler="", control_id="B", sender="RISB",
                             patient_name="TWO^BERT"))  # fmt: skip
    run(redis_client, s, orm(control="CA", status="CA", placer="7", filler="", control_id="C",
                             sender="RISB"))  # fmt: skip
    assert [(x[2], x[3]) for x in state(redis_client, s)] == [
        ("CANCELED", "TWO^BERT"), ("SCHEDULED", "ONE^ANNA")]  # fmt: skip
    # The same setting in the global scope would have been one order.
    assert redis_client.exists(Keys().order("RISA^HOSP|P|7"), Keys().order("RISB^HOSP|P|7")) == 2


# -- out of order -----------------------------------------------------------------------


def test_ca_before_nw_leaves_a_tombstone_and_the_late_nw_is_cancelled(
    redis_client: redis.Redis, s: Settings
) -> None:
    """The CA overtook the NW (another interface). Today's code ignored the CA as an
    unknown order and the NW then created a SCHEDULED exam that was already cancelled."""
    before = anomalies("late_new_order"), anomalies("tombstone")
    run(redis_client, s, orm(control="CA", status="CA", control_id="C1",
                             orc9="20260705090000"))  # fmt: skip
    assert items(redis_client, s) == []
    assert redis_client.hget(Keys().order("P|PL1"), "tombstone") == b"1"
    ttl = redis_client.ttl(Keys().order("P|PL1"))
    assert ttl > s.worker.final_order_retention_s - 60
    run(redis_client, s, orm(control_id="N1", orc9="20260705080000"))  # sent before the CA
    assert [x[2] for x in state(redis_client, s)] == ["CANCELED"]
    assert redis_client.zcard(Keys().expiry) == 1  # purged after the retention
    assert (anomalies("late_new_order"), anomalies("tombstone")) == (before[0] + 1, before[1] + 1)


def test_xo_for_an_unseen_order_leaves_no_tombstone(redis_client: redis.Redis, s: Settings) -> None:
    run(redis_client, s, orm(control="XO", status="SC", control_id="X1"))
    assert redis_client.exists(Keys().order("P|PL1")) == 0
    run(redis_client, s, orm(control_id="N1"))
    assert [x[2] for x in state(redis_client, s)] == ["SCHEDULED"]


def test_orc9_decides_not_msh7(redis_client: redis.Redis, s: Settings) -> None:
    """The engine resent the NW a day later (MSH-7 later) but the order was placed (ORC-9)
    before it was cancelled: late, not new."""
    run(redis_client, s, orm(control_id="N1", orc9="20260705080000"),
        orm(control="CA", status="CA", control_id="C1", orc9="20260705090000"))  # fmt: skip
    run(redis_client, s, orm(control_id="N2", orc9="20260705080000", when="20260706080000"))
    assert [x[2] for x in state(redis_client, s)] == ["CANCELED"]


def test_a_later_nw_reuses_the_number_as_a_new_order(
    redis_client: redis.Redis, s: Settings
) -> None:
    """Months later the RIS gives the number to a new exam: a new order by default."""
    before = anomalies("reused_number_new")
    run(redis_client, s, orm(control_id="N1", orc9="20260105080000"),
        orm(control="CA", status="CA", control_id="C1", orc9="20260105090000"))  # fmt: skip
    run(redis_client, s, orm(control_id="N2", orc9="20260705080000", patient_name="NEW^NORA"))
    assert [(x[2], x[3]) for x in state(redis_client, s)] == [("SCHEDULED", "NEW^NORA")]
    assert anomalies("reused_number_new") == before + 1
    assert not redis_client.hget(Keys().order("P|PL1"), "final")
    run(redis_client, s, orm(control="CA", status="CA", control_id="C2", orc9="20260705090000"))
    assert [x[2] for x in state(redis_client, s)] == ["CANCELED"]


def test_reused_number_can_be_ignored(redis_client: redis.Redis, redis_url: str) -> None:
    s = _settings(redis_url, **{"worker.reused_order_number": "ignore"})
    before = anomalies("reused_number_ignored")
    run(redis_client, s, orm(control_id="N1", orc9="20260105080000"),
        orm(control="CA", status="CA", control_id="C1", orc9="20260105090000"),
        orm(control_id="N2", orc9="20260705080000", patient_name="NEW^NORA"))  # fmt: skip
    assert [(x[2], x[3]) for x in state(redis_client, s)] == [("CANCELED", "DOE^JOHN^Q^DR^JR PHD")]
    assert anomalies("reused_number_ignored") == before + 1


def test_without_transaction_times_a_nw_after_ca_stays_cancelled(
    redis_client: redis.Redis, s: Settings
) -> None:
    run(redis_client, s, orm(control_id="N1", when=""), orm(control="CA", status="CA",
        control_id="C1", when=""), orm(control_id="N2", when=""))  # fmt: skip
    assert [x[2] for x in state(redis_client, s)] == ["CANCELED"]


# -- repeated NW ------------------------------------------------------------------------


def test_repeated_nw_with_changed_procedures_is_an_update(
    redis_client: redis.Redis, s: Settings
) -> None:
    """Today's code created the new procedure beside the old one: two live items."""
    run(redis_client, s, orm(control_id="N1"))
    run(redis_client, s, orm(control_id="N2", obrs=[{19: "RP9", 20: "SPS9", 18: "ACC9"},
                                                    {19: "RP8", 20: "SPS8", 18: "ACC8"}]))
    got = state(redis_client, s)
    live = [x for x in got if x[2] == "SCHEDULED"]
    assert sorted(x[1] for x in live) == ["RP8", "RP9"]
    assert len(got) == 2  # RP1 was renumbered in place (same OBR position), not duplicated


def test_repeated_nw_can_be_rejected(redis_client: redis.Redis, redis_url: str) -> None:
    s = _settings(redis_url, **{"worker.repeated_new_order": "reject"})
    first, second = run(redis_client, s, orm(control_id="N1"), orm(control_id="N2"),
                        ack_mode="application")  # fmt: skip
    k = Keys()
    assert json.loads(redis_client.lpop(k.result(first)))["ok"] is True
    verdict = json.loads(redis_client.lpop(k.result(second)))
    assert (verdict["ok"], verdict["code"], verdict["location"]) == (False, 205, "ORC-2")
    letter = deadletter.get(redis_client, k, second)
    assert letter is not None and letter.code == 205
    assert [x[2] for x in state(redis_client, s)] == ["SCHEDULED"]


# -- application ACK --------------------------------------------------------------------


def test_application_verdict_only_once_the_items_are_written(
    redis_client: redis.Redis, s: Settings
) -> None:
    """Today's worker pushed AA as soon as the message was mapped, before it was applied:
    a C-FIND right after the AA could miss the order. Here the message behind an
    unparsed head is parsed first: no verdict until the line reaches it."""
    from intake_helpers import submit
    from rq import Queue

    from bridge.worker import rq_worker as workers

    head = submit(redis_client, s, orm(placer="HEAD", filler="", control_id="H").encode())
    mid = submit(redis_client, s, orm(placer="BEHIND", filler="", control_id="B").encode(),
                 ack_mode="application")  # fmt: skip
    ctx = workers.install(s, redis_client)
    Queue(ctx.keys.queue_name(), connection=redis_client).empty()
    assert ctx.sequencer.process(mid) == "parsed"
    assert redis_client.llen(ctx.keys.result(mid)) == 0  # mapped, not applied: no verdict
    assert items(redis_client, s) == []
    ctx.sequencer.process(head)
    assert json.loads(redis_client.lpop(ctx.keys.result(mid)))["ok"] is True
    assert len(items(redis_client, s)) == 2
    stored = json.loads(redis_client.hget(ctx.keys.message(mid), "verdict"))
    assert stored["ok"] is True  # kept with the message to answer a resend


@pytest.mark.parametrize("control,status", [("XO", "SC"), ("CA", "CA"), ("DC", "DC")])
def test_change_for_an_unknown_order_is_ae_204(
    redis_client: redis.Redis, s: Settings, control: str, status: str
) -> None:
    """Today's code answered AA and logged 'order.unknown'."""
    (mid,) = run(redis_client, s, orm(control=control, status=status, control_id="U"),
                 ack_mode="application")  # fmt: skip
    verdict = json.loads(redis_client.lpop(Keys().result(mid)))
    assert (verdict["ok"], verdict["code"], verdict["location"]) == (False, 204, "ORC-2")
    assert deadletter.count(redis_client, Keys()) == 0  # nothing lost: nothing to keep


# -- upgrade of a store written by the previous release ---------------------------------


def load_store(client: redis.Redis, path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    pipe = client.pipeline()
    for key, entry in doc["keys"].items():
        kind, value = entry["type"], entry["value"]
        if kind == "string":
            pipe.set(key, value)
        elif kind == "hash":
            pipe.hset(key, mapping=value)
        elif kind == "set":
            pipe.sadd(key, *value)
        elif kind == "zset":
            pipe.zadd(key, {m: sc for m, sc in value})
        elif kind == "list":
            pipe.rpush(key, *value)
        if entry["ttl"] > 0:
            pipe.expire(key, entry["ttl"])
    pipe.execute()


def test_store_written_by_the_previous_release_keeps_working(
    redis_client: redis.Redis, s: Settings
) -> None:
    """tests/samples/store_written_by_e69e4ae.json: orders the flat release stored under
    '<sender>|P|<number>'. After the upgrade every order is found through any interface,
    items keep their ids and UIDs, nothing is duplicated, the cancelled order stays
    cancelled, and a number two senders shared stays matched by sender."""
    load_store(redis_client, SAMPLES / "store_written_by_e69e4ae.json")
    before = {i.item_id: i for i in items_of(redis_client)}
    assert len(before) == 6
    assert migrations.current(redis_client, Keys()) == 1
    # An XO from another interface for LEG1 (placer now with its namespace), a CA by the
    # filler number for LEG2 through a third sender, an NW for the cancelled LEG3.
    run(redis_client, s,
        orm(control="XO", status="SC", placer="LEG1^RIS", filler="LF1", control_id="U1",
            sender="RIS2", zds=None, obrs=[{}, {19: "RP2", 20: "SPS2", 18: "ACC2"}],
            station="CT_ROOM7"),
        orm(control="RL", status="SC", placer="LEG2", filler="", control_id="U2", sender="X"),
        orm(placer="LEG3", filler="LF3", control_id="U3", sender="RIS3"),
        orm(control="XO", status="SC", placer="DUP1", filler="", control_id="U4",
            sender="RISB", station="MR_ROOM2", patient_name="BRAVO^BOB"))  # fmt: skip
    assert migrations.current(redis_client, Keys()) == migrations.SCHEMA_VERSION
    after = {i.item_id: i for i in items_of(redis_client)}
    assert set(after) == set(before)  # no item re-keyed, none added
    by_placer = {(i.attrs["PlacerOrderNumberImagingServiceRequest"],
                  i.attrs["RequestedProcedureID"]): i for i in after.values()}  # fmt: skip
    for rp in ("RP1", "RP2"):
        leg1 = by_placer[("LEG1", rp)]
        assert leg1.sps["ScheduledStationAETitle"] == "CT_ROOM7"
        assert leg1.attrs["StudyInstanceUID"] == before[leg1.item_id].attrs["StudyInstanceUID"]
    assert not by_placer[("LEG2", "RP1")].hidden  # released through the alias
    assert by_placer[("LEG3", "RP1")].status == "CANCELED"
    dup = {i.attrs["PatientName"]: i for i in after.values()
           if i.attrs["PlacerOrderNumberImagingServiceRequest"] == "DUP1"}  # fmt: skip
    assert dup["BRAVO^BOB"].sps["ScheduledStationAETitle"] == "MR_ROOM2"
    assert dup["ALPHA^ANN"].sps["ScheduledStationAETitle"] == "CT_ROOM1"
    assert redis_client.hget(Keys().order("P|DUP1"), "ambiguous") == b"1"
    assert deadletter.count(redis_client, Keys()) == 0
    # Running the upgrade again changes nothing.
    assert migrations.upgrade(redis_client, Keys()) == 0


def items_of(client: redis.Redis) -> list:  # type: ignore[type-arg]
    from bridge.store.worklist_store import WorklistStore

    keys = Keys()
    store = WorklistStore(client, keys)
    return list(store.load(sorted(m.decode() for m in client.zrange(keys.index_start, 0, -1))))
