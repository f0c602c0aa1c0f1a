"""The lock holder plans and writes a run of parsed messages at once; messages of an
order already planned in the run wait for the next run (they must see its writes)."""

from __future__ import annotations

from typing import Any

import redis
from intake_helpers import submit
from orm_builder import orm

from bridge import workers
from bridge.keys import Keys
from bridge.settings import Settings
from bridge.store import WorklistStore


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
    redis_client: redis.Redis, settings: Settings
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
    ctx.sequencer.process(ca)
    assert runs == [[ca], [xo, other]]
    store = WorklistStore(redis_client, Keys())
    assert store.count() == 2
    cancelled = [it for it in store.load(
        [m.decode() for m in redis_client.zrange(Keys().index_start, 0, -1)]
    ) if it.order_key.endswith("P9")]  # fmt: skip
    assert [it.status for it in cancelled] == ["CANCELED"]
    state = redis_client.hgetall(Keys().order(cancelled[0].order_key))
    assert state[b"final"] == b"CANCELED"
