"""What must not block the line forever: a message that kills its worker on every
attempt, a head whose message hash is gone."""

from __future__ import annotations

import contextlib
import time

import pytest
from intake_helpers import submit
from orm_builder import orm

from bridge.core import metrics
from bridge.core.errors import StoreUnavailable
from bridge.core.settings import load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_worker as workers
from bridge.worker.sequencer import LockLost


def _dies_parsing(ctx: workers.WorkerContext, poison: str) -> None:
    """Parsing ``poison`` kills the worker (SystemExit stands for an OOM kill or a
    segfault); every other message parses as usual."""
    real_parse = ctx.sequencer.parse_fn

    def dies(message_id, meta):
        if message_id == poison:
            raise SystemExit("worker died")
        return real_parse(message_id, meta)

    ctx.sequencer.parse_fn = dies


def test_poison_message_is_dead_lettered_after_max_retries_recoveries(
    redis_client, redis_url
) -> None:
    s = load_settings({"redis.url": redis_url, "worker.max_retries": 2}, env={})
    keys = Keys(s.redis.key_prefix)
    poison = submit(redis_client, s, orm(control_id="POISON").encode())
    after = submit(redis_client, s, orm(control_id="NEXT", placer="ORD2").encode())
    ctx = workers.install(s, redis_client)
    _dies_parsing(ctx, poison)
    t0 = time.time()
    for n in range(12):  # bounded: watching + waiting + one attempt per recovery
        if redis_client.lindex(keys.ingest_order, 0) != poison.encode():
            break
        with contextlib.suppress(SystemExit):
            ctx.sequencer.recover(now=t0 + n * (s.worker.stuck_head_s + 1))
    assert int(redis_client.hget(keys.message(poison), "recoveries")) == 3
    letter = deadletter.get(redis_client, keys, poison)
    assert letter is not None and letter.code == 207
    assert "recoveries" in letter.reason
    assert redis_client.lindex(keys.ingest_order, 0) != poison.encode()
    # The next order is not stuck behind it.
    ctx.sequencer.process(after)
    assert redis_client.llen(keys.ingest_order) == 0


def test_poison_message_inside_a_batch_costs_only_itself(redis_client, redis_url) -> None:
    """The job of L took X and F (worker.batch_size) and died parsing X: the recovery
    carries the batch on one message at a time — L and F are applied, X alone reaches
    max_retries and is dead-lettered, and no batch record is left behind."""
    s = load_settings({"redis.url": redis_url, "worker.max_retries": 2}, env={})
    keys = Keys(s.redis.key_prefix)
    lead = submit(redis_client, s, orm(control_id="LEAD", placer="ORDL").encode())
    poison = submit(redis_client, s, orm(control_id="POISON", placer="ORDX").encode())
    follower = submit(redis_client, s, orm(control_id="FOLLOW", placer="ORDF").encode())
    ctx = workers.install(s, redis_client)
    _dies_parsing(ctx, poison)
    with contextlib.suppress(SystemExit):
        ctx.sequencer.process(lead)
    assert redis_client.llen(keys.ingest_order) == 3  # nothing stored: the batch died
    assert [m.decode() for m in redis_client.lrange(keys.batch(lead), 0, -1)] == [
        poison,
        follower,
    ]
    t0 = time.time()
    for n in range(20):  # bounded: watching + waiting + one attempt per recovery
        if not redis_client.llen(keys.ingest_order):
            break
        with contextlib.suppress(SystemExit):
            ctx.sequencer.recover(now=t0 + n * (s.worker.stuck_head_s + 1))
    assert redis_client.llen(keys.ingest_order) == 0
    letter = deadletter.get(redis_client, keys, poison)
    assert letter is not None and letter.code == 207
    assert deadletter.get(redis_client, keys, lead) is None
    assert deadletter.get(redis_client, keys, follower) is None
    assert redis_client.hget(keys.message(lead), "state") == b"applied"
    assert redis_client.hget(keys.message(follower), "state") == b"applied"
    assert not redis_client.exists(keys.batch(lead))


def test_rerun_of_an_unfinished_batch_goes_one_message_at_a_time(redis_client, redis_url) -> None:
    """A transient failure mid-batch: the job's re-run finds the batch record and stores
    each outcome before the next parse."""
    s = load_settings({"redis.url": redis_url}, env={})
    keys = Keys(s.redis.key_prefix)
    mids = [
        submit(redis_client, s, orm(placer=f"RR{i}", filler=f"RRF{i}").encode()) for i in range(3)
    ]
    ctx = workers.install(s, redis_client)
    real_parse = ctx.sequencer.parse_fn
    seen: list[str] = []

    def flaky(message_id, meta):
        seen.append(message_id)
        if message_id == mids[2] and seen.count(message_id) == 1:
            raise StoreUnavailable("simulated: redis gone while mapping")
        return real_parse(message_id, meta)

    ctx.sequencer.parse_fn = flaky
    with contextlib.suppress(StoreUnavailable):
        ctx.sequencer.process(mids[0])
    assert redis_client.llen(keys.ingest_order) == 3
    stored = []
    real_drain = ctx.sequencer.drain

    def drain(store=None, batch_key=""):
        stored.append([mid for mid, _ in store or ()])
        return real_drain(store, batch_key)

    ctx.sequencer.drain = drain
    assert ctx.sequencer.process(mids[0]) == "parsed"
    assert stored == [[mids[0]], [mids[1]], [mids[2]]]
    assert redis_client.llen(keys.ingest_order) == 0
    assert not redis_client.exists(keys.batch(mids[0]))


def _lost() -> float:
    return metrics.REGISTRY.get_sample_value(
        "mwl_messages_lost_total", {"reason": "hash_missing"}
    ) or 0.0


def test_head_whose_message_hash_is_gone_is_dead_lettered_and_counted(
    redis_client, redis_url
) -> None:
    """An ACKed message whose hash vanished (evicted, expired, deleted) is an order lost
    after its AA. The next worker that stores an outcome behind it keeps a dead letter
    under its id, counts it and pops it (today's code popped it with a log line only:
    nothing in ``deadletter list``, no metric), and the line moves on."""
    s = load_settings({"redis.url": redis_url}, env={})
    keys = Keys(s.redis.key_prefix)
    gone = submit(redis_client, s, orm(placer="G1", filler="GF1").encode())
    after = submit(redis_client, s, orm(placer="G2", filler="GF2").encode())
    redis_client.delete(keys.message(gone))
    before = _lost()
    workers.install(s, redis_client).sequencer.process(after)
    assert redis_client.llen(keys.ingest_order) == 0
    assert WorklistStore(redis_client, keys).count() == 1  # G2 applied after it
    letter = deadletter.get(redis_client, keys, gone)
    assert letter is not None
    assert (letter.stage, letter.code, letter.raw) == ("worker", 207, b"")
    assert gone in letter.reason and letter.meta == {"message_id": gone}
    assert deadletter.list_ids(redis_client, keys) == [gone]
    assert _lost() == before + 1


def test_missing_head_is_not_dead_lettered_by_a_worker_that_lost_the_lock(
    redis_client, redis_url
) -> None:
    """Dead letter and pop are one script fenced by the lock token: a holder whose lock
    expired writes neither, so the new holder does it exactly once."""
    s = load_settings({"redis.url": redis_url}, env={})
    keys = Keys(s.redis.key_prefix)
    gone = submit(redis_client, s, orm(placer="G1", filler="GF1").encode())
    redis_client.delete(keys.message(gone))
    redis_client.set(keys.apply_lock, "the-new-holder")
    seq = workers.install(s, redis_client).sequencer
    with pytest.raises(LockLost):
        seq._drop_missing_head(gone, "our-expired-token", 30_000)
    assert redis_client.lrange(keys.ingest_order, 0, -1) == [gone.encode()]
    assert deadletter.count(redis_client, keys) == 0
    assert seq._drop_missing_head(gone, "the-new-holder", 30_000) is None  # line now empty
    assert redis_client.llen(keys.ingest_order) == 0
    assert deadletter.count(redis_client, keys) == 1
