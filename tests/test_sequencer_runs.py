"""The lock holder plans and writes a run of parsed messages at once; messages of an
order already planned in the run wait for the next run (they must see its writes)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from intake_helpers import submit
from orm_builder import orm

from bridge.core.settings import Settings
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_worker as workers


def _spy_runs(ctx: workers.WorkerContext) -> list[list[str]]:
    runs: list[list[str]] = []
    real = ctx.sequencer._finish_run

    def finish_run(entries: list[dict[str, Any]], *args: Any) -> Any:
        runs.append([e["h"] for e in entries])
        return real(entries, *args)

    ctx.sequencer._finish_run = finish_run  # type: ignore[method-assign]
    return runs


def test_messages_of_different_orders_share_a_run(
    redis_client: redis.Redis, settings: Settings
) -> None:
    mids = [
        submit(redis_client, settings, orm(placer=f"R{i}", filler="").encode()) for i in range(5)
    ]
    ctx = workers.install(settings, redis_client)
    runs = _spy_runs(ctx)
    ctx.sequencer.process(mids[0])  # the batch takes the four jobs behind it
    assert runs == [mids]
    assert WorklistStore(redis_client, Keys()).count() == 5


def test_a_message_of_an_order_planned_in_the_run_waits_for_the_next_run(
    redis_client: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    nw = submit(redis_client, settings, orm("NW", "SC", placer="P9", filler="F9").encode())
    ctx = workers.install(settings, redis_client)
    ctx.sequencer.process(nw)  # the order is known under both numbers now
    # A cancel naming only the placer number, then a change naming only the filler
    # number: different aliases, one order. Planned on the same state, the change would
    # bring the cancelled procedure back.
    ca = submit(redis_client, settings, orm("CA", "CA", placer="P9", filler="").encode())
    xo = submit(redis_client, settings, orm("XO", "SC", placer="", filler="F9").encode())
    other = submit(redis_client, settings, orm("NW", "SC", placer="Q1", filler="").encode())
    runs = _spy_runs(ctx)
    with caplog.at_level(logging.INFO, logger="bridge.worker.lifecycle"):
        caplog.clear()  # the NW above
        ctx.sequencer.process(ca)
    assert runs == [[ca], [xo, other]]
    # The XO's first plan (made before the cancel was written) is dropped unlogged: the
    # log tells what was written — the cancel, the new order, the XO refused.
    events = [r.getMessage() for r in caplog.records if r.name == "bridge.worker.lifecycle"]
    assert sorted(events) == ["order.already_final", "order.applied", "order.applied"]
    store = WorklistStore(redis_client, Keys())
    assert store.count() == 2
    cancelled = [it for it in store.load(
        [m.decode() for m in redis_client.zrange(Keys().index_start, 0, -1)]
    ) if it.order_key.endswith("P9")]  # fmt: skip
    assert [it.status for it in cancelled] == ["CANCELED"]
    state = redis_client.hgetall(Keys().order(cancelled[0].order_key))
    assert state[b"final"] == b"CANCELED"


def test_a_batch_does_not_take_the_requeued_job_of_another_batchs_leader(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """rq re-queued leader A's job (its batch record still names A's followers): a batch
    that took A would carry A alone and leave A's followers to the stuck-head recovery."""
    from rq import Queue

    lead = submit(redis_client, settings, orm(placer="L1", filler="").encode())
    other = submit(redis_client, settings, orm(placer="A1", filler="").encode())
    keys = Keys()
    redis_client.rpush(keys.batch(other), "follower-of-a")
    ctx = workers.install(settings, redis_client)
    ctx.sequencer.process(lead)
    assert Queue(keys.queue_name(), connection=redis_client).job_ids == [f"msg-{other}"]
    assert not redis_client.exists(keys.batch(lead))
    assert redis_client.hget(keys.message(other), "leader") is None


def test_an_outcome_for_a_message_applied_meanwhile_is_not_stored(
    redis_client: redis.Redis, settings: Settings
) -> None:
    mid = submit(redis_client, settings, orm(placer="S1", filler="").encode())
    ctx = workers.install(settings, redis_client)
    ctx.sequencer.process(mid)
    keys = Keys()
    assert redis_client.hget(keys.message(mid), "state") == b"applied"
    ctx.sequencer.drain([(mid, '{"kind": "rejected"}')])  # a slow batch arriving late
    assert not redis_client.exists(keys.parsed(mid))
