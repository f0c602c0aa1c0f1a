"""A message that kills its worker on every attempt must not block the line forever."""

from __future__ import annotations

import contextlib
import time

from intake_helpers import submit
from orm_builder import orm

from bridge.core.errors import StoreUnavailable
from bridge.core.settings import load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys
from bridge.worker import rq_worker as workers


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
