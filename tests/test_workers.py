"""Real worker processes: in-order apply with 4 concurrent workers, crash recovery of a
stuck ingest head, clean SIGTERM, and the mapping CLI commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from conftest import SAMPLES
from intake_helpers import submit
from orm_builder import orm

from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.ops.cli import main
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore

ROOT = Path(__file__).resolve().parents[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_BRIDGE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["MWL_BRIDGE_WORKER_LOCAL_TIMEZONE"] = "UTC"
    env.update(extra)
    return env


def start_worker(redis_url: str, *flags: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "worker", "--redis-url", redis_url,
         "--log-level", "WARNING", *flags],
        cwd=ROOT, env=worker_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_until(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


#: Notes that make a NW slow to parse (~tens of ms), so the XO/CA/SC queued right
#: behind it usually finish parsing first on another worker.
SLOW_NOTES = [f"note {n} " + "x" * 40 for n in range(40)]


def ordering_stream() -> tuple[list[bytes], dict[str, tuple[str, str]]]:
    """Messages in ACK order whose final worklist depends on that order, and the final
    (SPS status, station) per placer number that the ACK order gives. The messages of
    an order are adjacent in the line, so several workers parse them at the same time."""
    stream: list[bytes] = []
    expected: dict[str, tuple[str, str]] = {}
    for n in range(24):
        placer = f"ORD{n}"
        nw = orm(placer=placer, filler="", nte=SLOW_NOTES).encode()
        if n % 3 == 0:  # NW, XO (new station), CA → canceled in the new room
            stream += [nw, orm(control="XO", placer=placer, filler="", station="CT_X").encode(),
                       orm(control="CA", status="CA", placer=placer, filler="").encode()]
            expected[placer] = ("CANCELED", "CT_X")
        elif n % 3 == 1:  # NW, XO, SC IP → started in the new room
            stream += [nw, orm(control="XO", placer=placer, filler="", station="CT_Y").encode(),
                       orm(control="SC", status="IP", placer=placer, filler="").encode()]
            expected[placer] = ("STARTED", "CT_Y")
        else:  # CA before its NW (same transaction time): a tombstone, the NW is late
            stream += [orm(control="CA", status="CA", placer=placer, filler="").encode(), nw]
            expected[placer] = ("CANCELED", "CT_ROOM1")
    return stream, expected  # fmt: skip


def final_state(client: redis.Redis) -> dict[str, tuple[str, str]]:
    keys = Keys()
    store = WorklistStore(client, keys)
    ids = sorted(m.decode() for m in client.zrange(keys.index_start, 0, -1))
    return {
        item.attrs["PlacerOrderNumberImagingServiceRequest"]: (
            item.status, item.sps["ScheduledStationAETitle"])
        for item in store.load(ids)
    }  # fmt: skip


def parsed_by(client: redis.Redis) -> dict[str, int]:
    """Jobs finished per rq worker name (each job parsed a batch of 1 or 2 messages)."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    registry = FinishedJobRegistry(queue=Queue(Keys().queue_name(), connection=client))
    jobs = Job.fetch_many(registry.get_job_ids(), connection=client)
    counts: dict[str, int] = {}
    for job in jobs:
        assert job is not None and job.worker_name
        counts[job.worker_name] = counts.get(job.worker_name, 0) + 1
    return counts


@pytest.mark.slow
def test_four_workers_apply_in_ack_order(redis_client: redis.Redis, settings: Settings) -> None:
    """4 real worker processes, all running before the first message arrives, with
    worker.batch_size 2 so that no worker takes the whole line: they parse the NW (slow),
    XO and CA/SC of an order at the same time and usually finish the CA first. The final
    state must still be what the ACK order says, and more than one worker must have
    parsed (the old version of this test started --burst workers on a full queue with
    batches of 64, so one worker could parse everything alone and pass)."""
    from rq import Queue, Worker

    stream, expected = ordering_stream()
    keys = Keys()
    queue = Queue(keys.queue_name(), connection=redis_client)
    procs = [
        start_worker(settings.redis.url, MWL_BRIDGE_WORKER_BATCH_SIZE="2") for _ in range(4)
    ]
    try:
        assert wait_until(lambda: len(Worker.all(queue=queue)) == 4, 60), "workers did not start"
        for raw in stream:
            submit(redis_client, settings, raw)
        assert wait_until(
            lambda: redis_client.llen(keys.ingest_order) == 0 and queue.count == 0, 60
        ), "the line was not applied"
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert codes == [0, 0, 0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert deadletter.count(redis_client, keys) == 0
    assert final_state(redis_client) == expected
    workers_that_parsed = parsed_by(redis_client)
    assert len(workers_that_parsed) > 1, workers_that_parsed
    # Every message was parsed by some job: a batch carries at most 2.
    assert sum(workers_that_parsed.values()) >= len(stream) / 2


def test_the_ordering_check_rejects_a_line_applied_out_of_order(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """What the 4-worker test would see with the ordering removed (each message applied
    when its parse finishes): the slow NW of an order lands after its XO and CA/SC. The
    same stream in that order, applied by the real planner, gives another final state,
    and the very check of the 4-worker test rejects it for each such order."""
    from worker_helpers import run

    stream, expected = ordering_stream()
    slow = {raw for raw in stream if b"NTE|" in raw}
    # Within each order's adjacent messages, the slow NW finishes parsing last.
    reordered: list[bytes] = []
    group: list[bytes] = []
    for raw in [*stream, b""]:
        if group and (raw == b"" or _placer(raw) != _placer(group[0])):
            reordered += [m for m in group if m not in slow] + [m for m in group if m in slow]
            group = []
        if raw:
            group.append(raw)
    assert sorted(reordered) == sorted(stream) and reordered != stream
    run(redis_client, settings, *reordered)
    got = final_state(redis_client)
    assert got != expected
    wrong = {p for p in expected if got.get(p) != expected[p]}
    assert wrong == {f"ORD{n}" for n in range(24) if n % 3 != 2}  # NW-first orders
    # The XO's new room is lost: it came before its order existed.
    assert all(got[p][1] == "CT_ROOM1" for p in wrong)


def _placer(raw: bytes) -> bytes:
    orc = next(seg for seg in raw.split(b"\r") if seg.startswith(b"ORC|"))
    return orc.split(b"|")[2]


@pytest.mark.slow
def test_stuck_head_recovered_and_sigterm_is_clean(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """A worker died mid-parse: the head's message is in line but its job is gone (rq
    would bring it back only after ~90 s + a maintenance pass). The maintenance step
    parses it after worker.stuck_head_s, and the message behind it follows in order."""
    keys = Keys()
    lost = submit(redis_client, settings, orm(placer="A", filler="").encode())
    redis_client.delete(f"rq:queue:{keys.queue_name()}")  # the job vanished with its worker
    submit(redis_client, settings, orm(control="CA", status="CA", placer="A", filler="").encode())
    proc = start_worker(
        settings.redis.url,
        MWL_BRIDGE_WORKER_STUCK_HEAD_S="1",
        MWL_BRIDGE_WORKER_MAINTENANCE_INTERVAL_S="1",
        MWL_BRIDGE_WORKER_WORKER_CLASS="fork",
    )
    try:
        store = WorklistStore(redis_client, keys)
        assert wait_until(lambda: redis_client.llen(keys.ingest_order) == 0, 30)
        (item,) = store.load(store.ids_for("pid", "12345"))
        assert item.status == "CANCELED"  # NW (recovered) applied before the CA
        assert redis_client.hget(keys.message(lost), "state") == b"applied"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mapping_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mapping", "check", str(ROOT / "mappings" / "ihe-rad.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "site.yaml"
    bad.write_text("extends: default\nattributes:\n  PatientSex: {source: PID-8, tabel: sex}\n")
    assert main(["mapping", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "PatientSex.tabel" in err


def test_mapping_test_command(capsys: pytest.CaptureFixture[str]) -> None:
    mapping = str(ROOT / "mappings" / "ihe-rad.yaml")
    assert main(["mapping", "test", mapping, str(SAMPLES / "orm_v24_utf8_escapes.hl7")]) == 0
    out = capsys.readouterr().out
    assert "(0010,0010) Patient's Name" in out and "ŁUKASZ X^ZOË" in out
    assert "Scheduled Procedure Step Status     CS: 'SCHEDULED'" in out
    assert "WARNING: PatientBirthDate" in out
    assert main(["mapping", "test", mapping, str(SAMPLES / "orm_bad_modality.hl7")]) == 1
    assert "HL7 error 103" in capsys.readouterr().out


def test_worker_needs_a_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("MWL_BRIDGE_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    assert main(["worker", "--burst"]) == 2
    assert "invalid setting redis.url" in capsys.readouterr().err


def test_redis_down_is_transient_not_a_dead_letter(tmp_path: Path) -> None:
    """With Redis gone the job raises StoreUnavailable (rq retries with backoff); once
    Redis is back (AOF intact) the same message is applied, nothing dead-lettered."""
    from redis_server import RedisServer

    from bridge.core.errors import StoreUnavailable
    from bridge.worker import rq_worker as workers

    server = RedisServer()
    server.start()
    try:
        settings = load_settings({"redis.url": server.url, "redis.socket_timeout_s": 1}, env={})
        client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        mid = submit(client, settings, orm().encode())
        ctx = workers.install(settings)
        server.stop()
        with pytest.raises(StoreUnavailable):
            ctx.sequencer.process(mid)
        server.start()
        ctx.sequencer.process(mid)
        keys = Keys()
        assert client.llen(keys.ingest_order) == 0
        assert deadletter.count(client, keys) == 0
        assert WorklistStore(client, keys).count() == 1
    finally:
        server.cleanup()


@pytest.mark.slow
def test_worker_killed_mid_job_loses_nothing(redis_client: redis.Redis, settings: Settings) -> None:
    """SIGKILL a worker while it parses a big order; a second worker recovers the head
    (stuck_head_s = 1 s) and applies it before the cancel queued behind it."""
    from rq import Queue
    from rq.registry import StartedJobRegistry

    keys = Keys()
    notes = [f"line {n} " + "y" * 60 for n in range(4000)]  # ~1 s of parsing: a wide window
    big = submit(redis_client, settings, orm(placer="K", filler="", nte=notes).encode())
    submit(redis_client, settings, orm(control="CA", status="CA", placer="K", filler="").encode())
    registry = StartedJobRegistry(queue=Queue(keys.queue_name(), connection=redis_client))
    victim = start_worker(settings.redis.url, "--burst")
    try:
        assert wait_until(lambda: f"msg-{big}" in registry.get_job_ids(), 30)
        time.sleep(0.2)  # well inside the parse (~1 s), past the job bookkeeping
        victim.kill()  # SIGKILL mid-parse: no cleanup, the job stays "started"
        victim.wait(timeout=10)
        assert redis_client.llen(keys.ingest_order) == 2  # nothing applied, nothing lost
    finally:
        if victim.poll() is None:
            victim.kill()
    rescuer = start_worker(
        settings.redis.url,
        MWL_BRIDGE_WORKER_STUCK_HEAD_S="1",
        MWL_BRIDGE_WORKER_MAINTENANCE_INTERVAL_S="1",
    )
    try:
        assert wait_until(lambda: redis_client.llen(keys.ingest_order) == 0, 40)
        store = WorklistStore(redis_client, keys)
        (item,) = store.load(store.ids_for("pid", "12345"))
        assert item.status == "CANCELED"
        assert deadletter.count(redis_client, keys) == 0
    finally:
        rescuer.send_signal(signal.SIGTERM)
        try:
            rescuer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rescuer.kill()
