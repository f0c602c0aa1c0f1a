"""The worker verb applies a batch in a background thread while it parses the next one;
a failure there loses nothing (the stuck-head recovery parses the batch again)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis
from intake_helpers import submit
from orm_builder import orm

from bridge import workers
from bridge.applier import BackgroundApplier
from bridge.keys import Keys
from bridge.settings import Settings
from bridge.store import WorklistStore


def test_batches_are_applied_in_submission_order_and_close_flushes() -> None:
    seen: list[tuple[list[tuple[str, str]], str]] = []
    gate = threading.Event()

    def drain(outcomes: list[tuple[str, str]], batch_key: str) -> int:
        gate.wait(5)
        seen.append((outcomes, batch_key))
        return len(outcomes)

    applier = BackgroundApplier(drain)
    applier.submit([("a", "{}")], "batch:a")
    applier.submit([("b", "{}")], "")
    blocked = threading.Thread(target=applier.submit, args=([("c", "{}")], "batch:c"))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # one batch in progress, one waiting: the third waits
    gate.set()
    blocked.join(5)
    assert applier.close(5)
    assert [outcomes[0][0] for outcomes, _ in seen] == ["a", "b", "c"]


def test_a_failing_batch_is_logged_and_the_next_one_still_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    def drain(outcomes: list[tuple[str, str]], batch_key: str) -> int:
        if outcomes[0][0] == "bad":
            raise redis.ConnectionError("simulated: redis gone")
        done.append(outcomes[0][0])
        return 1

    applier = BackgroundApplier(drain)
    with caplog.at_level(logging.ERROR, logger="bridge.applier"):
        applier.submit([("bad", "{}")], "")
        applier.submit([("good", "{}")], "")
        assert applier.close(5)
    assert done == ["good"]
    assert [r.getMessage() for r in caplog.records] == ["apply.background_failed"]


def test_outcomes_lost_by_the_thread_are_recovered(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """The job finished, the thread could not store the batch: the messages are still in
    line and the stuck-head recovery carries the whole batch (its record names it)."""
    mids = [
        submit(redis_client, settings, orm(placer=f"T{i}", filler=f"TF{i}").encode())
        for i in range(4)
    ]
    ctx = workers.install(settings, redis_client)
    seq = ctx.sequencer
    real_drain = seq.drain
    calls = 0

    def drain_once_failing(store=None, batch_key=""):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise redis.ConnectionError("simulated: redis gone before the outcomes were stored")
        return real_drain(store, batch_key)

    seq.drain = drain_once_failing  # type: ignore[method-assign]
    seq.apply_in_background()
    assert seq.process(mids[0]) == "parsed"  # the job is done ...
    seq.close(5)
    keys = Keys()
    assert redis_client.llen(keys.ingest_order) == 4  # ... but nothing was applied
    assert redis_client.exists(keys.batch(mids[0]))
    now = time.time()
    for n in range(3):  # watching, then stuck: reprocessed with its batch
        seq.recover(now=now + n * (settings.worker.stuck_head_s + 1))
    assert redis_client.llen(keys.ingest_order) == 0
    assert WorklistStore(redis_client, keys).count() == 4
    assert not redis_client.exists(keys.batch(mids[0]))
