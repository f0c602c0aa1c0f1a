"""Procedure status back to the RIS: durable, ordered, at-least-once delivery over MLLP.

The RIS is python-hl7's asyncio MLLP server (``ris_server.FakeRis``), which dedupes on
MSH-10 like a RIS. Outbound records are written exactly as the workers' contract says
(``bridge.intake.outbound``: the hash, the order's line, the pending set, then a job
queued *by name*), and real rq workers deliver them: the delivery role's own worker
(``bridge.ops.roles.deliver``, rq's scheduler included) in burst mode, in this process.
Retry intervals are fractions of a second (rq schedules in whole seconds, so a retry
comes back within about a second).
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from pki_helpers import make_pki
from ris_server import FakeRis
from rq import Queue

from bridge.core import metrics
from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.intake import outbound as records
from bridge.mllp.client import parse_ack
from bridge.ops import roles
from bridge.ops.cli import main
from bridge.ops.redis_metrics import RedisCollector
from bridge.outbound import delivery, sweep
from bridge.store.keys import Keys
from bridge.worker import rq_compat

ORDER_A, ORDER_B = "P|PL100^RIS", "P|PL200^RIS"


def status_message(control_id: str, order: str, status: str) -> bytes:
    """An ORM^O01 status change (ORC-1 SC, ORC-5 IP/CM/DC) as the bridge sends it, with a
    fixed MSH-10; ``order`` is an order key ``P|<placer>^<namespace>``."""
    placer = order.split("|", 1)[1]
    segments = [
        f"MSH|^~\\&|MWL_BRIDGE|RADIOLOGY|RIS|HOSPITAL|20260705101500||ORM^O01|{control_id}"
        "|P|2.5.1",
        "PID|1||PAT001^^^HOSP^MR||DOE^JOHN",
        f"ORC|SC|{placer}|F{control_id}^MWL||{status}",
        f"OBR|1|{placer}|F{control_id}^MWL|CTHEAD^CT head",
    ]
    return "\r".join(segments).encode()


def write_outbound(
    client: redis.Redis,
    keys: Keys,
    order: str,
    control_id: str,
    status: str,
    enqueue: bool = True,
    created_at: float | None = None,
) -> str:
    """What the worker does, field by field: the record, the order's line, the pending
    set in one transaction, then the job by name (``enqueue=False``: the worker died
    between the two)."""
    msg_id = f"m{control_id}"
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        keys.outbound(msg_id),
        mapping={
            "raw": status_message(control_id, order, status),
            "order": order,
            "control_id": control_id,
            "type": "ORM^O01",
            "created_at": f"{created_at if created_at is not None else time.time():.6f}",
            "state": "pending",
            "attempts": "0",
        },
    )
    pipe.rpush(keys.outbound_queue(order), msg_id)
    pipe.sadd(keys.outbound_pending, order)
    pipe.execute()
    if enqueue:
        Queue(keys.outbound_queue_name(), connection=client).enqueue(
            "bridge.outbound.delivery.deliver_order", order,
            job_id=records.job_id(order, msg_id),
        )  # fmt: skip
    return msg_id


@pytest.fixture
def ris() -> Iterator[FakeRis]:
    server = FakeRis()
    yield server
    server.stop()


def out_settings(redis_url: str, port: int, **outbound: object) -> Settings:
    flags: dict[str, object] = {
        "redis.url": redis_url,
        "outbound.host": "127.0.0.1",
        "outbound.port": port,
        "outbound.connect_timeout_s": 2,
        "outbound.ack_timeout_s": 0.5,
        "outbound.retry_initial_s": 0.3,
        "outbound.retry_max_s": 1,
        "outbound.max_attempts": 5,
    }
    flags.update({f"outbound.{k}": v for k, v in outbound.items()})
    return load_settings(flags, env={})


@pytest.fixture
def deliver(
    redis_client: redis.Redis, redis_url: str, ris: FakeRis
) -> Callable[..., delivery.DeliveryContext]:
    """Install the delivery context for the test's RIS (``outbound.<name>=value``)."""
    logging.getLogger("rq").setLevel(logging.WARNING)

    def install(**outbound: object) -> delivery.DeliveryContext:
        return delivery.install(out_settings(redis_url, ris.port, **outbound), redis_client)

    return install


def drain(ctx: delivery.DeliveryContext, until: Callable[[], bool], timeout_s: float = 15) -> None:
    """Real rq workers in burst mode (each runs rq's scheduler first, so retries that
    are due come back) until ``until()`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        roles.deliver(ctx, burst=True)
        if until():
            return
        assert time.monotonic() < deadline, "timed out waiting for deliveries"
        time.sleep(0.1)


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def line(client: redis.Redis, keys: Keys, order: str) -> list[str]:
    return [m.decode() for m in client.lrange(keys.outbound_queue(order), 0, -1)]


def field(client: redis.Redis, keys: Keys, msg_id: str, name: str) -> str:
    return (client.hget(keys.outbound(msg_id), name) or b"").decode()


# -- in order, per order ----------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["lean-rq", "stock-rq"])
def test_statuses_arrive_in_order_per_order_whatever_the_reply_type(
    redis_client, keys, ris, deliver, fast, monkeypatch
) -> None:
    """Six messages, two orders, one job per message (several jobs per order); the RIS
    answers ACK, ORR^O02 and ORG^O20: MSA-1 is read from each. On rq's lean path and on
    its stock path (``bridge.worker.rq_compat``)."""
    monkeypatch.setattr(rq_compat, "FAST", fast)
    ris.answer("A2", "ORR")
    ris.answer("B1", "ORG")
    ctx = deliver()
    ids = []
    for ctl, order, status in (("A1", ORDER_A, "IP"), ("B1", ORDER_B, "IP"),
                               ("A2", ORDER_A, "CM"), ("B2", ORDER_B, "DC"),
                               ("A3", ORDER_A, "CM"), ("B3", ORDER_B, "DC")):  # fmt: skip
        ids.append(write_outbound(redis_client, keys, order, ctl, status))
    before = counter("mwl_outbound_messages_total", result="delivered")
    drain(ctx, lambda: len(ris.applied) == 6)
    assert ris.statuses("PL100") == ["IP", "CM", "CM"]
    assert [c for c in ris.control_ids() if c.startswith("A")] == ["A1", "A2", "A3"]
    assert [c for c in ris.control_ids() if c.startswith("B")] == ["B1", "B2", "B3"]
    assert sorted(ris.control_ids()) == sorted(ris.applied)  # each sent exactly once
    for msg_id in ids:
        assert field(redis_client, keys, msg_id, "state") == "delivered"
        assert field(redis_client, keys, msg_id, "attempts") == "1"
        assert 0 < redis_client.ttl(keys.outbound(msg_id)) <= 86400
    assert field(redis_client, keys, "mA2", "reply") == "AA"
    assert line(redis_client, keys, ORDER_A) == line(redis_client, keys, ORDER_B) == []
    assert redis_client.smembers(keys.outbound_pending) == set()
    assert not redis_client.exists(keys.outbound_lock(ORDER_A))
    assert counter("mwl_outbound_messages_total", result="delivered") - before == 6
    assert redis_client.hget(keys.outbound_stats, "delivered") == b"6"


def test_the_line_is_followed_not_the_job_order(redis_client, keys, ris, deliver) -> None:
    """Jobs queued in the reverse order of the messages (a retry, the sweep, a replay can
    queue them in any order) still deliver the line in order."""
    ctx = deliver()
    for ctl, status in (("C1", "IP"), ("C2", "CM")):
        write_outbound(redis_client, keys, ORDER_A, ctl, status, enqueue=False)
    queue = Queue(keys.outbound_queue_name(), connection=redis_client)
    for msg_id in ("mC2", "mC1"):
        queue.enqueue(records.DELIVER_FUNC, ORDER_A, job_id=records.job_id(ORDER_A, msg_id))
    drain(ctx, lambda: len(ris.applied) == 2)
    assert ris.control_ids() == ["C1", "C2"]


# -- rejected: dead letter, the order moves on -------------------------------------------
def test_ae_is_dead_lettered_with_the_ris_code_and_the_next_message_still_goes(
    redis_client, keys, ris, deliver, redis_url, capsys
) -> None:
    ris.answer("D1", "AE")
    ctx = deliver()
    write_outbound(redis_client, keys, ORDER_A, "D1", "IP")
    write_outbound(redis_client, keys, ORDER_A, "D2", "CM")
    before = counter("mwl_outbound_messages_total", result="rejected")
    drain(ctx, lambda: "D2" in ris.applied)
    assert ris.control_ids() == ["D1", "D2"]  # no resend of an AE
    dead = deadletter.get(redis_client, keys, "mD1")
    assert dead is not None
    assert (dead.stage, dead.code, dead.location) == ("outbound", 204, "ORC-2")
    assert dead.raw == status_message("D1", ORDER_A, "IP")
    assert dead.reason == "the RIS answered AE with ERR code 204"
    assert {k: dead.meta[k] for k in ("message_id", "order", "control_id", "message_type",
                                      "outbound", "attempts", "reply_code", "reply_type")} == {
        "message_id": "mD1", "order": ORDER_A, "control_id": "D1", "message_type": "ORM^O01",
        "outbound": "1", "attempts": "1", "reply_code": "AE", "reply_type": "ACK^O01^ACK",
    }  # fmt: skip
    assert dead.meta["destination"] == f"127.0.0.1:{ris.port}"
    assert "204^Unknown key identifier" in dead.meta["reply_errors"]
    assert field(redis_client, keys, "mD1", "state") == "dead_lettered"
    assert field(redis_client, keys, "mD2", "state") == "delivered"
    assert counter("mwl_outbound_messages_total", result="rejected") - before == 1
    assert main(["deadletter", "list", "--json", "--redis-url", redis_url]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["id"], row["stage"], row["code"], row["control_id"]) == ("mD1", "outbound",
                                                                          204, "D1")  # fmt: skip


# -- transient failures: backoff, the message stays at the head ---------------------------
def test_ar_a_wrong_msa2_and_a_timeout_are_retried_with_backoff_while_later_ones_wait(
    redis_client, keys, ris, deliver
) -> None:
    ris.answer("E1", "AR", "mismatch", "silent")
    ctx = deliver(retry_initial_s=0.5, retry_max_s=2)
    write_outbound(redis_client, keys, ORDER_A, "E1", "IP")
    write_outbound(redis_client, keys, ORDER_A, "E2", "CM")
    before = counter("mwl_outbound_messages_total", result="retried")

    roles.deliver(ctx, burst=True)
    assert ris.control_ids() == ["E1"]  # E2 waits behind E1
    assert line(redis_client, keys, ORDER_A) == ["mE1", "mE2"]
    assert field(redis_client, keys, "mE1", "attempts") == "1"
    assert field(redis_client, keys, "mE1", "last_error") == "reject:AR"
    due = float(field(redis_client, keys, "mE1", "next_attempt_at"))
    assert 0.4 < due - float(field(redis_client, keys, "mE1", "last_attempt_at")) < 0.6
    scheduled = Queue(keys.outbound_queue_name(), connection=redis_client).scheduled_job_registry
    assert scheduled.get_job_ids() == [records.job_id(ORDER_A, "mE1-a1")]

    # A job for the new message E2 finds E1 not due yet: nothing is sent before the backoff.
    records.enqueue_delivery(redis_client, keys, ctx.out, ORDER_A, "extra")
    roles.deliver(ctx, burst=True)
    assert ris.control_ids() == ["E1"]

    drain(ctx, lambda: "E2" in ris.applied)
    assert ris.control_ids() == ["E1", "E1", "E1", "E1", "E2"]
    tries = ris.times("E1")
    waits = [b - a for a, b in itertools.pairwise(tries)]
    # Backoff 0.5, 1, 2 s after the 1st, 2nd and 3rd failure (the 3rd try waits 0.5 s for
    # its reply first): never earlier.
    assert waits[0] >= 0.5 and waits[1] >= 1.0 and waits[2] >= 2.0 + 0.5, waits
    assert counter("mwl_outbound_messages_total", result="retried") - before == 3
    assert counter("mwl_outbound_send_failures_total", kind="invalid_reply") >= 1
    assert counter("mwl_outbound_send_failures_total", kind="timeout") >= 1
    assert field(redis_client, keys, "mE1", "attempts") == "4"
    assert field(redis_client, keys, "mE1", "last_error") == "timeout"
    assert field(redis_client, keys, "mE1", "state") == "delivered"


def test_a_dropped_connection_is_resent_with_the_same_msh10_and_applied_once(
    redis_client, keys, ris, deliver
) -> None:
    """The RIS applies the first try and drops the connection before its ACK (the ACK is
    lost): the resend carries the same bytes, so the RIS recognises it."""
    ris.answer("F1", "drop")
    ctx = deliver(retry_initial_s=0.2)
    write_outbound(redis_client, keys, ORDER_A, "F1", "IP")
    write_outbound(redis_client, keys, ORDER_A, "F2", "CM")
    drain(ctx, lambda: "F2" in ris.control_ids())
    assert ris.control_ids() == ["F1", "F1", "F2"]
    first, resend = (r.raw for r in ris.received[:2])
    assert first == resend == status_message("F1", ORDER_A, "IP")
    assert ris.applied == ["F1", "F2"]  # each status once
    assert field(redis_client, keys, "mF1", "last_error") == "dropped:ConnectionError"
    assert field(redis_client, keys, "mF1", "state") == "delivered"


def test_retries_run_out_then_replay_puts_it_back_and_it_is_delivered(
    redis_client, keys, ris, deliver, redis_url, capsys
) -> None:
    ris.answer("G1", "AR", "AR")
    ctx = deliver(max_attempts=2, retry_initial_s=0.2)
    write_outbound(redis_client, keys, ORDER_A, "G1", "IP")
    write_outbound(redis_client, keys, ORDER_A, "G2", "CM")
    before = counter("mwl_outbound_messages_total", result="dead_lettered")
    drain(ctx, lambda: "G2" in ris.applied)
    assert ris.control_ids() == ["G1", "G1", "G2"]
    dead = deadletter.get(redis_client, keys, "mG1")
    assert dead is not None and dead.stage == "outbound" and dead.code == 207
    assert dead.reason == (
        "no positive reply from the RIS after 2 sends (outbound.max_attempts); last: reject:AR"
    )
    assert dead.meta["attempts"] == "2" and dead.meta["reply_code"] == "AR"
    assert counter("mwl_outbound_messages_total", result="dead_lettered") - before == 1

    code = main(["deadletter", "replay", "mG1", "--json", "--redis-url", redis_url])
    out, err = capsys.readouterr()
    assert code == 0, err
    replayed = json.loads(out)["message_id"]
    assert deadletter.get(redis_client, keys, "mG1") is None
    assert redis_client.llen(keys.ingest_order) == 0  # not fed to the intake
    assert line(redis_client, keys, ORDER_A) == [replayed]
    assert field(redis_client, keys, replayed, "replay_of") == "mG1"
    drain(ctx, lambda: "G1" in ris.applied)
    assert ris.control_ids() == ["G1", "G1", "G2", "G1"]
    assert ris.received[-1].raw == status_message("G1", ORDER_A, "IP")  # same MSH-10
    assert field(redis_client, keys, replayed, "state") == "delivered"


def test_a_lost_record_is_dead_lettered_and_its_replay_refused(
    redis_client, keys, ris, deliver, redis_url, capsys
) -> None:
    ctx = deliver()
    write_outbound(redis_client, keys, ORDER_A, "H1", "IP")
    write_outbound(redis_client, keys, ORDER_A, "H2", "CM")
    redis_client.delete(keys.outbound("mH1"))
    drain(ctx, lambda: "H2" in ris.applied)
    assert ris.control_ids() == ["H2"]
    dead = deadletter.get(redis_client, keys, "mH1")
    assert dead is not None and dead.raw == b"" and "was gone" in dead.reason
    assert redis_client.hget(keys.outbound_stats, "lost") == b"1"
    assert main(["deadletter", "replay", "mH1", "--redis-url", redis_url]) == 1
    assert "not replayed" in capsys.readouterr().err


# -- nobody loses a message --------------------------------------------------------------
def test_the_sweep_queues_an_order_whose_job_was_lost(redis_client, keys, ris, deliver) -> None:
    ctx = deliver(sweep_after_s=30)
    created = time.time()
    write_outbound(redis_client, keys, ORDER_A, "J1", "IP", enqueue=False, created_at=created)
    roles.deliver(ctx, burst=True)
    assert ris.control_ids() == []  # the worker died before its enqueue: no job

    assert sweep.sweep(redis_client, keys, ctx.out, created + 29) == []  # not overdue yet
    redis_client.set(keys.outbound_lock(ORDER_A), "someone-else", px=300)
    assert sweep.sweep(redis_client, keys, ctx.out, created + 31) == []  # a job holds it
    time.sleep(0.35)  # that job died: its lock expires
    assert sweep.sweep(redis_client, keys, ctx.out, created + 31) == [ORDER_A]
    assert sweep.sweep(redis_client, keys, ctx.out, created + 32) == []  # swept just now
    roles.deliver(ctx, burst=True)
    assert ris.applied == ["J1"]
    assert redis_client.smembers(keys.outbound_pending) == set()


def test_the_delivery_maintenance_sweeps_a_head_overdue_after_its_backoff(
    redis_client, keys, ris, redis_url
) -> None:
    """A retry in backoff is not swept while it is due later; once it is overdue by
    sweep_after_s (its scheduled job was lost) the maintenance step queues it."""
    logging.getLogger("rq").setLevel(logging.WARNING)
    offset = [0.0]
    ctx = delivery.install(
        out_settings(redis_url, ris.port, sweep_after_s=30, retry_initial_s=60, retry_max_s=60),
        redis_client,
        clock=lambda: time.time() + offset[0],
    )
    ris.answer("K1", "AR")
    write_outbound(redis_client, keys, ORDER_A, "K1", "IP")
    roles.deliver(ctx, burst=True)
    assert ris.control_ids() == ["K1"]
    Queue(keys.outbound_queue_name(), connection=redis_client).scheduled_job_registry.remove(
        records.job_id(ORDER_A, "mK1-a1"), delete_job=True
    )  # the scheduled retry is lost
    offset[0] = 60 + 29  # due, but not overdue by sweep_after_s
    roles.outbound_maintenance(ctx)
    assert Queue(keys.outbound_queue_name(), connection=redis_client).count == 0
    offset[0] = 60 + 31
    roles.outbound_maintenance(ctx)
    assert Queue(keys.outbound_queue_name(), connection=redis_client).count == 1
    roles.deliver(ctx, burst=True)
    assert ris.control_ids() == ["K1", "K1"] and ris.applied == ["K1"]


def test_a_busy_lock_sends_nothing_and_its_holder_sees_late_arrivals(
    redis_client, keys, ris, deliver
) -> None:
    ctx = deliver()
    write_outbound(redis_client, keys, ORDER_A, "L1", "IP", enqueue=False)
    redis_client.set(keys.outbound_lock(ORDER_A), "other", px=5000)
    assert delivery.deliver_order(ORDER_A) == "busy"
    assert ris.control_ids() == []
    redis_client.delete(keys.outbound_lock(ORDER_A))
    # The holder's last look is atomic with its release: a message that arrived after
    # it read an empty line keeps the lock with it, and it goes on.
    job = delivery.OrderDelivery(ctx, ORDER_B)
    assert redis_client.set(job.lock_key, job.token, nx=True, px=5000)
    write_outbound(redis_client, keys, ORDER_B, "L2", "IP", enqueue=False)
    assert job._release("if_empty") is False
    assert redis_client.get(job.lock_key) == job.token.encode()
    assert job._drain() == "done"
    assert ris.applied == ["L2"]
    assert redis_client.smembers(keys.outbound_pending) == {ORDER_A.encode()}


def test_two_orders_deliver_independently(redis_client, keys, ris, deliver) -> None:
    ris.answer("M1", "AR", "AR")
    ctx = deliver(retry_initial_s=0.3)
    write_outbound(redis_client, keys, ORDER_A, "M1", "IP")
    write_outbound(redis_client, keys, ORDER_A, "M2", "CM")
    write_outbound(redis_client, keys, ORDER_B, "N1", "IP")
    write_outbound(redis_client, keys, ORDER_B, "N2", "CM")
    roles.deliver(ctx, burst=True)
    assert ris.applied == ["N1", "N2"]  # B's line went while A's head waits
    assert line(redis_client, keys, ORDER_A) == ["mM1", "mM2"]
    drain(ctx, lambda: "M2" in ris.applied)
    assert ris.statuses("PL100") == ["IP", "IP", "IP", "CM"]


def test_tls_with_a_client_certificate(redis_client, keys, redis_url, pki) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server_ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ris = FakeRis(tls=server_ctx)
    try:
        common = {"tls": True, "tls_ca_file": str(pki / "ca.pem"), "retry_initial_s": 0.2}
        ctx = delivery.install(out_settings(redis_url, ris.port, **common), redis_client)
        write_outbound(redis_client, keys, ORDER_A, "T1", "IP")
        # No client certificate: the RIS refuses the handshake (with TLS 1.3 the client
        # learns it on its first read, so the send fails as a dropped connection).
        roles.deliver(ctx, burst=True)
        assert ris.applied == []
        assert field(redis_client, keys, "mT1", "last_error").split(":")[0] in (
            "connect", "dropped",
        )  # fmt: skip
        assert field(redis_client, keys, "mT1", "state") == "pending"
        ctx = delivery.install(
            out_settings(
                redis_url, ris.port, **common, tls_cert_file=str(pki / "client.pem"),
                tls_key_file=str(pki / "client.key"),
            ),
            redis_client,
        )  # fmt: skip
        drain(ctx, lambda: ris.applied == ["T1"])
    finally:
        ris.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- status and metrics -----------------------------------------------------------------
def test_status_and_metrics_show_the_backlog_and_failures(
    redis_client, keys, redis_url, capsys, monkeypatch
) -> None:
    from redis_server import free_port

    logging.getLogger("rq").setLevel(logging.WARNING)
    port = free_port()  # nobody listens: connection refused
    settings = out_settings(redis_url, port, retry_initial_s=60, retry_max_s=60)
    ctx = delivery.install(settings, redis_client)
    created = time.time() - 30
    for ctl, order in (("S1", ORDER_A), ("S2", ORDER_A), ("S3", ORDER_B)):
        write_outbound(redis_client, keys, order, ctl, "IP", created_at=created)
    roles.deliver(ctx, burst=True)

    monkeypatch.setenv("MWL_BRIDGE_OUTBOUND_HOST", "127.0.0.1")
    flags = ["--redis-url", redis_url]
    assert main(["status", "--json", *flags]) == 0
    o = json.loads(capsys.readouterr().out)["outbound"]
    assert (o["enabled"], o["destination"], o["destination_source"]) == (
        True, f"127.0.0.1:{port}", "delivery process",
    )  # fmt: skip
    assert (o["backlog"], o["orders"], o["retried"], o["delivered"]) == (3, 2, 2, 0)
    assert o["oldest_age_s"] >= 30
    assert o["last_error"] == "connect:ConnectionRefusedError"
    assert o["queue"]["scheduled"] == 2 and o["workers"] == 0
    assert main(["status", *flags]) == 0
    text = capsys.readouterr().out
    assert f"Outbound     to 127.0.0.1:{port}, on: 3 waiting in 2 order(s), oldest 3" in text

    samples = {
        s.name: s.value
        for family in RedisCollector(redis_client, keys).collect()
        for s in family.samples
    }
    assert samples["mwl_outbound_backlog"] == 3
    assert samples["mwl_outbound_orders_waiting"] == 2
    assert samples["mwl_outbound_oldest_age_seconds"] >= 30
    assert counter("mwl_outbound_send_failures_total", kind="connect") >= 2


def test_status_says_off_when_nothing_is_configured(redis_url, capsys) -> None:
    assert main(["status", "--json", "--redis-url", redis_url]) == 0
    o = json.loads(capsys.readouterr().out)["outbound"]
    assert (o["enabled"], o["destination"], o["backlog"]) == (False, None, 0)
    assert main(["status", "--redis-url", redis_url]) == 0
    assert "Outbound     off (outbound.host is empty)" in capsys.readouterr().out


# -- who runs the jobs ------------------------------------------------------------------
def test_ingest_workers_never_take_outbound_jobs(redis_client, keys, settings) -> None:
    """The ingest worker listens on its own queue only (BLMOVE, batch claim): an
    outbound job stays for the delivery process."""
    from bridge.worker import rq_worker

    write_outbound(redis_client, keys, ORDER_A, "W1", "IP")
    ctx = rq_worker.install(settings, redis_client)
    worker = rq_worker.make_worker(ctx)
    assert [q.name for q in worker.queues] == [keys.queue_name()]
    worker.work(burst=True, logging_level="WARNING")
    assert Queue(keys.outbound_queue_name(), connection=redis_client).job_ids == [
        records.job_id(ORDER_A, "mW1")
    ]


def test_the_outbound_verb_needs_a_host(redis_url, capsys) -> None:
    assert main(["outbound", "--burst", "--redis-url", redis_url]) == 2
    assert "invalid setting outbound.host" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MWL_BRIDGE_OUTBOUND_PORT": "0"}, "outbound.port: 0 is not a TCP port"),
        ({"MWL_BRIDGE_OUTBOUND_MAX_ATTEMPTS": "0"}, "outbound.max_attempts: 0 must be at least"),
        ({"MWL_BRIDGE_OUTBOUND_ACK_TIMEOUT_S": "0"}, "outbound.ack_timeout_s: 0.0 must be more"),
        ({"MWL_BRIDGE_OUTBOUND_TLS_CA_FILE": "/x.pem"}, "outbound.tls_ca_file: is set but"),
        ({"MWL_BRIDGE_OUTBOUND_TLS": "true", "MWL_BRIDGE_OUTBOUND_TLS_KEY_FILE": "k.pem"},
         "outbound.tls_key_file: is set without"),
        ({"MWL_BRIDGE_OUTBOUND_RETRY_MAX_S": "1"}, "outbound.retry_max_s: must be at least"),
    ],
)  # fmt: skip
def test_invalid_outbound_settings_exit_2_naming_the_setting(
    env, message, redis_url, capsys, monkeypatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["status", "--redis-url", redis_url]) == 2
    assert message in capsys.readouterr().err


def test_a_tls_file_that_cannot_be_loaded_exits_2(
    redis_url, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("MWL_BRIDGE_OUTBOUND_TLS", "true")
    monkeypatch.setenv("MWL_BRIDGE_OUTBOUND_TLS_CA_FILE", str(tmp_path / "nope.pem"))
    args = ["outbound", "--burst", "--redis-url", redis_url, "--outbound-host", "127.0.0.1"]
    assert main(args) == 2
    assert "invalid setting outbound.tls_ca_file: cannot be loaded" in capsys.readouterr().err


# -- replies ----------------------------------------------------------------------------
def test_parse_ack_reads_msa_and_err_from_any_reply() -> None:
    v25 = parse_ack(
        b"MSH|^~\\&|RIS|H|MWL|R|20260705||ACK^O01^ACK|9|P|2.5.1\rMSA|AE|C1|text\r"
        b"ERR||OBR^1^4|103^Table value not found^HL70357|E"
    )
    assert (v25.code, v25.control_id, v25.error_code, v25.error_location) == (
        "AE", "C1", "103", "OBR-4",
    )  # fmt: skip
    v23 = parse_ack(
        b"MSH|^~\\&|RIS|H|MWL|R|20260705||ORR^O02|9|P|2.3\rMSA|AR|C2\rERR|ORC^1^2^204&x&HL70357"
        b"\rPID|1\rORC|UA|P1"
    )
    assert (v23.code, v23.control_id, v23.error_code, v23.error_location, v23.message_type) == (
        "AR", "C2", "204", "ORC-2", "ORR^O02",
    )  # fmt: skip
    assert parse_ack(b"MSH|^~\\&|RIS\rPID|1").code == ""


@pytest.mark.slow
def test_run_delivers_when_outbound_host_is_set(
    redis_client, keys, redis_url, ris, tmp_path
) -> None:
    """``mwl-bridge run`` starts the delivery process by itself once ``outbound.host`` is
    set: a message written and queued as the workers do reaches the RIS."""
    from bridge_process import Run, wait_for

    run = Run(tmp_path, "--workers", "1", "--redis-url", redis_url,
              "--outbound-host", "127.0.0.1", "--outbound-port", str(ris.port))  # fmt: skip
    try:
        assert wait_for(lambda: "Stop with Ctrl-C" in run.text(), 30), run.text()
        assert f"Status to the RIS  127.0.0.1:{ris.port}" in run.text()
        assert wait_for(lambda: "child.started child=outbound" in run.text(), 10), run.text()
        write_outbound(redis_client, keys, ORDER_A, "R1", "CM")
        assert wait_for(lambda: ris.applied == ["R1"], 20), run.text()
        assert wait_for(lambda: any(
            k.startswith(b"mwl:hb:outbound:") for k in redis_client.scan_iter("mwl:hb:*")
        ), 10)  # fmt: skip
        assert run.terminate() == 0
    finally:
        run.kill()
