"""Worklist hygiene (issue #12): retention per final status from the last update, the idle
timeout for SCHEDULED and STARTED items, all in the workers' maintenance under the apply
lock; real rq workers, a real Redis and the real SCP. The clock is injected: "48 h later"
is a ``now`` handed to the maintenance step, never a sleep."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from orm_builder import orm
from scp_support import StartScp, find, mwl_query
from worker_helpers import items, run

from bridge.core import metrics
from bridge.core.codes import FINAL_SPS_STATUSES
from bridge.core.settings import Settings, WorkerSettings, load_settings
from bridge.ops.cli import main
from bridge.store.item import WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_worker
from bridge.worker.hygiene import PassResult
from bridge.worker.lifecycle import retention_s

H = 3600.0
K = Keys()


@pytest.fixture
def t0() -> float:
    """The moment the test's messages are applied (whole second, like the store's scores)."""
    return float(int(time.time()))


def worker_settings(redis_url: str, **worker: Any) -> Settings:
    flags = {"redis.url": redis_url, "worker.worker_class": "simple",
             "worker.local_timezone": "UTC"}  # fmt: skip
    flags.update({f"worker.{k}": v for k, v in worker.items()})
    return load_settings(flags, env={})


def at(t: float) -> Any:
    return lambda: t


def sweep(now: float) -> PassResult:
    """One maintenance step of the installed worker at ``now``."""
    result = rq_worker.maintenance(rq_worker.context(), now=now)
    assert result is not None, "the hygiene pass failed (see the log)"
    return result


def expired(status: str, action: str) -> float:
    labels = {"status": status, "action": action}
    return metrics.REGISTRY.get_sample_value("mwl_items_expired_total", labels) or 0.0


def visible(port: int) -> int:
    """How many items a modality's default query (every SPS, no status key) gets."""
    return len(find(port, mwl_query()).identifiers)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%d%H%M%S")


# -- retention per final status ---------------------------------------------------------


def test_every_final_status_has_its_own_retention() -> None:
    """A setting per final status, used as is; a final status without one (added to the
    codes later, or invented by a mapping) gets the longest: never kept forever, never
    purged at once."""
    values = {str(s): 1000 + n for n, s in enumerate(sorted(FINAL_SPS_STATUSES))}
    ws = WorkerSettings(**{f"retention_{s.lower()}_s": v for s, v in values.items()})
    assert {s: retention_s(ws, s) for s in values} == values
    assert retention_s(ws, "ABORTED") == max(values.values())


@pytest.mark.parametrize(
    "control,status,final,setting",
    [("SC", "CM", "COMPLETED", "retention_completed_s"),
     ("CA", "CA", "CANCELED", "retention_canceled_s"),
     ("DC", "CA", "DISCONTINUED", "retention_discontinued_s")],
)  # fmt: skip
def test_retention_per_status_from_the_last_update(
    redis_client: redis.Redis, redis_url: str, t0: float,
    control: str, status: str, final: str, setting: str,
) -> None:  # fmt: skip
    """Each final status waits its own delay (the other two are set far off, so a wrong
    pick fails), counted from the item's last update; then the item goes with its index
    entries and the order keeps its final record, with the TTL it already had."""
    retention = {"retention_completed_s": 7 * 86400, "retention_canceled_s": 8 * 86400,
                 "retention_discontinued_s": 9 * 86400, setting: 5000}  # fmt: skip
    s = worker_settings(redis_url, **retention)
    run(redis_client, s, orm(), clock=at(t0))
    run(redis_client, s, orm(control=control, status=status), clock=at(t0 + 100))
    assert [it.status for it in items(redis_client, s)] == [final]
    before = expired(final, "purged")
    assert not sweep(t0 + 100 + 4999).purged
    assert sweep(t0 + 100 + 5000).purged == {final: 1}
    assert items(redis_client, s) == []
    assert redis_client.keys(f"{K.prefix}:idx:*") == []  # no index entry left behind
    assert redis_client.zcard(K.expiry) == 0
    assert expired(final, "purged") == before + 1
    order_ttl = redis_client.ttl(K.order("P|PL1"))
    assert order_ttl > s.worker.final_order_retention_s - 120  # still stops a late NW
    assert json.loads(redis_client.hget(K.hygiene, "purged:" + final) or b"0") == 1


def test_retention_is_rearmed_by_every_update(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """A late NW (sent before the CA) rewrites the cancelled items 2 h later: their
    retention starts again from that update."""
    s = worker_settings(redis_url, retention_canceled_s=3 * 3600)
    run(redis_client, s, orm(control_id="N1"), orm(control="CA", status="CA", control_id="C1"),
        clock=at(t0))  # fmt: skip
    run(redis_client, s, orm(control_id="N2"), clock=at(t0 + 2 * H))  # late: MSH-7 not later
    (item,) = items(redis_client, s)
    assert item.status == "CANCELED" and item.updated_at == t0 + 2 * H
    assert not sweep(t0 + 3 * H + 60).purged  # the first arming would have purged it here
    assert sweep(t0 + 5 * H).purged == {"CANCELED": 1}


def test_an_expiry_entry_on_a_live_item_never_deletes_it(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    s = worker_settings(redis_url)
    run(redis_client, s, orm(), clock=at(t0))
    (item,) = items(redis_client, s)
    redis_client.zadd(K.expiry, {item.item_id: t0})  # by hand, or by a bug
    assert not sweep(t0 + 60).purged
    assert [it.item_id for it in items(redis_client, s)] == [item.item_id]
    assert redis_client.zcard(K.expiry) == 0


# -- idle timeout -----------------------------------------------------------------------


def test_idle_scheduled_is_hidden_then_purged(
    redis_client: redis.Redis, redis_url: str, t0: float, start_scp: StartScp
) -> None:
    """SCHEDULED 24 h after the later of its start (long past here) and its creation:
    hidden from C-FIND, kept idle_hidden_retention_s, then purged; the order's state
    (not final) then expires like that of any order without items."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24, idle_action="hide",
                        idle_hidden_retention_s=3 * 86400)  # fmt: skip
    run(redis_client, s, orm(start="20260105101500"), clock=at(t0))
    port = start_scp().port
    assert visible(port) == 1
    assert not sweep(t0 + 24 * H - 60).idle  # counted from the creation, not the start
    assert visible(port) == 1
    hidden_before = expired("SCHEDULED", "hidden")
    assert sweep(t0 + 24 * H).idle == {("SCHEDULED", "hidden"): 1}
    assert visible(port) == 0
    (item,) = items(redis_client, s)
    assert item.hidden and item.status == "SCHEDULED"
    assert item.idle == {"action": "hide", "at": t0 + 24 * H, "status": "SCHEDULED",
                         "hidden": False}  # fmt: skip
    assert redis_client.zscore(K.expiry, item.item_id) == t0 + 24 * H + 3 * 86400
    assert expired("SCHEDULED", "hidden") == hidden_before + 1
    assert not sweep(t0 + 48 * H).idle  # acted on once
    assert sweep(t0 + 24 * H + 3 * 86400).purged == {"SCHEDULED": 1}
    assert items(redis_client, s) == []
    ttl = redis_client.ttl(K.order("P|PL1"))
    assert 0 < ttl <= s.worker.order_state_retention_s
    assert 0 < redis_client.ttl(K.order("F|FL1")) <= s.worker.order_state_retention_s


def test_idle_scheduled_can_be_discontinued(
    redis_client: redis.Redis, redis_url: str, t0: float, start_scp: StartScp
) -> None:
    s = worker_settings(redis_url, idle_scheduled_after_h=36, idle_action="discontinue",
                        retention_discontinued_s=7200)  # fmt: skip
    run(redis_client, s, orm(), clock=at(t0))
    port = start_scp().port
    assert sweep(t0 + 36 * H).idle == {("SCHEDULED", "discontinued"): 1}
    assert visible(port) == 0  # DISCONTINUED is in scp.hide_statuses
    asked = find(port, mwl_query(ScheduledProcedureStepStatus="DISCONTINUED")).identifiers
    assert len(asked) == 1  # a query on the status still sees what happened
    (item,) = items(redis_client, s)
    assert item.status == "DISCONTINUED" and not item.hidden
    assert redis_client.zscore(K.expiry, item.item_id) == t0 + 36 * H + 7200
    assert sweep(t0 + 36 * H + 7200).purged == {"DISCONTINUED": 1}


def test_idle_action_none_logs_and_counts_once(
    redis_client: redis.Redis, redis_url: str, t0: float, start_scp: StartScp,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    s = worker_settings(redis_url, idle_scheduled_after_h=24, idle_action="none")
    run(redis_client, s, orm(), clock=at(t0))
    before = expired("SCHEDULED", "none")
    with caplog.at_level("INFO", logger="bridge.worker.hygiene"):
        assert sweep(t0 + 25 * H).idle == {("SCHEDULED", "none"): 1}
    (item,) = items(redis_client, s)
    logged = [r for r in caplog.records if r.name == "bridge.worker.hygiene"]
    assert [r.getMessage() for r in logged] == ["worklist.idle"]
    assert logged[0].fields["item"] == item.item_id  # type: ignore[attr-defined]
    assert visible(start_scp().port) == 1
    assert item.status == "SCHEDULED" and not item.hidden and item.updated_at == t0
    assert redis_client.zcard(K.expiry) == 0
    again = sweep(t0 + 50 * H)
    assert not again.idle and again.loaded == 0  # the mark keeps it out of the candidates
    assert expired("SCHEDULED", "none") == before + 1


def test_items_flagged_in_a_trial_run_are_acted_on_once_the_action_changes(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """Try ``none`` first, then switch to ``hide``: the flagged items are not exempt."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24, idle_action="none")
    run(redis_client, s, orm(), clock=at(t0))
    assert sweep(t0 + 25 * H).idle == {("SCHEDULED", "none"): 1}
    s = worker_settings(redis_url, idle_scheduled_after_h=24, idle_action="hide")
    rq_worker.install(s, redis_client)
    assert sweep(t0 + 26 * H).idle == {("SCHEDULED", "hidden"): 1}
    (item,) = items(redis_client, s)
    assert item.hidden and item.idle is not None and item.idle["action"] == "hide"
    assert not sweep(t0 + 27 * H).idle


def test_idle_scheduled_counts_from_a_later_start(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """Booked days ahead: the idle time starts at the SPS start (local time), not when
    the order came."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24)
    run(redis_client, s, orm(start=local_ts(t0 + 48 * H)), clock=at(t0))
    assert not sweep(t0 + 71 * H).idle
    assert sweep(t0 + 72 * H).idle == {("SCHEDULED", "hidden"): 1}


def test_idle_scheduled_in_the_local_zone(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """The SPS start is local time (worker.local_timezone): 10:00 in Sydney is 23:00 or
    00:00 UTC the day before, so the idle time is reached 10-11 hours earlier than if the
    start were read as UTC."""
    zone = "Australia/Sydney"
    s = worker_settings(redis_url, idle_scheduled_after_h=1, local_timezone=zone)
    start = datetime.fromtimestamp(t0 + 100 * H, UTC).strftime("%Y%m%d") + "100000"
    run(redis_client, s, orm(start=start), clock=at(t0))
    naive = datetime.strptime(start, "%Y%m%d%H%M%S")
    local = naive.replace(tzinfo=ZoneInfo(zone)).timestamp()
    assert naive.replace(tzinfo=UTC).timestamp() - local >= 10 * H
    assert not sweep(local + 1 * H - 1).idle
    assert sweep(local + 1 * H).idle == {("SCHEDULED", "hidden"): 1}


def test_items_stored_without_a_creation_time_count_from_their_last_update(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """Items an earlier release stored have no ``created_at``: their last update stands
    in, which is never earlier than their creation."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24)
    run(redis_client, s, orm(), clock=at(t0))
    (item,) = items(redis_client, s)
    data = json.loads(item.to_json())
    del data["extra"]["created_at"]
    data["updated_at"] = t0 + 10 * H
    WorklistStore(redis_client, K).upsert(WorklistItem(**data))
    assert not sweep(t0 + 33 * H).idle
    assert sweep(t0 + 34 * H).idle == {("SCHEDULED", "hidden"): 1}


@pytest.mark.parametrize("action,label", [("hide", "hidden"), ("discontinue", "discontinued")])
def test_idle_started_counts_from_the_last_update(
    redis_client: redis.Redis, redis_url: str, t0: float, start_scp: StartScp,
    action: str, label: str,
) -> None:  # fmt: skip
    """The issue of MPPS: a STARTED item whose completion never came. Its idle time is
    its own (12 h here) and starts at its last update."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24, idle_started_after_h=12,
                        idle_action=action)  # fmt: skip
    run(redis_client, s, orm(), clock=at(t0))
    run(redis_client, s, orm(control="SC", status="IP"), clock=at(t0 + 20 * H))
    port = start_scp().port
    assert not sweep(t0 + 31 * H).idle  # SCHEDULED's 24 h since creation no longer apply
    assert sweep(t0 + 32 * H).idle == {("STARTED", label): 1}
    assert visible(port) == 0


@pytest.mark.parametrize(
    "action,follow_up,status,hidden",
    [
        # Rescheduled after the timeout: on the worklist again, no purge pending.
        ("hide", {"control": "XO", "status": "SC", "start": "20270105101500"}, "SCHEDULED", False),
        ("discontinue", {"control": "XO", "status": "SC"}, "SCHEDULED", False),
        # The patient came after all: the exam starts, it is not left DISCONTINUED.
        ("discontinue", {"control": "SC", "status": "IP"}, "STARTED", False),
        ("hide", {"control": "SC", "status": "IP"}, "STARTED", False),
        # The RIS holds or cancels it: that is what counts.
        ("hide", {"control": "HD", "status": "HD"}, "SCHEDULED", True),
        ("discontinue", {"control": "CA", "status": "CA"}, "CANCELED", False),
    ],
)
def test_the_next_ris_message_applies_as_if_the_timeout_had_not_acted(
    redis_client: redis.Redis, redis_url: str, t0: float,
    action: str, follow_up: dict[str, str], status: str, hidden: bool,
) -> None:  # fmt: skip
    s = worker_settings(redis_url, idle_scheduled_after_h=24, idle_action=action)
    run(redis_client, s, orm(), clock=at(t0))
    assert sweep(t0 + 24 * H).idle
    # Within retention_discontinued_s (600 s): the discontinued item is still there.
    later = t0 + 24 * H + 60
    run(redis_client, s, orm(**follow_up), clock=at(later))
    (item,) = items(redis_client, s)
    assert (item.status, item.hidden, item.idle) == (status, hidden, None)
    expected_expiry = None
    if status == "CANCELED":
        expected_expiry = later + s.worker.retention_canceled_s
    assert redis_client.zscore(K.expiry, item.item_id) == expected_expiry
    assert not redis_client.exists(K.index("idle", action))


def test_a_held_order_released_after_the_timeout_is_shown(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """Held by the RIS (HD), then idle: the RL shows it again."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24)
    run(redis_client, s, orm(), orm(control="HD", status="HD"), clock=at(t0))
    assert sweep(t0 + 24 * H).idle == {("SCHEDULED", "hidden"): 1}
    run(redis_client, s, orm(control="RL", status="SC"), clock=at(t0 + 25 * H))
    (item,) = items(redis_client, s)
    assert (item.status, item.hidden, item.idle) == ("SCHEDULED", False, None)


def test_off_by_default_nothing_changes(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    s = worker_settings(redis_url)
    assert (s.worker.idle_scheduled_after_h, s.worker.idle_started_after_h) == (0, 0)
    run(redis_client, s, orm(), orm(control="NW", status="IP", placer="PL2", filler="FL2"),
        clock=at(t0))  # fmt: skip
    before = {k: redis_client.get(k) for k in redis_client.keys(f"{K.prefix}:item:*")}

    def set_calls() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))

    sets = set_calls()
    result = sweep(t0 + 365 * 86400)
    assert (result.idle, result.purged, result.loaded, result.busy) == ({}, {}, 0, False)
    assert {k: redis_client.get(k) for k in before} == before
    assert set_calls() == sets  # nothing due: not even the apply lock was taken


# -- under the apply lock -----------------------------------------------------------------


def test_lock_busy_nothing_is_written_that_pass(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    s = worker_settings(redis_url, idle_scheduled_after_h=24)
    run(redis_client, s, orm(), orm(placer="PL3", filler="FL3"),
        orm(control="CA", status="CA", placer="PL3", filler="FL3"), clock=at(t0))  # fmt: skip
    redis_client.set(K.apply_lock, "a-worker-applying-a-run", px=30_000)
    redis_client.delete(K.head_watch)  # the stuck-head recovery's own note, not ours

    def snapshot() -> dict[bytes, bytes | None]:
        return {k: redis_client.dump(k) for k in redis_client.keys(f"{K.prefix}:*")}

    before = snapshot()
    result = sweep(t0 + 30 * 86400)
    assert result.busy and not result.purged and not result.idle and result.loaded == 0
    assert snapshot() == before
    assert redis_client.get(K.apply_lock) == b"a-worker-applying-a-run"  # not released by us
    redis_client.delete(K.apply_lock)
    result = sweep(t0 + 30 * 86400)  # the next pass does it
    assert result.purged == {"CANCELED": 1} and result.idle == {("SCHEDULED", "hidden"): 1}
    assert not redis_client.exists(K.apply_lock)


def test_an_outcome_stored_during_a_pass_is_applied_after_it(
    redis_client: redis.Redis, redis_url: str, t0: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that parses a message while the pass holds the lock finds the lock busy
    and leaves; the pass's release sees the parsed head and the maintenance step drains:
    no wake-up is lost, and the hygiene never writes inside a run."""
    from intake_helpers import submit

    s = worker_settings(redis_url, idle_scheduled_after_h=24)
    run(redis_client, s, orm(), clock=at(t0))
    ctx = rq_worker.context()
    message = submit(redis_client, s, orm(control="XO", status="SC", station="CT_ROOM9")
                     .encode())  # fmt: skip
    purge = ctx.hygiene._purge

    def parse_meanwhile(*args: Any) -> None:
        ctx.sequencer.process(message)  # under the pass's lock: stored, not applied
        assert redis_client.llen(K.ingest_order) == 1
        purge(*args)

    monkeypatch.setattr(ctx.hygiene, "_purge", parse_meanwhile)
    result = sweep(t0 + 12 * H)
    assert result.head_parsed
    assert redis_client.llen(K.ingest_order) == 0
    (item,) = items(redis_client, s)
    assert item.sps["ScheduledStationAETitle"] == "CT_ROOM9"


# -- candidates through the indexes -------------------------------------------------------


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every item id the store loads (``WorklistStore.load_raw``, which ``load`` uses)."""
    seen: list[str] = []
    original = WorklistStore.load_raw

    def counting(self: WorklistStore, ids: list[str]) -> Any:
        seen.extend(ids)
        return original(self, ids)

    monkeypatch.setattr(WorklistStore, "load_raw", counting)
    yield seen


def test_candidates_come_from_the_indexes_not_from_loading_every_item(
    redis_client: redis.Redis, redis_url: str, t0: float, loads: list[str]
) -> None:
    """60 exams booked ahead, 10 long STARTED ones when only SCHEDULED times out, and 5
    stale: a pass loads the 5 and no other, at most hygiene_batch_size acted on each."""
    s = worker_settings(redis_url, idle_scheduled_after_h=24, hygiene_batch_size=2)
    ahead = local_ts(t0 + 10 * 86400)
    messages = [orm(placer=f"A{n}", filler=f"FA{n}", start=ahead) for n in range(60)]
    messages += [orm(placer=f"S{n}", filler=f"FS{n}", status="IP") for n in range(10)]
    messages += [orm(placer=f"O{n}", filler=f"FO{n}") for n in range(5)]
    run(redis_client, s, *messages, clock=at(t0))
    stale = {it.item_id for it in items(redis_client, s)
             if it.attrs["PlacerOrderNumberImagingServiceRequest"].startswith("O")}  # fmt: skip
    loads.clear()
    done: list[PassResult] = [sweep(t0 + 25 * H) for _ in range(4)]
    assert [sum(r.idle.values()) for r in done] == [2, 2, 1, 0]
    assert sorted(loads) == sorted(stale)  # each loaded once: marked items drop out


# -- metrics and status ---------------------------------------------------------------------


def test_status_json_shows_settings_in_effect_and_counts(
    redis_client: redis.Redis, redis_url: str, t0: float, capsys: pytest.CaptureFixture[str]
) -> None:
    s = worker_settings(redis_url, idle_scheduled_after_h=48, idle_started_after_h=12,
                        idle_action="discontinue", retention_completed_s=7200)  # fmt: skip
    # Before any worker reported, status shows its own configuration and says so.
    assert main(["status", "--redis-url", redis_url, "--json"]) == 0
    h = json.loads(capsys.readouterr().out)["hygiene"]
    assert h["settings_source"] == "this command" and h["settings"]["idle_action"] == "hide"
    run(redis_client, s, orm(), orm(control="SC", status="CM"),
        orm(placer="PL2", filler="FL2"), orm(placer="PL3", filler="FL3"), clock=at(t0))  # fmt: skip
    assert sweep(t0 + 7200).purged == {"COMPLETED": 1}
    assert sweep(t0 + 48 * H).idle == {("SCHEDULED", "discontinued"): 2}
    assert main(["status", "--redis-url", redis_url, "--json"]) == 0
    h = json.loads(capsys.readouterr().out)["hygiene"]
    assert h["settings_source"] == "workers"
    assert h["settings"]["retention_s"] == {"CANCELED": 600, "COMPLETED": 7200,
                                            "DISCONTINUED": 600}  # fmt: skip
    assert (h["settings"]["idle_scheduled_after_h"], h["settings"]["idle_started_after_h"],
            h["settings"]["idle_action"]) == (48, 12, "discontinue")  # fmt: skip
    assert h["done"] == {"purged": {"COMPLETED": 1}, "hidden": {},
                         "discontinued": {"SCHEDULED": 2}, "none": {}}  # fmt: skip
    assert h["waiting"]["total"] == 2 and h["waiting"]["by_status"]["DISCONTINUED"] == 2
    assert h["waiting"]["overdue"] == 0  # due 48 h from now by the wall clock
    assert h["waiting"]["next_at"] == iso(t0 + 48 * H + 600)
    assert h["idle_marked"] == {"hide": 0, "discontinue": 2, "none": 0}
    assert h["since"] == iso(t0 + 7200)
    assert main(["status", "--redis-url", redis_url]) == 0
    text = capsys.readouterr().out
    assert "retention after the last update: CANCELED 10m, COMPLETED 2h, DISCONTINUED 10m" in text
    assert "idle timeout: SCHEDULED 2d, STARTED 12h; action discontinue" in text
    assert "discontinued SCHEDULED 2" in text and "purged COMPLETED 1" in text
    assert "waiting for purge 2 (DISCONTINUED 2), overdue 0" in text


def test_the_upgrade_lists_the_aliases_of_orders_stored_before(
    redis_client: redis.Redis, redis_url: str, t0: float
) -> None:
    """Orders stored before the canonical hash listed its aliases: the store upgrade
    (schema 3) lists them once, so that their purge releases the aliases too."""
    from bridge.worker import migrations

    s = worker_settings(redis_url, idle_scheduled_after_h=1)
    run(redis_client, s, orm(), clock=at(t0))
    redis_client.hdel(K.order("P|PL1"), "aliases")  # as the release before wrote it
    redis_client.hset(K.order("F|OTHER"), "canonical", "P|NOT-THIS-ONE")
    redis_client.set(K.schema, 2)
    migrations.upgrade(redis_client, K)
    assert json.loads(redis_client.hget(K.order("P|PL1"), "aliases") or b"") == ["F|FL1"]
    assert not redis_client.exists(K.order("P|NOT-THIS-ONE"))  # never created
    assert migrations.current(redis_client, K) == migrations.SCHEMA_VERSION
    assert sweep(t0 + 1 * H).idle
    assert sweep(t0 + 1 * H + s.worker.idle_hidden_retention_s).purged == {"SCHEDULED": 1}
    assert redis_client.ttl(K.order("F|FL1")) > 0


def test_worklist_list_and_show_say_what_the_timeout_did(
    redis_client: redis.Redis, redis_url: str, t0: float, capsys: pytest.CaptureFixture[str]
) -> None:
    s = worker_settings(redis_url, idle_scheduled_after_h=24)
    run(redis_client, s, orm(), orm(placer="PL2", filler="FL2"),
        orm(control="HD", status="HD", placer="PL2", filler="FL2"), clock=at(t0))  # fmt: skip
    assert sweep(t0 + 24 * H).idle == {("SCHEDULED", "hidden"): 2}  # held ones time out too
    capsys.readouterr()
    assert main(["worklist", "list", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.count("SCHEDULED (idle)") == 2
    shown = []
    for it in items(redis_client, s):
        assert main(["worklist", "show", it.item_id, "--redis-url", redis_url]) == 0
        shown += [line for line in capsys.readouterr().out.splitlines() if "idle" in line]
    when = iso(t0 + 24 * H)
    assert sorted(shown) == [f"# idle timeout: hide at {when} (was SCHEDULED)",
                             f"# idle timeout: hide at {when} (was SCHEDULED, held)"]  # fmt: skip
