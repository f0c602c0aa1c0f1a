"""A message that kills its worker on every attempt must not block the line forever."""

from __future__ import annotations

import contextlib
import time

from intake_helpers import submit
from orm_builder import orm

from bridge import deadletter, workers
from bridge.keys import Keys
from bridge.settings import load_settings


def test_poison_message_is_dead_lettered_after_max_retries_recoveries(
    redis_client, redis_url
) -> None:
    s = load_settings({"redis.url": redis_url, "worker.max_retries": 2}, env={})
    keys = Keys(s.redis.key_prefix)
    poison = submit(redis_client, s, orm(control_id="POISON").encode())
    after = submit(redis_client, s, orm(control_id="NEXT", placer="ORD2").encode())
    ctx = workers.install(s, redis_client)
    real_parse = ctx.sequencer.parse_fn

    def dies(message_id, meta):
        if message_id == poison:
            raise SystemExit("worker died")  # stands for an OOM kill or a segfault
        return real_parse(message_id, meta)

    ctx.sequencer.parse_fn = dies
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
