"""`mwl-bridge deadletter replay`: the listener's gate again, then the normal intake path."""

from __future__ import annotations

import json
import logging

import redis
from conftest import SAMPLES
from rq import Queue

from bridge.core.settings import Settings
from bridge.hl7.msh import read_msh
from bridge.intake import deadletter
from bridge.intake.deadletter import DeadLetter
from bridge.intake.submit import IntakeRecord, SubmitKind, submit
from bridge.ops.cli import main
from bridge.store.keys import Keys
from bridge.worker import rq_worker as workers

GOOD = (
    (SAMPLES / "mllp_orm_v251_utf8.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
)


def put(client: redis.Redis, keys: Keys, raw: bytes, stage: str = "worker") -> str:
    return deadletter.put(
        client, keys, DeadLetter(raw=raw, reason="test", stage=stage, code=103, location="OBR-24")
    )


def replay(capsys, redis_url: str, dead_id: str) -> tuple[int, str, str]:
    code = main(["deadletter", "replay", dead_id, "--json", "--redis-url", redis_url])
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_queues_again_and_drops_the_letter(redis_client, keys, redis_url, capsys) -> None:
    dead_id = put(redis_client, keys, GOOD)
    code, out, err = replay(capsys, redis_url, dead_id)
    assert code == 0, err
    message_id = json.loads(out)["message_id"]
    assert redis_client.hget(keys.message(message_id), "raw") == GOOD
    assert redis_client.hget(keys.message(message_id), "peer") == f"replay:{dead_id}".encode()
    assert redis_client.lrange(keys.ingest_order, 0, -1) == [message_id.encode()]
    assert Queue(keys.queue_name(), connection=redis_client).job_ids == [f"msg-{message_id}"]
    assert deadletter.get(redis_client, keys, dead_id) is None


def test_replay_replaces_the_dedupe_entry(redis_client, keys, redis_url, capsys) -> None:
    """The first copy was accepted (and dead-lettered by a worker); a replay must not be
    refused as a duplicate, and the sender's later resend is a duplicate of the replay."""
    h = read_msh(GOOD)
    record = IntakeRecord(
        raw=GOOD, received_at=0.0, peer="t", sending_app=h.sending_app,
        sending_facility=h.sending_facility, receiving_app=h.receiving_app,
        receiving_facility=h.receiving_facility, control_id=h.control_id,
        message_type=h.message_type, version=h.version, charset=h.charset,
    )  # fmt: skip
    first = submit(redis_client, keys, record, dedupe_ttl_s=60, max_retries=1)
    dead_id = put(redis_client, keys, GOOD)
    code, out, _ = replay(capsys, redis_url, dead_id)
    assert code == 0
    replayed = json.loads(out)["message_id"]
    assert replayed != first.message_id
    again = submit(redis_client, keys, record, dedupe_ttl_s=60, max_retries=1)
    assert (again.kind, again.message_id) == (SubmitKind.DUPLICATE, replayed)


def test_replay_refuses_what_the_gate_refuses(redis_client, keys, redis_url, capsys) -> None:
    bad_version = GOOD.replace(b"|2.5.1|", b"|2.9|", 1)
    assert bad_version != GOOD
    dead_id = put(redis_client, keys, bad_version, stage="listener")
    code, _, err = replay(capsys, redis_url, dead_id)
    assert code == 1
    assert "version 2.9 not accepted" in err and "MSH-12" in err
    assert deadletter.get(redis_client, keys, dead_id) is not None
    assert redis_client.llen(keys.ingest_order) == 0


def test_replay_refuses_unreadable_frames(redis_client, keys, redis_url, capsys) -> None:
    dead_id = put(redis_client, keys, b"GET / HTTP/1.1\r\n\r\n", stage="listener")
    code, _, err = replay(capsys, redis_url, dead_id)
    assert code == 1 and "unreadable" in err
    assert deadletter.get(redis_client, keys, dead_id) is not None


def test_replay_of_unknown_id(redis_url, capsys) -> None:
    code, _, err = replay(capsys, redis_url, "nope")
    assert code == 1 and "no dead letter nope" in err


def test_replayed_message_reaches_the_worklist(
    redis_client, keys, redis_url, settings: Settings, capsys
) -> None:
    dead_id = put(redis_client, keys, GOOD)
    assert replay(capsys, redis_url, dead_id)[0] == 0
    ctx = workers.install(settings, redis_client)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    workers.make_worker(ctx).work(burst=True, logging_level="WARNING")
    assert redis_client.zcard(keys.index_start) >= 1
    assert deadletter.count(redis_client, keys) == 0


def test_replay_records_the_listener_charset_decision(
    redis_client, keys, redis_url, capsys
) -> None:
    """A replay goes through the listener's charset gate and records its decision, so
    the worker decodes a replayed message exactly as a new one (issue #11); today the
    replayed hash had no charset_used."""
    greek = GOOD.replace(b"UNICODE UTF-8", b"8859/7").replace(
        "MÜLLER".encode(), "ΜΥΛΛΕΡ".encode("iso8859_7")
    )
    assert greek != GOOD
    dead_id = put(redis_client, keys, greek)
    code, out, err = replay(capsys, redis_url, dead_id)
    assert code == 0, err
    message_id = json.loads(out)["message_id"]
    used = json.loads(redis_client.hget(keys.message(message_id), "charset_used") or b"{}")
    assert used["names"] == ["8859/7"] and used["source"] == "MSH-18"


def test_replay_refuses_what_the_charset_gate_refuses(
    redis_client, keys, redis_url, capsys
) -> None:
    """An undecodable message stays a dead letter (102), as at the front door."""
    bad = GOOD.replace("MÜLLER".encode(), b"M\xdcLLER")  # Latin-1 in a UTF-8 message
    dead_id = put(redis_client, keys, bad, stage="listener")
    code, _, err = replay(capsys, redis_url, dead_id)
    assert code == 1 and "HL7 error 102" in err
    assert deadletter.get(redis_client, keys, dead_id) is not None
