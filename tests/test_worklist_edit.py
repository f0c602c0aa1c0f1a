"""``worklist delete`` / ``purge`` take the workers' apply lock, write fenced by it,
release only their own lock, and remove the order state they leave behind. Orders are
made by the real workers (worker_helpers.run), so the state and alias hashes are the
ones the lifecycle writes, whatever their key format."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from orm_builder import orm
from worker_helpers import items
from worker_helpers import run as apply_messages

from bridge.core.settings import Settings
from bridge.ops import worklist_edit
from bridge.ops.cli import main
from bridge.store.keys import Keys
from bridge.store.worklist_store import FenceLost, WorklistStore


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def state_of(client: redis.Redis, keys: Keys, canonical: str) -> list[str]:
    """The order hashes (state and aliases) that name ``canonical`` in their field."""
    return sorted(
        name.decode()
        for name in client.scan_iter(match=keys.order("*"))
        if client.hget(name, "canonical") == canonical.encode()
    )


def item_ids_of(client: redis.Redis, settings: Settings, placer: str) -> list[str]:
    return sorted(
        it.item_id
        for it in items(client, settings)
        if it.attrs["PlacerOrderNumberImagingServiceRequest"] == placer
    )


def order_key(client: redis.Redis, settings: Settings, placer: str) -> str:
    (key,) = {
        it.order_key
        for it in items(client, settings)
        if it.attrs["PlacerOrderNumberImagingServiceRequest"] == placer
    }
    return key


def test_delete_and_purge_wait_for_the_apply_lock_and_give_up_when_kept(
    redis_client: redis.Redis, settings: Settings, keys: Keys, capsys
) -> None:
    """A worker holds the apply lock: the delete waits, and when the lock is never
    released it exits 1 having deleted nothing (today's code deleted at once, in the
    middle of the worker's run)."""
    apply_messages(redis_client, settings, orm(placer="A1", filler="AF1"))
    (iid,) = item_ids_of(redis_client, settings, "A1")
    url = settings.redis.url
    redis_client.set(keys.apply_lock, "a-worker", px=60_000)
    code, _, err = cli(capsys, "worklist", "delete", iid, "--redis-url", url, "--lock-wait", "0.3")
    assert code == 1 and "kept the apply lock" in err
    code, _, err = cli(capsys, "worklist", "purge", "--before", "29991231", "--redis-url", url,
                       "--lock-wait", "0.3")  # fmt: skip
    assert code == 1 and "kept the apply lock" in err
    assert item_ids_of(redis_client, settings, "A1") == [iid]
    assert redis_client.get(keys.apply_lock) == b"a-worker"

    # The worker finishes its run: the waiting delete goes ahead, then releases.
    threading.Timer(0.3, redis_client.delete, [keys.apply_lock]).start()
    started = time.monotonic()
    code, out, _ = cli(capsys, "worklist", "delete", iid, "--redis-url", url, "--lock-wait", "5")
    assert code == 0 and out.startswith(f"deleted {iid}")
    assert time.monotonic() - started >= 0.25
    assert item_ids_of(redis_client, settings, "A1") == []
    assert not redis_client.exists(keys.apply_lock)


def test_a_delete_whose_lock_expired_writes_nothing_and_frees_nobody_elses_lock(
    redis_client: redis.Redis, settings: Settings, keys: Keys
) -> None:
    apply_messages(redis_client, settings, orm(placer="B1", filler="BF1"))
    store = WorklistStore(redis_client, keys)
    (item,) = items(redis_client, settings)
    canonical = item.order_key
    with worklist_edit.apply_lock(redis_client, keys, ttl_s=30) as token:
        redis_client.set(keys.apply_lock, "a-worker-took-over")  # ours expired meanwhile
        with pytest.raises(FenceLost):
            worklist_edit.delete_items(store, [item], token, 86400)
    assert store.get(item.item_id) is not None
    assert state_of(redis_client, keys, canonical) != []
    assert redis_client.get(keys.apply_lock) == b"a-worker-took-over"  # not released by us


def test_deleting_an_orders_last_item_removes_its_state_and_alias_hashes(
    redis_client: redis.Redis, settings: Settings, keys: Keys, capsys
) -> None:
    """Today's code left the state hash (persisted while the order had items: forever)
    and its alias, so the order stayed "known" to later messages."""
    apply_messages(
        redis_client, settings,
        orm(placer="C1", filler="CF1", obrs=[{}, {}]),  # two procedures, two items
        orm(placer="C2", filler="CF2"),
    )  # fmt: skip
    canonical = order_key(redis_client, settings, "C1")
    other = state_of(redis_client, keys, order_key(redis_client, settings, "C2"))
    hashes = state_of(redis_client, keys, canonical)
    assert len(hashes) == 2  # its state and the alias of its second number
    first, second = item_ids_of(redis_client, settings, "C1")
    url = settings.redis.url

    code, out, _ = cli(capsys, "worklist", "delete", first, "--redis-url", url)
    assert (code, out.strip()) == (0, f"deleted {first}")
    assert state_of(redis_client, keys, canonical) == hashes  # an item is left

    code, out, _ = cli(capsys, "worklist", "delete", second, "--redis-url", url)
    assert code == 0
    assert out.splitlines() == [
        f"deleted {second}", "removed 2 order state record(s) left without items"
    ]
    assert state_of(redis_client, keys, canonical) == []
    assert all(not redis_client.exists(h) for h in hashes)
    assert state_of(redis_client, keys, order_key(redis_client, settings, "C2")) == other

    # The order is unknown now: a later XO changes nothing instead of recreating it.
    apply_messages(redis_client, settings, orm(control="XO", placer="C1", filler="CF1"))
    assert item_ids_of(redis_client, settings, "C1") == []


def test_a_finished_orders_record_is_kept_so_a_resent_nw_cannot_resurrect_it(
    redis_client: redis.Redis, settings: Settings, keys: Keys, capsys
) -> None:
    apply_messages(
        redis_client, settings,
        orm(placer="D1", filler="DF1"),
        orm(control="CA", status="CA", placer="D1", filler="DF1"),
    )  # fmt: skip
    canonical = order_key(redis_client, settings, "D1")
    (iid,) = item_ids_of(redis_client, settings, "D1")
    hashes = state_of(redis_client, keys, canonical)
    code, out, _ = cli(capsys, "worklist", "delete", iid, "--redis-url", settings.redis.url)
    assert (code, out.strip()) == (0, f"deleted {iid}")
    assert state_of(redis_client, keys, canonical) == hashes
    apply_messages(redis_client, settings, orm(placer="D1", filler="DF1"))  # a resent NW
    # Applied as the cancel it came before (same transaction time), never scheduled.
    from bridge.store.worklist_store import WorklistStore

    store = WorklistStore(redis_client, keys)
    ids = item_ids_of(redis_client, settings, "D1")
    assert [it.status for it in store.load(ids)] == ["CANCELED"] * len(ids)


def test_purge_removes_the_order_states_it_empties(
    redis_client: redis.Redis, settings: Settings, keys: Keys, capsys
) -> None:
    apply_messages(
        redis_client, settings,
        orm(placer="E1", filler="EF1", start="20260101101500"),
        orm(placer="E2", filler="EF2", start="20260102101500"),
        orm(placer="E3", filler="EF3", start="20260801101500"),
    )  # fmt: skip
    old = [order_key(redis_client, settings, p) for p in ("E1", "E2")]
    kept = state_of(redis_client, keys, order_key(redis_client, settings, "E3"))
    code, out, _ = cli(capsys, "worklist", "purge", "--before", "20260701", "--json",
                       "--redis-url", settings.redis.url)  # fmt: skip
    assert code == 0
    assert json.loads(out) == {
        "before": "20260701", "dry_run": False, "matched": 2, "deleted": 2,
        "order_states_removed": 4,
    }  # fmt: skip
    assert all(state_of(redis_client, keys, o) == [] for o in old)
    assert state_of(redis_client, keys, order_key(redis_client, settings, "E3")) == kept
