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

from bridge.core.settings import Settings
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import background as applier_module
from bridge.worker import rq_worker as workers
from bridge.worker.background import BackgroundApplier


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


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applier_module, "RETRY_FIRST_S", 0.01)


def test_a_redis_error_is_retried_until_the_batch_is_applied(
    caplog: pytest.LogCaptureFixture, quick_retries: None
) -> None:
    attempts: list[str] = []

    def drain(outcomes: list[tuple[str, str]], batch_key: str) -> int:
        attempts.append(outcomes[0][0])
        if len(attempts) <= 2:
            raise redis.ConnectionError("simulated: redis gone")
        return 1

    applier = BackgroundApplier(drain)
    with caplog.at_level(logging.WARNING, logger="bridge.worker.background"):
        applier.submit([("a", "{}")], "batch:a")
        applier.submit([("b", "{}")], "")
        assert applier.close(5)
    assert attempts == ["a", "a", "a", "b"]
    assert [r.getMessage() for r in caplog.records] == ["apply.background_retry"] * 2


def test_a_bug_is_logged_not_retried_and_the_next_batch_still_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    def drain(outcomes: list[tuple[str, str]], batch_key: str) -> int:
        if outcomes[0][0] == "bad":
            raise ValueError("simulated bug")
        done.append(outcomes[0][0])
        return 1

    applier = BackgroundApplier(drain)
    with caplog.at_level(logging.ERROR, logger="bridge.worker.background"):
        applier.submit([("bad", "{}")], "")
        applier.submit([("good", "{}")], "")
        assert not applier.close(5)  # "bad" is left to the stuck-head recovery
    assert done == ["good"]
    assert [r.getMessage() for r in caplog.records] == ["apply.background_failed"]


def test_outcomes_lost_by_the_thread_are_recovered(
    redis_client: redis.Redis, settings: Settings, quick_retries: None
) -> None:
    """The job finished, the thread could not store the batch before the worker stopped
    (Redis down until then): the messages are still in line and the stuck-head recovery
    carries the whole batch (its record names it)."""
    mids = [
        submit(redis_client, settings, orm(placer=f"T{i}", filler=f"TF{i}").encode())
        for i in range(4)
    ]
    ctx = workers.install(settings, redis_client)
    seq = ctx.sequencer
    real_drain = seq.drain

    def redis_down(store=None, batch_key=""):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("simulated: redis gone before the outcomes were stored")

    seq.drain = redis_down  # type: ignore[method-assign]
    seq.apply_in_background()
    assert seq.process(mids[0]) == "parsed"  # the job is done ...
    assert seq.applier is not None
    assert not seq.applier.close(0.5)  # ... the worker stops while Redis is still down
    seq.applier = None
    seq.drain = real_drain  # type: ignore[method-assign]
    keys = Keys()
    assert redis_client.llen(keys.ingest_order) == 4  # nothing was applied
    assert redis_client.exists(keys.batch(mids[0]))
    now = time.time()
    for n in range(3):  # watching, then stuck: reprocessed with its batch
        seq.recover(now=now + n * (settings.worker.stuck_head_s + 1))
    assert redis_client.llen(keys.ingest_order) == 0
    assert WorklistStore(redis_client, keys).count() == 4
    assert not redis_client.exists(keys.batch(mids[0]))
