"""Listener operations: Redis outage, TLS/mTLS, application ACK mode, interop with
python-hl7's ``mllp_send``, and the ``mwl-bridge listen`` process (signals)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from mllp_harness import (
    ListenerThread,
    MllpClient,
    StartFn,
    ack_fields,
    listener_settings,
    msg,
    sample,
    wait_until,
)
from pki_helpers import make_pki
from redis_server import RedisServer, free_port
from rq import Queue

from bridge.core.settings import Settings
from bridge.intake import deadletter
from bridge.store.keys import Keys
from bridge.worker import rq_worker as workers

V23_SAMPLE = "mllp_orm_v23_zds.hl7"


def ids(client: redis.Redis, keys: Keys) -> list[str]:
    return [i.decode() for i in client.lrange(keys.ingest_order, 0, -1)]


# -- Redis outage ---------------------------------------------------------------------------


def test_redis_stopped_at_ack_time_then_recovery(mllp: StartFn) -> None:
    server = RedisServer()  # private: this test stops it
    server.start()
    keys = Keys("mwl")
    try:
        lt = mllp(url=server.url)
        with MllpClient(lt.port) as c:
            assert ack_fields(c.send(msg("R1")))["MSA"][1:3] == ["AA", "R1"]
            server.stop()
            # original mode: AR with ERR 207, never AA
            nak = ack_fields(c.send(msg("R2")))
            assert nak["MSA"][1:3] == ["AR", "R2"]
            assert nak["ERR"][1] == "^^^207&Application internal error&HL70357"
            # enhanced mode: CR with ERR-3 207
            nak = ack_fields(c.send(msg("R3", "2.5", "|||AL|NE")))
            assert nak["MSA"][1:3] == ["CR", "R3"]
            assert nak["ERR"][3] == "207^Application internal error^HL70357"
            server.start()  # same port, same AOF
            assert ack_fields(c.send(msg("R2")))["MSA"][1:3] == ["AA", "R2"]
            assert ack_fields(c.send(msg("R3", "2.5", "|||AL|NE")))["MSA"][1:3] == ["CA", "R3"]
        client = redis.Redis.from_url(server.url)
        order = ids(client, keys)
        assert [client.hget(keys.message(i), "control_id") for i in order] == [
            b"R1",
            b"R2",
            b"R3",
        ]  # R1 survived the restart (AOF); nothing lost, nothing doubled
        assert Queue(keys.queue_name(), connection=client).count == 3
        client.close()
    finally:
        server.cleanup()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server cert for localhost/127.0.0.1 and a client cert."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client_ctx(pki: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


def test_tls(mllp: StartFn, pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mllp.listener")
    lt = mllp(tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"))
    with MllpClient(lt.port, tls=_client_ctx(pki, False)) as c:
        assert ack_fields(c.send(msg("S1")))["MSA"][1:3] == ["AA", "S1"]
        assert ack_fields(c.send(msg("S2")))["MSA"][1:3] == ["AA", "S2"]
    # a plain-text sender cannot talk to a TLS listener
    with MllpClient(lt.port) as c, pytest.raises((ConnectionError, OSError)):
        c.send(msg("S3"))
    wait_until(lambda: any(r.getMessage() == "mllp.tls.handshake_failed" for r in caplog.records))


def test_mutual_tls(
    mllp: StartFn,
    pki: Path,
    redis_client: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mllp.listener")
    lt = mllp(
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_client_ca_file=str(pki / "ca.pem"),
    )
    with MllpClient(lt.port, tls=_client_ctx(pki, True)) as c:
        assert ack_fields(c.send(msg("T1")))["MSA"][1:3] == ["AA", "T1"]
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        MllpClient(lt.port, tls=_client_ctx(pki, False)) as c,
    ):
        c.send(msg("T2"))
    assert len(ids(redis_client, keys)) == 1
    established = [r for r in caplog.records if r.getMessage() == "mllp.tls.established"]
    assert established[0].fields["client_cert"] == "commonName=client"  # type: ignore[attr-defined]
    wait_until(lambda: any(r.getMessage() == "mllp.tls.handshake_failed" for r in caplog.records))


# -- application ACK mode -------------------------------------------------------------------


def _send_async(port: int, content: bytes) -> concurrent.futures.Future[bytes]:
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def run() -> bytes:
        with MllpClient(port) as c:
            return c.send(content)

    fut = pool.submit(run)
    pool.shutdown(wait=False)
    return fut


def _send_async_on(client: MllpClient, content: bytes) -> concurrent.futures.Future[bytes]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(client.send, content)
    pool.shutdown(wait=False)
    return fut


def test_application_mode_error_from_worker(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp(ack_mode="application", application_ack_timeout_s=10)
    fut = _send_async(lt.port, msg("A1", "2.5"))
    wait_until(lambda: len(ids(redis_client, keys)) == 1)
    [mid] = ids(redis_client, keys)
    assert redis_client.hget(keys.message(mid), "ack_mode") == b"application"
    assert not fut.done()  # the ACK waits for the worker's verdict
    verdict = {"ok": False, "code": 101, "text": "PID-3 missing", "location": "PID-3"}
    redis_client.rpush(keys.result(mid), json.dumps(verdict))
    fields = ack_fields(fut.result(10))
    assert fields["MSA"][1:4] == ["AE", "A1", "PID-3 missing"]
    assert fields["ERR"][2:5] == ["PID^1^3", "101^Required field missing^HL70357", "E"]


def test_application_mode_ok_from_worker(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp(ack_mode="application", application_ack_timeout_s=10)
    fut = _send_async(lt.port, msg("A2"))
    wait_until(lambda: len(ids(redis_client, keys)) == 1)
    [mid] = ids(redis_client, keys)
    redis_client.rpush(keys.result(mid), json.dumps({"ok": True, "code": 0}))
    assert ack_fields(fut.result(10))["MSA"][1:3] == ["AA", "A2"]


def test_application_mode_timeout_is_ar_207_and_warns(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """No verdict in time: AR with ERR 207 so that the sender resends (today's code sent
    AA, telling the RIS the order was on the worklist before any worker applied it)."""
    caplog.set_level(logging.WARNING, logger="bridge.mllp.listener")
    lt = mllp(ack_mode="application", application_ack_timeout_s=0.3)
    with MllpClient(lt.port) as c:
        ack = ack_fields(c.send(msg("A3")))
    assert ack["MSA"][1:3] == ["AR", "A3"]
    assert ack["ERR"][1] == "^^^207&Application internal error&HL70357"  # v2.3: ERR-1
    assert len(ids(redis_client, keys)) == 1  # durable before the wait
    assert any(r.getMessage() == "mllp.application_ack.timeout" for r in caplog.records)


def _run_worker(settings: Settings, client: redis.Redis) -> None:
    """A real rq worker (in-process, burst) over whatever the listener queued."""
    ctx = workers.install(settings, client)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    workers.make_worker(ctx).work(burst=True, logging_level="WARNING")


def test_application_mode_resend_of_a_rejected_message_is_ae_again(
    mllp: StartFn, settings: Settings, redis_client: redis.Redis, keys: Keys
) -> None:
    """The AE for a message the worker rejected was lost; the resend must not get AA for
    an order that sits in the dead-letter store (and is not queued a second time)."""
    lt = mllp(ack_mode="application", application_ack_timeout_s=10)
    bad = sample("orm_bad_modality.hl7")
    fut = _send_async(lt.port, bad)
    wait_until(lambda: len(ids(redis_client, keys)) == 1)
    [mid] = ids(redis_client, keys)
    _run_worker(settings, redis_client)
    first = ack_fields(fut.result(10))
    assert first["MSA"][1:3] == ["AE", "CTRL1"]
    letter = deadletter.get(redis_client, keys, mid)
    assert letter is not None and letter.stage == "worker"
    assert redis_client.llen(keys.result(mid)) == 0  # the first connection took the verdict
    with MllpClient(lt.port) as c:
        again = ack_fields(c.send(bad))
    assert again["MSA"][1:4] == ["AE", "CTRL1", letter.reason]
    assert again["ERR"] == first["ERR"]
    assert f"{letter.code}&" in again["ERR"][1]  # v2.3.1: ERR-1 <seg>^1^<field>^<code>&...
    assert Queue(keys.queue_name(), connection=redis_client).count == 0  # not queued again
    assert deadletter.count(redis_client, keys) == 1


def test_application_mode_resend_answers_with_the_stored_fate(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp(ack_mode="application", application_ack_timeout_s=0.3)
    with MllpClient(lt.port) as c:
        # 1. dead-lettered by the worker (dead_id == message id) → AE with its code/location
        assert ack_fields(c.send(msg("D1", "2.5")))["MSA"][1] == "AR"  # no verdict in time
        mid = ids(redis_client, keys)[-1]
        letter = deadletter.DeadLetter(
            raw=b"x", reason="PID-3 missing", stage="worker", code=101, location="PID-3",
            dead_id=mid,
        )  # fmt: skip
        deadletter.put(redis_client, keys, letter)
        ack = ack_fields(c.send(msg("D1", "2.5")))
        assert ack["MSA"][1:4] == ["AE", "D1", "PID-3 missing"]
        assert ack["ERR"][2:5] == ["PID^1^3", "101^Required field missing^HL70357", "E"]
        # 2. a verdict that came after the first send's wait is still in the result list
        assert ack_fields(c.send(msg("D2", "2.5")))["MSA"][1] == "AR"
        mid = ids(redis_client, keys)[-1]
        verdict = {"ok": False, "code": 102, "text": "bad date", "location": "OBR-7"}
        redis_client.rpush(keys.result(mid), json.dumps(verdict))
        ack = ack_fields(c.send(msg("D2", "2.5")))
        assert ack["MSA"][1:4] == ["AE", "D2", "bad date"]
        assert ack["ERR"][2] == "OBR^1^7"
        # 3. applied long ago (hash says so, no verdict left) → AA at once, no wait
        assert ack_fields(c.send(msg("D3")))["MSA"][1] == "AR"
        mid = ids(redis_client, keys)[-1]
        redis_client.lrem(keys.ingest_order, 0, mid)
        redis_client.hset(keys.message(mid), "state", "applied")
        t0 = time.monotonic()
        assert ack_fields(c.send(msg("D3")))["MSA"][1:3] == ["AA", "D3"]
        assert time.monotonic() - t0 < 0.25  # did not wait for a verdict


def test_application_mode_resend_of_a_pending_message_waits_for_the_verdict(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp(ack_mode="application", application_ack_timeout_s=10)
    with MllpClient(lt.port) as c:
        first = _send_async_on(c, msg("P1", "2.5"))
        wait_until(lambda: len(ids(redis_client, keys)) == 1)
        [mid] = ids(redis_client, keys)
        redis_client.rpush(keys.result(mid), json.dumps({"ok": True}))
        assert ack_fields(first.result(10))["MSA"][1] == "AA"
    # The message is still in line (not applied yet): a resend waits for a verdict.
    with MllpClient(lt.port) as c:
        resend = _send_async_on(c, msg("P1", "2.5"))
        # It waits on the result list (a blind AA would be back at once).
        wait_until(lambda: any(cl["cmd"] == "blpop" for cl in redis_client.client_list()))
        assert not resend.done()
        verdict = {"ok": False, "code": 207, "text": "could not apply", "location": ""}
        redis_client.rpush(keys.result(mid), json.dumps(verdict))
        assert ack_fields(resend.result(10))["MSA"][1:3] == ["AE", "P1"]
    assert ids(redis_client, keys) == [mid]  # not queued again


def test_commit_mode_resend_is_aa_even_when_dead_lettered(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    """Commit mode acknowledges storage only: a resend gets AA as before."""
    lt = mllp()
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("C1")))["MSA"][1] == "AA"
        [mid] = ids(redis_client, keys)
        deadletter.put(
            redis_client, keys, deadletter.DeadLetter(b"x", "r", "worker", 101, dead_id=mid)
        )
        assert ack_fields(c.send(msg("C1")))["MSA"][1:3] == ["AA", "C1"]


# -- interop with a client we did not write -------------------------------------------------


def _mllp_send() -> list[str]:
    """python-hl7's console script of *this* interpreter's environment (CI runs pytest
    from .venv without activating it), else its module entry point."""
    script = Path(sys.executable).parent / "mllp_send"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hl7.client"]


def test_python_hl7_mllp_send(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    lt = mllp()
    cr_file = tmp_path / "orm.mllp"  # without --loose, mllp_send reads MLLP-framed files
    cr_file.write_bytes(b"\x0b" + sample("mllp_orm_v23_zds.hl7") + b"\x1c\r")
    out = subprocess.run(
        [*_mllp_send(), "--port", str(lt.port), "--file", str(cr_file), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    reply = out.stdout.decode("latin-1").replace("\n", "\r")
    assert "MSA|AA|MSG00001" in reply
    # --loose: the same sample with LF line ends, as integrators keep them on disk
    out = subprocess.run(
        [*_mllp_send(), "--loose", "--port", str(lt.port), "--file",
         str(Path(__file__).parent / "samples" / "mllp_orm_v23_zds.hl7"), "127.0.0.1"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert "MSA|AA|MSG00001" in out.stdout.decode("latin-1").replace("\n", "\r")
    assert len(ids(redis_client, keys)) == 1  # the second send was a duplicate: not requeued


# -- the `mwl-bridge listen` process ----------------------------------------------------------


def test_listen_command_serves_and_stops_cleanly_on_sigterm(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "listen", "--redis-url", redis_url,
         "--mllp-host", "127.0.0.1", "--mllp-port", str(port),
         "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "listener did not start"
                time.sleep(0.05)
        with MllpClient(port) as c:
            assert ack_fields(c.send(msg("Q1")))["MSA"][1:3] == ["AA", "Q1"]
            assert ack_fields(c.send(msg("Q2", "2.6")))["MSA"][1] == "AR"
            # the role runtime: heartbeat for `status`, readiness and counters over HTTP
            assert list(redis_client.scan_iter(match=keys.heartbeat("listener", "*")))
            base = f"http://127.0.0.1:{metrics_port}"
            ready = json.loads(urllib.request.urlopen(base + "/readyz", timeout=5).read())
            assert ready["checks"]["mllp"] is True
            text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
            assert 'mwl_acks_total{code="AA"} 1.0' in text
            assert 'mwl_frames_rejected_total{reason="version"} 1.0' in text
            assert 'mwl_messages_received_total{message_type="ORM^O01"} 2.0' in text
            proc.send_signal(signal.SIGTERM)
            assert c.is_closed_by_peer(wait_s=10)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "mllp.stopped" in err
    assert "DOE" not in err and "JANE" not in err  # no patient data in INFO logs


def test_listen_command_port_in_use_is_a_config_error(redis_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "bridge", "listen", "--redis-url", redis_url,
             "--mllp-host", "127.0.0.1", "--mllp-port", str(port)],
            capture_output=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2  # `run` stops instead of restarting the child forever
    assert b"mllp.port" in proc.stderr


def test_listen_command_without_redis_url_is_a_config_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "listen", "--mllp-port", "0"],
        capture_output=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode == 2
    assert b"redis.url" in proc.stderr


def test_stop_drains_the_in_flight_message(redis_url: str, keys: Keys) -> None:
    """stop() lets a connection answer the message it is handling, then closes it."""
    lt = ListenerThread(
        listener_settings(redis_url, ack_mode="application", application_ack_timeout_s=10)
    )
    client = redis.Redis.from_url(redis_url)
    try:
        with MllpClient(lt.port) as busy, MllpClient(lt.port) as idle:
            idle_fut = _send_async_on(idle, msg("W0"))
            wait_until(lambda: client.llen(keys.ingest_order) == 1)
            first = client.lindex(keys.ingest_order, 0).decode()  # type: ignore[union-attr]
            client.rpush(keys.result(first), json.dumps({"ok": True}))
            assert ack_fields(idle_fut.result(10))["MSA"][1] == "AA"
            busy.write(b"\x0b" + msg("W1") + b"\x1c\r")
            wait_until(lambda: client.llen(keys.ingest_order) == 2)
            mid = client.lindex(keys.ingest_order, 1).decode()  # type: ignore[union-attr]
            stopping = asyncio.run_coroutine_threadsafe(
                lt.listener.stop(drain_timeout_s=10), lt.loop
            )
            assert idle.is_closed_by_peer(wait_s=5)  # idle connections go at once
            assert not stopping.done()  # ... the busy one is still being served
            client.rpush(keys.result(mid), json.dumps({"ok": True}))
            assert ack_fields(busy.read_ack())["MSA"][1:3] == ["AA", "W1"]
            assert busy.is_closed_by_peer(wait_s=5)
            stopping.result(10)
    finally:
        client.close()
        lt.loop.call_soon_threadsafe(lt.loop.stop)
        lt.thread.join(10)


def test_listener_to_worker_end_to_end(
    mllp: StartFn, redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """The intake contract as the workers consume it: what the listener stored becomes
    worklist items, charsets decoded right (Latin-1 without MSH-18, UTF-8 with)."""
    lt = mllp()
    with MllpClient(lt.port) as c:
        for name in (V23_SAMPLE, "mllp_orm_v251_utf8.hl7", "mllp_orm_latin1_no_msh18.hl7"):
            assert ack_fields(c.send(sample(name)))["MSA"][1] == "AA"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "worker", "--burst", "--redis-url", redis_url],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    items = [redis_client.get(k) for k in redis_client.scan_iter(match=keys.item("*"))]
    text = b"".join(i for i in items if i).decode("utf-8")
    assert len(items) == 3
    assert "GARÇON" in text and "MÜLLER" in text
    assert redis_client.zcard(keys.deadletter_index) == 0
