"""The worklist store on a real Redis: atomic writes, index upkeep, candidate planning."""

from __future__ import annotations

import json

import pytest
import redis

from bridge.core.errors import StoreUnavailable
from bridge.store.item import SPS, WorklistItem
from bridge.store.worklist_store import (
    CandidateQuery,
    FenceLost,
    OrderRelease,
    Removed,
    WorklistStore,
)


def make_item(
    n: int,
    date: str = "20260705",
    time: str = "101500",
    station: str | list[str] = "CT1",
    modality: str = "CT",
    pid: str = "P1",
    status: str = "SCHEDULED",
    order: str = "",
) -> WorklistItem:
    return WorklistItem(
        item_id=f"it{n}",
        order_key=order or f"ord{n}",
        attrs={
            "PatientName": "DOE^JANE",
            "PatientID": pid,
            "AccessionNumber": f"ACC{n}",
            "RequestedProcedureID": f"RP{n}",
            "StudyInstanceUID": f"1.2.3.{n}",
            SPS: [
                {
                    "ScheduledStationAETitle": station,
                    "ScheduledProcedureStepStartDate": date,
                    "ScheduledProcedureStepStartTime": time,
                    "Modality": modality,
                    "ScheduledProcedureStepID": f"SPS{n}",
                    "ScheduledProcedureStepStatus": status,
                }
            ],
        },
    )  # fmt: skip


def ids(items) -> set[str]:
    return {i.item_id for i in items}


def test_upsert_roundtrip_keeps_unicode(store: WorklistStore) -> None:
    item = make_item(1)
    item.attrs["PatientName"] = "MÜLLER^JÜRGEN"
    store.upsert(item)
    got = store.get("it1")
    assert got is not None
    assert got.attrs["PatientName"] == "MÜLLER^JÜRGEN"
    assert got.start_key == 20260705101500


def test_update_moves_item_between_indexes(store: WorklistStore, redis_client, keys) -> None:
    store.upsert(make_item(1, station="CT1", modality="CT"))
    store.upsert(make_item(1, station="MR1", modality="MR", date="20260706"))
    assert store.ids_for("station", "CT1") == []
    assert store.ids_for("station", "MR1") == ["it1"]
    assert store.ids_for("modality", "CT") == []
    assert redis_client.zscore(keys.index_start, "it1") == 20260706101500
    assert not redis_client.exists(keys.index("station", "CT1"))


def test_delete_removes_item_and_every_index(store: WorklistStore, redis_client, keys) -> None:
    store.upsert(make_item(1))
    store.delete(["it1"])
    assert store.get("it1") is None
    assert redis_client.keys(f"{keys.prefix}:*") == []


def test_multivalued_station_is_indexed_per_value(store: WorklistStore) -> None:
    store.upsert(make_item(1, station=["AA32", "AA33"]))
    assert store.ids_for("station", "AA32") == ["it1"]
    assert store.ids_for("station", "AA33") == ["it1"]


def test_candidates_and_range_and_exclusion(store: WorklistStore) -> None:
    store.upsert(make_item(1, date="20260705", modality="CT"))
    store.upsert(make_item(2, date="20260706", modality="CT"))
    store.upsert(make_item(3, date="20260706", modality="MR"))
    store.upsert(make_item(4, date="20260706", modality="CT", status="COMPLETED"))
    day = CandidateQuery(start_min=20260706000000, start_max=20260706235959)
    assert set(store.candidate_ids(day)) == {"it2", "it3", "it4"}
    q = CandidateQuery(
        equals={"modality": ("CT",)},
        exclude={"status": ("COMPLETED", "CANCELED")},
        start_min=20260706000000,
        start_max=20260706235959,
    )
    assert store.candidate_ids(q) == ["it2"]
    either = CandidateQuery(equals={"modality": ("CT", "MR")}, start_min=20260706000000)
    assert set(store.candidate_ids(either)) == {"it2", "it3", "it4"}
    assert store.candidate_ids(CandidateQuery(equals={"pid": ("nobody",)})) == []
    assert store.candidate_ids(CandidateQuery(equals={"modality": ()})) == []
    assert set(store.candidate_ids(CandidateQuery())) == {"it1", "it2", "it3", "it4"}


def test_range_driven_plan_returns_start_order(store: WorklistStore) -> None:
    for n, t in enumerate(["120000", "080000", "100000"], start=1):
        store.upsert(make_item(n, time=t))
    ordered = store.candidate_ids(CandidateQuery(start_min=20260705000000))
    assert ordered == ["it2", "it3", "it1"]


def test_plan_loads_only_candidates(store: WorklistStore, redis_client) -> None:
    """A selective query must not read every item: count MGET'd keys via MONITOR-free stats."""
    for n in range(200):
        store.upsert(make_item(n, pid=f"P{n}"))
    redis_client.config_resetstat()
    found = list(store.find(CandidateQuery(equals={"pid": ("P7",)})))
    assert ids(found) == {"it7"}
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert "cmdstat_zrangebyscore" not in stats


def test_batch_apply_is_atomic_per_message(store: WorklistStore, redis_client, keys) -> None:
    store.apply(upserts=[make_item(1, order="o"), make_item(2, order="o")])
    store.apply(upserts=[make_item(3, order="o")], deletes=["it1", "it2"])
    assert store.ids_for("order", "o") == ["it3"]
    idx = json.loads(redis_client.get(keys.item_indexes("it3")))
    assert keys.index("order", "o") in idx


def test_expired_ids_are_bounded_and_soonest_first(store: WorklistStore) -> None:
    store.apply(upserts=[make_item(n) for n in range(1, 5)],
                expire_at={"it1": 300, "it2": 100, "it3": 200})  # fmt: skip
    assert store.expired_ids(now=99, limit=10) == []
    assert store.expired_ids(now=250, limit=10) == ["it2", "it3"]
    assert store.expired_ids(now=1000, limit=2) == ["it2", "it3"]


def test_remove_settles_the_orders_left_without_items(
    store: WorklistStore, redis_client: redis.Redis, keys
) -> None:
    """A finished order keeps its record (a TTL only if it had none); an open order's
    state and the aliases it lists get the open TTL; an order that still has items, and an
    alias now pointing elsewhere, are left alone."""
    store.apply(upserts=[make_item(1, order="done"), make_item(2, order="open"),
                         make_item(3, order="busy"), make_item(4, order="busy")])  # fmt: skip
    redis_client.hset(keys.order("done"), mapping={"final": "CANCELED", "canonical": "done"})
    redis_client.hset(keys.order("open"), mapping={"canonical": "open",
                                                   "aliases": '["F|1", "F|2"]'})  # fmt: skip
    redis_client.hset(keys.order("F|1"), "canonical", "open")
    redis_client.hset(keys.order("F|2"), "canonical", "someone-else")
    redis_client.hset(keys.order("busy"), "canonical", "busy")
    release = OrderRelease(("done", "open", "busy"), final_ttl_s=5000, open_ttl_s=700)
    removed = store.remove(["it1", "it2", "it3"], release=release)
    assert removed == Removed(items=3, order_states=3)
    assert 4990 < redis_client.ttl(keys.order("done")) <= 5000
    assert 690 < redis_client.ttl(keys.order("open")) <= 700
    assert 690 < redis_client.ttl(keys.order("F|1")) <= 700
    assert redis_client.ttl(keys.order("F|2")) == -1  # not this order's alias any more
    assert redis_client.ttl(keys.order("busy")) == -1  # it4 is still there
    assert store.get("it1") is None and store.ids_for("order", "busy") == ["it4"]
    # Removed again with open_ttl 0 (an operator's delete): the open order goes at once,
    # the finished order's record still stays until it expires.
    store.remove(["it4"], release=OrderRelease(("busy", "done"), 5000, 0))
    assert not redis_client.exists(keys.order("busy"))
    assert redis_client.exists(keys.order("done"))


def test_remove_fenced_writes_nothing_without_the_lock(
    store: WorklistStore, redis_client: redis.Redis, keys
) -> None:
    store.apply(upserts=[make_item(1, order="o")])
    redis_client.set(keys.apply_lock, "theirs")
    with pytest.raises(FenceLost):
        store.remove(["it1"], fence=(keys.apply_lock, "ours"),
                     release=OrderRelease(("o",), 10, 0))  # fmt: skip
    assert store.get("it1") is not None and store.ids_for("order", "o") == ["it1"]


def test_unreachable_redis_is_transient(keys) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    store = WorklistStore(dead, keys)
    with pytest.raises(StoreUnavailable):
        store.upsert(make_item(1))
    with pytest.raises(StoreUnavailable):
        store.candidate_ids(CandidateQuery())
