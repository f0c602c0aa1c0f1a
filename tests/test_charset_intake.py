"""Charset decisions at ACK time, on real sockets with a real worker after (issue #11).

Whatever the listener ACKs AA, the worker decodes; an unknown charset name is AE/CE 103
and bytes that do not decode are AE/CE 102 at ACK time (docs/listener.md), counted as
``mwl_frames_rejected{reason="charset"}`` and logged without content — never an AA and
then a dead letter from the worker.
"""

from __future__ import annotations

import json
import logging

import pytest
import redis
from intake_helpers import submit
from mllp_harness import MllpClient, StartFn, ack_fields
from orm_builder import orm
from worker_helpers import items, run

from bridge.core import metrics
from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys


@pytest.fixture
def worker_settings(redis_url: str) -> Settings:
    return load_settings(
        {"redis.url": redis_url, "worker.worker_class": "simple", "worker.local_timezone": "UTC"},
        env={},
    )


def order(n: int, name: str, msh18: str = "", msh20: str = "") -> str:
    return orm(
        control_id=f"CS{n}", placer=f"PL{n}", filler=f"FL{n}", patient_id=f"ID{n}^^^HOSP",
        patient_name=name, charset=msh18, scheme=msh20,
    )  # fmt: skip


def charset_rejections() -> float:
    value = metrics.REGISTRY.get_sample_value("mwl_frames_rejected_total", {"reason": "charset"})
    return value or 0.0


#: MSH-18 spellings real senders use → (a name in that charset, Python codec).
SPELLINGS = {
    "UTF8": ("ŁUKASZ^ZOË", "utf-8"),
    "UTF-8": ("ŁUKASZ^ZOË", "utf-8"),
    "ISO-8859-1": ("MÜLLER^JÜRGEN", "latin-1"),
    "ISO8859-1": ("MÜLLER^JÜRGEN", "latin-1"),
    "LATIN1": ("MÜLLER^JÜRGEN", "latin-1"),
    "CP1252": ("O’NEIL^ZOË", "cp1252"),
    "US-ASCII": ("DOE^JOHN", "ascii"),
    "ISO IR14": ("ﾔﾏﾀﾞ^ﾀﾛｳ", "shift_jis"),
    "ISO IR100": ("MÜLLER^JÜRGEN", "latin-1"),
    "UNICODE": ("ŁUKASZ^ZOË", "utf-8"),
}


def test_every_spelling_acked_aa_is_decoded_by_the_worker(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, worker_settings: Settings
) -> None:
    """Today UTF8, ISO-8859-1, ISO8859-1, LATIN1, CP1252 and US-ASCII got AA from the
    listener and then a 103 dead letter from the worker (its table lacked them); ISO IR14
    half-width katakana got AE 102 (the listener read it as ISO-2022-JP, the worker did
    not know the name); ISO IR100 and UNICODE got AE 103 from the listener although the
    worker could read them."""
    lt = mllp()
    with MllpClient(lt.port) as c:
        for n, (msh18, (name, codec)) in enumerate(SPELLINGS.items()):
            ack = ack_fields(c.send(order(n, name, msh18).encode(codec)))
            assert ack["MSA"][1:3] == ["AA", f"CS{n}"], msh18
    run(redis_client, worker_settings)
    assert deadletter.count(redis_client, keys) == 0
    stored = items(redis_client, worker_settings)
    got = {i.attrs["PatientID"]: i.attrs["PatientName"] for i in stored}
    assert got == {f"ID{n}": name for n, (name, _) in enumerate(SPELLINGS.values())}


@pytest.mark.parametrize(("msh15", "code"), [("", "AE"), ("AL", "CE")])
def test_unknown_charset_name_is_103_at_ack_time(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, msh15: str, code: str
) -> None:
    """AE 103 (CE in enhanced mode) at MSH-18, counted as a charset rejection; today it
    was counted as bad_msh."""
    lt = mllp()
    first, rest = order(1, "DOE^JOHN", "KLINGON").split("\r", 1)
    msh = first.split("|")
    msh[15 - 1] = msh15  # MSH-15 accept acknowledgement type (enhanced mode)
    raw = "|".join(msh) + "\r" + rest
    before = charset_rejections()
    with MllpClient(lt.port) as c:
        fields = ack_fields(c.send(raw.encode()))
    assert fields["MSA"][1:3] == [code, "CS1"]
    assert fields["ERR"][1].startswith("MSH^1^18^103&")  # v2.3.1: ERR-1
    assert redis_client.llen(keys.ingest_order) == 0
    [dead_id] = deadletter.list_ids(redis_client, keys)
    letter = deadletter.get(redis_client, keys, dead_id)
    assert letter is not None and (letter.stage, letter.code) == ("listener", 103)
    assert charset_rejections() == before + 1


@pytest.mark.parametrize(
    ("why", "raw"),
    [
        # ISO 2022 bytes while MSH-18 declares nothing: today AA, stored as "$B;3ED (B".
        ("esc", order(1, "@^TAROU").encode().replace(b"@", "山田".encode("iso2022_jp"))),
        # \X..\ that is not UTF-8: today AA, stored with U+FFFD.
        ("x-escape", order(1, "ZO\\XC3\\^ANNA", "UNICODE UTF-8").encode()),
        # JIS X 0212 while MSH-18 declares only JIS X 0208: today AA, stored mangled.
        ("undeclared", order(1, "丂^X", "~ISO IR87", "ISO 2022-1994").encode("iso2022_jp_1")),
        # \M..\ in a message without code extension: today AA, the bytes read as ASCII.
        ("m-escape", order(1, "\\M2442\\;3ED\\C2842\\^TAROU", "8859/1").encode()),
    ],
)
def test_bytes_that_do_not_decode_are_102_at_ack_time_and_logged_without_content(
    mllp: StartFn,
    redis_client: redis.Redis,
    keys: Keys,
    why: str,
    raw: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lt = mllp()
    before = charset_rejections()
    with caplog.at_level(logging.DEBUG), MllpClient(lt.port) as c:
        fields = ack_fields(c.send(raw))
    assert fields["MSA"][1:3] == ["AE", "CS1"], why
    assert fields["ERR"][1].split("^")[3].startswith("102&")
    assert redis_client.llen(keys.ingest_order) == 0
    [dead_id] = deadletter.list_ids(redis_client, keys)
    letter = deadletter.get(redis_client, keys, dead_id)
    assert letter is not None and (letter.stage, letter.code, letter.raw) == ("listener", 102, raw)
    assert charset_rejections() == before + 1
    logged = " ".join(
        f"{r.getMessage()} {json.dumps(vars(r), default=str, ensure_ascii=False)}"
        for r in caplog.records
    )
    for secret in ("TAROU", "ANNA", "ZO", "山田", ";3ED"):
        assert secret not in logged, (why, secret)


def test_sender_charset_decides_at_ack_and_the_worker_follows(
    mllp: StartFn, redis_client: redis.Redis, keys: Keys, redis_url: str
) -> None:
    """A sender that leaves MSH-18 empty and sends Greek: mllp.sender_charsets (new; the
    mapping file's default_charset used to be seen by the worker only) is decided by the
    listener, recorded, and used by a worker whose own default differs in nothing."""
    lt = mllp(sender_charsets={"RIS|HOSP": "8859/7"})
    with MllpClient(lt.port) as c:
        raw = order(1, "ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ").encode("iso8859_7")
        assert ack_fields(c.send(raw))["MSA"][1] == "AA"
    [mid] = [m.decode() for m in redis_client.lrange(keys.ingest_order, 0, -1)]
    used = json.loads(redis_client.hget(keys.message(mid), "charset_used") or b"{}")
    assert used == {"names": ["8859/7"], "scheme": "", "source": "mllp.sender_charsets"}
    # The worker is configured without sender_charsets: the recorded decision wins.
    plain = load_settings({"redis.url": redis_url, "worker.local_timezone": "UTC"}, env={})
    run(redis_client, plain)
    assert [i.attrs["PatientName"] for i in items(redis_client, plain)] == ["ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ"]


def test_a_message_stored_without_a_decision_is_decoded_by_the_same_rule(
    redis_client: redis.Redis, keys: Keys, worker_settings: Settings
) -> None:
    """Hashes written by an older release lack charset_used: the worker applies the
    listener's rule itself (here: MSH-18 UTF8, an alias the old worker did not know)."""
    mid = submit(redis_client, worker_settings, order(1, "ŁUKASZ^ZOË", "UTF8").encode())
    assert redis_client.hdel(keys.message(mid), "charset_used") == 1
    run(redis_client, worker_settings)
    assert deadletter.count(redis_client, keys) == 0
    [item] = items(redis_client, worker_settings)
    assert item.attrs["PatientName"] == "ŁUKASZ^ZOË"
