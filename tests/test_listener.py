"""The MLLP listener on real sockets against a real redis-server.

Each test states one rule of issue 3 (framing, gate, durability, duplicates, ACK content,
connection limits) and checks both what the sender sees and what Redis holds.
"""

from __future__ import annotations

import logging
import socket

import pytest
import redis
from mllp_harness import (
    CR,
    FS,
    VT,
    MllpClient,
    StartFn,
    ack_fields,
    msg,
    sample,
    wait_until,
)
from rq import Queue

from bridge.intake import deadletter
from bridge.intake.submit import JOB_FUNC
from bridge.store.keys import Keys

V23 = "mllp_orm_v23_zds.hl7"
V251 = "mllp_orm_v251_utf8.hl7"
LATIN1 = "mllp_orm_latin1_no_msh18.hl7"


def ingest(client: redis.Redis, keys: Keys) -> list[str]:
    return [i.decode() for i in client.lrange(keys.ingest_order, 0, -1)]


def stored(client: redis.Redis, keys: Keys, message_id: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in client.hgetall(keys.message(message_id)).items()}


def dead_letters(client: redis.Redis, keys: Keys) -> list[deadletter.DeadLetter]:
    return [deadletter.get(client, keys, i) for i in deadletter.list_ids(client, keys)]  # type: ignore[misc]


# -- durable intake and Redis state ----------------------------------------------------------


def test_accepted_message_is_stored_ordered_and_queued(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    raw = sample(V23)
    with MllpClient(lt.port) as c:
        ack = ack_fields(c.send(raw))
    assert ack["MSA"][1:3] == ["AA", "MSG00001"]
    assert ack["MSH"][8] == "ACK"  # v2.3: no trigger/structure
    [mid] = ingest(redis_client, keys)
    h = stored(redis_client, keys, mid)
    assert h["raw"] == raw
    assert {k: v.decode() for k, v in h.items() if k not in ("raw", "received_at", "peer")} == {
        "sending_app": "RIS",
        "sending_facility": "RADIOLOGY",
        "receiving_app": "MWL_BRIDGE",
        "receiving_facility": "HOSPITAL",
        "control_id": "MSG00001",
        "message_type": "ORM^O01",
        "version": "2.3",
        "charset": "",
        "processing_id": "P",
        "ack_mode": "commit",
        # the charset decision made at ACK time, which the worker decodes with
        "charset_used": '{"names":["8859/1"],"scheme":"","source":"mllp.default_charset"}',
    }
    assert float(h["received_at"]) > 0
    assert h["peer"].decode().startswith("127.0.0.1:")
    dedupe = redis_client.get(keys.dedupe("RIS|RADIOLOGY", "MSG00001"))
    assert dedupe is not None and dedupe.decode().endswith("|" + mid)
    assert 0 < redis_client.ttl(keys.dedupe("RIS|RADIOLOGY", "MSG00001")) <= 7 * 86400
    queue = Queue(keys.queue_name(), connection=redis_client)
    assert queue.job_ids == [f"msg-{mid}"]
    job = queue.fetch_job(f"msg-{mid}")
    assert job is not None
    assert (job.func_name, job.args) == (JOB_FUNC, (mid,))


@pytest.mark.parametrize("sep", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_segment_separators(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, sep: bytes
) -> None:
    lt = mllp()
    raw = sample(V23, sep)
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(raw))["MSA"][1] == "AA"
    [mid] = ingest(redis_client, keys)
    assert stored(redis_client, keys, mid)["raw"] == raw  # kept exactly; workers normalise


def test_latin1_without_msh18(mllp: StartFn, redis_client: redis.Redis, keys: Keys) -> None:
    lt = mllp()
    raw = sample(LATIN1)
    with MllpClient(lt.port) as c:
        ack = ack_fields(c.send(raw))
    assert ack["MSA"][1:3] == ["AA", "MSG00003"]
    assert ack["MSH"][8] == "ACK"  # 2.3.1 < 2.4
    [mid] = ingest(redis_client, keys)
    h = stored(redis_client, keys, mid)
    assert h["raw"] == raw and h["charset"] == b"" and h["version"] == b"2.3.1"


def test_latin1_with_msh18_ack_in_latin1(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    raw = "MSH|^~\\&|RIS|KÖLN|MWL|HÔPITAL|||ORM^O01|L1|P|2.4|||||DE|8859/1\rPID|1||X||ÉLISE\r"
    with MllpClient(lt.port) as c:
        ack = c.send(raw.encode("latin-1"))
    fields = ack_fields(ack, "latin-1")
    assert fields["MSA"][1] == "AA"
    assert fields["MSH"][2:6] == ["MWL", "HÔPITAL", "RIS", "KÖLN"]
    assert fields["MSH"][8] == "ACK^O01^ACK"
    assert fields["MSH"][17] == "8859/1"
    assert "KÖLN".encode("latin-1") in ack
    [mid] = ingest(redis_client, keys)
    assert stored(redis_client, keys, mid)["charset"] == b"8859/1"


def test_unicode_utf8_in_msh18(mllp: StartFn, redis_client: redis.Redis, keys: Keys) -> None:
    lt = mllp()
    raw = sample(V251).replace(b"|RADIOLOGY|", "|RADIOLOGÍA|".encode())
    with MllpClient(lt.port) as c:
        ack = c.send(raw)
    fields = ack_fields(ack, "utf-8")
    assert fields["MSA"][1:3] == ["AA", "MSG00002"]
    assert fields["MSH"][8] == "ACK^O01^ACK"
    assert fields["MSH"][17] == "UNICODE UTF-8"
    assert fields["MSH"][5] == "RADIOLOGÍA"  # encoded in UTF-8 like the inbound message
    [mid] = ingest(redis_client, keys)
    h = stored(redis_client, keys, mid)
    assert h["raw"] == raw and h["charset"] == b"UNICODE UTF-8" and h["version"] == b"2.5.1"


def test_undecodable_byte_gets_a_nak_and_a_dead_letter(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    raw = sample(V251).replace("MÜLLER".encode(), "M\xdcLLER".encode("latin-1"))
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(raw), "utf-8")
    assert fields["MSA"][1:3] == ["AE", "MSG00002"]
    assert fields["ERR"][3].startswith("102^")
    assert ingest(redis_client, keys) == []
    [dl] = dead_letters(redis_client, keys)
    assert dl.raw == raw and dl.stage == "listener" and dl.code == 102
    assert dl.meta["control_id"] == "MSG00002"


def test_unknown_charset_in_msh18_is_ae_103(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    raw = msg("U1", "2.5", "|||||DE|KLINGON")
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(raw))
    assert fields["MSA"][1:3] == ["AE", "U1"]
    assert fields["ERR"][2:4] == ["MSH^1^18", "103^Table value not found^HL70357"]
    assert ingest(redis_client, keys) == []
    [dl] = dead_letters(redis_client, keys)
    assert dl.code == 103 and dl.meta["charset"] == "KLINGON"


def test_undecodable_msh_gets_nak_echoing_control_id(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    raw = msg("U2", "2.5", "|||||DE|UNICODE UTF-8").replace(b"|RAD|", b"|R\xc9D|")
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(raw))
    assert fields["MSA"][1:3] == ["AE", "U2"]
    assert fields["ERR"][3].startswith("102^")
    assert ingest(redis_client, keys) == []
    assert len(dead_letters(redis_client, keys)) == 1


@pytest.mark.parametrize(
    ("version", "normalised", "msh9"),
    [
        ("2.3", "2.3", "ACK"),
        ("2.3.0", "2.3", "ACK"),
        ("2.3.1", "2.3.1", "ACK"),
        ("2.5.1", "2.5.1", "ACK^O01^ACK"),
    ],
)
def test_versions(
    mllp: StartFn,
    redis_client: redis.Redis,
    keys: Keys,
    version: str,
    normalised: str,
    msh9: str,
) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(msg("V1", version)))
    assert fields["MSA"][1] == "AA"
    assert fields["MSH"][8] == msh9
    assert fields["MSH"][11] == version  # MSH-12 copied as received
    [mid] = ingest(redis_client, keys)
    assert stored(redis_client, keys, mid)["version"] == normalised.encode()


@pytest.mark.parametrize(
    ("old", "new", "err", "where"),
    [
        (b"|ORM^O01|", b"|MDM^T02|", "200", "MSH^1^9"),
        (b"|ORM^O01|", b"|ORM^O02|", "201", "MSH^1^9"),
        (b"|P|2.5", b"|X|2.5", "202", "MSH^1^11"),
        (b"|P|2.5", b"|P|2.6", "203", "MSH^1^12"),
    ],
    ids=["type", "event", "processing-id", "version"],
)
def test_gate_rejects_with_ar(
    mllp: StartFn,
    redis_client: redis.Redis,
    keys: Keys,
    old: bytes,
    new: bytes,
    err: str,
    where: str,
) -> None:
    lt = mllp()
    raw = msg("G1", "2.5").replace(old, new)
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(raw))
        assert fields["MSA"][1:3] == ["AR", "G1"]
        assert fields["ERR"][2] == where
        assert fields["ERR"][3].split("^")[0] == err
        assert fields["ERR"][4] == "E"
        # the connection stays usable after a reject
        assert ack_fields(c.send(msg("G2", "2.5")))["MSA"][1] == "AA"
    assert len(ingest(redis_client, keys)) == 1
    [dl] = dead_letters(redis_client, keys)
    assert dl.raw == raw and dl.code == int(err) and dl.meta["control_id"] == "G1"


def test_gate_reject_pre_25_uses_err1(mllp: StartFn) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(msg("G3", "2.3").replace(b"|P|2.3", b"|P|2.2")))
    assert fields["MSA"][1] == "AR"
    assert fields["ERR"][1] == "MSH^1^12^203&Unsupported version id&HL70357"


def test_reject_code_configurable(mllp: StartFn) -> None:
    lt = mllp(reject_code="AE")
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("G4", "2.6")))["MSA"][1] == "AE"


def test_ack_texts_configurable(mllp: StartFn) -> None:
    lt = mllp(ack_texts={"0": "Thanks", "203": "Send 2.5.1 please"})
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("K1")))["MSA"][1:4] == ["AA", "K1", "Thanks"]
        assert ack_fields(c.send(msg("K2", "2.6")))["MSA"][1:4] == ["AR", "K2", "Send 2.5.1 please"]


def test_garbage_frame_gets_nak_and_dead_letter(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(b"this is not HL7"))
        assert fields["MSA"][1:3] == ["AR", ""]
        assert fields["ERR"][3].startswith("100^")
        assert ack_fields(c.send(msg("OK1")))["MSA"][1] == "AA"
    [dl] = dead_letters(redis_client, keys)
    assert dl.raw == b"this is not HL7" and dl.stage == "listener"


# -- duplicates -----------------------------------------------------------------------------


def test_duplicate_same_content_acked_not_queued_twice(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("D1")))["MSA"][1:3] == ["AA", "D1"]
    with MllpClient(lt.port) as c:  # resend after a "lost" ACK, on a new connection
        assert ack_fields(c.send(msg("D1")))["MSA"][1:3] == ["AA", "D1"]
    assert len(ingest(redis_client, keys)) == 1
    assert Queue(keys.queue_name(), connection=redis_client).count == 1


def test_duplicate_control_id_different_content_is_ae_205(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("D2")))["MSA"][1] == "AA"
        fields = ack_fields(c.send(msg("D2", body="other")))
    assert fields["MSA"][1:3] == ["AE", "D2"]
    assert fields["ERR"][1] == "MSH^1^10^205&Duplicate key identifier&HL70357"
    assert len(ingest(redis_client, keys)) == 1
    [dl] = dead_letters(redis_client, keys)
    assert dl.code == 205 and dl.raw == msg("D2", body="other")


# -- framing over real sockets --------------------------------------------------------------


def test_junk_before_vt_is_skipped(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    lt = mllp()
    caplog.set_level(logging.WARNING, logger="bridge.mllp.listener")
    with MllpClient(lt.port) as c:
        c.write(b"\x00garbage\r\n" + VT + msg("J1") + FS + CR)
        assert ack_fields(c.read_ack())["MSA"][1:3] == ["AA", "J1"]
    assert len(ingest(redis_client, keys)) == 1
    assert any(r.getMessage() == "mllp.junk_skipped" for r in caplog.records)


def test_two_frames_in_one_write_answered_in_order(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        c.write(VT + msg("T1") + FS + CR + VT + msg("T2") + FS + CR)
        assert ack_fields(c.read_ack())["MSA"][2] == "T1"
        assert ack_fields(c.read_ack())["MSA"][2] == "T2"
    ids = ingest(redis_client, keys)
    assert [stored(redis_client, keys, i)["control_id"] for i in ids] == [b"T1", b"T2"]


def test_one_frame_in_one_byte_writes(mllp: StartFn) -> None:
    lt = mllp()
    data = VT + msg("B1") + FS + CR
    with MllpClient(lt.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            c.write(data[i : i + 1])
        assert ack_fields(c.read_ack())["MSA"][1:3] == ["AA", "B1"]


def test_missing_final_cr_accepted_when_configured(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp(accept_missing_final_cr=True)
    with MllpClient(lt.port) as c:
        c.write(VT + msg("M1") + FS)  # nothing follows: accepted after the short wait
        assert ack_fields(c.read_ack())["MSA"][1:3] == ["AA", "M1"]
        c.write(VT + msg("M2") + FS + VT + msg("M3") + FS + CR)  # next VT ends it at once
        assert ack_fields(c.read_ack())["MSA"][1:3] == ["AA", "M2"]
        assert ack_fields(c.read_ack())["MSA"][1:3] == ["AA", "M3"]
    assert len(ingest(redis_client, keys)) == 3


def test_missing_final_cr_rejected_by_default(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        c.write(VT + msg("M4") + FS)
        fields = ack_fields(c.read_ack())
        assert fields["MSA"][1:3] == ["AR", "M4"]
        assert fields["ERR"][1].endswith("100&Segment sequence error&HL70357")
    assert ingest(redis_client, keys) == []
    assert len(dead_letters(redis_client, keys)) == 1


def test_oversize_frame_nak_and_close(mllp: StartFn, redis_client: redis.Redis, keys: Keys) -> None:
    lt = mllp(max_frame_bytes=4096)
    big = msg("O1", body="X" * 5000)
    with MllpClient(lt.port) as c:
        c.write(VT + big + FS + CR)
        fields = ack_fields(c.read_ack())
        assert fields["MSA"][1:3] == ["AR", "O1"]
        assert "207&" in fields["ERR"][1]
        assert c.is_closed_by_peer()
    assert ingest(redis_client, keys) == []
    [dl] = dead_letters(redis_client, keys)
    assert dl.raw == big[:4096] and dl.meta["control_id"] == "O1"


def test_partial_frame_then_timeout(mllp: StartFn, redis_client: redis.Redis, keys: Keys) -> None:
    lt = mllp(frame_timeout_s=0.5)
    with MllpClient(lt.port) as c:
        c.write(VT + msg("P1")[:70])
        fields = ack_fields(c.read_ack())
        assert fields["MSA"][1:3] == ["AR", "P1"]
        assert c.is_closed_by_peer()
    assert ingest(redis_client, keys) == []
    [dl] = dead_letters(redis_client, keys)
    assert dl.raw == msg("P1")[:70] and "incomplete frame" in dl.reason


# -- connections ----------------------------------------------------------------------------


def test_many_messages_over_one_connection(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys
) -> None:
    lt = mllp()
    n = 300
    with MllpClient(lt.port) as c:
        for i in range(n):
            assert ack_fields(c.send(msg(f"N{i}")))["MSA"][1:3] == ["AA", f"N{i}"]
    ids = ingest(redis_client, keys)
    assert [stored(redis_client, keys, i)["control_id"].decode() for i in ids] == [
        f"N{i}" for i in range(n)
    ]
    assert Queue(keys.queue_name(), connection=redis_client).count == n


def test_max_connections_extra_one_logged_and_closed(
    mllp: StartFn, caplog: pytest.LogCaptureFixture
) -> None:
    lt = mllp(max_connections=2)
    caplog.set_level(logging.WARNING, logger="bridge.mllp.listener")
    with MllpClient(lt.port) as a, MllpClient(lt.port) as b:
        assert ack_fields(a.send(msg("X1")))["MSA"][1] == "AA"
        assert ack_fields(b.send(msg("X2")))["MSA"][1] == "AA"
        wait_until(lambda: lt.in_loop(lambda: lt.listener.active_connections) == 2)
        with MllpClient(lt.port) as extra:
            assert extra.is_closed_by_peer()
        assert any(r.getMessage() == "mllp.connection.refused" for r in caplog.records)
        assert ack_fields(a.send(msg("X3")))["MSA"][1] == "AA"  # the others keep working
    with MllpClient(lt.port) as c:  # a slot is free again
        wait_until(lambda: lt.in_loop(lambda: lt.listener.active_connections) <= 2)
        assert ack_fields(c.send(msg("X4")))["MSA"][1] == "AA"


def test_idle_timeout_closes_connection(mllp: StartFn) -> None:
    lt = mllp(idle_timeout_s=0.3)
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("I1")))["MSA"][1] == "AA"
        assert c.is_closed_by_peer(wait_s=5.0)


def test_keepalive_on(mllp: StartFn) -> None:
    lt = mllp()
    with MllpClient(lt.port) as c:
        assert ack_fields(c.send(msg("K1")))["MSA"][1] == "AA"
        opts = lt.in_loop(
            lambda: [
                s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                for s in lt.listener.connection_sockets()
            ]
        )
    assert opts and all(opts)


# -- enhanced mode --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh15", "ok_code", "bad_code"),
    [("AL", "CA", "CR"), ("NE", None, None), ("ER", None, "CR"), ("SU", "CA", None)],
)
def test_enhanced_mode_per_msh15(
    mllp: StartFn, msh15: str, ok_code: str | None, bad_code: str | None
) -> None:
    lt = mllp()
    tail = f"|||{msh15}|NE"
    with MllpClient(lt.port) as c:
        for cid, version, code in (("E1", "2.5", ok_code), ("E2", "2.6", bad_code)):
            c.write(VT + msg(cid, version, tail) + FS + CR)
            if code is None:
                c.expect_no_data(0.3)
            else:
                fields = ack_fields(c.read_ack())
                assert fields["MSA"][1:3] == [code, cid]
                assert fields["MSH"][14:16] == ["", ""] if len(fields["MSH"]) > 15 else True
        # the connection is still in step: an original-mode message gets its own AA
        assert ack_fields(c.send(msg("E3", "2.5")))["MSA"][1:3] == ["AA", "E3"]
