"""The MPPS SCP (issue #13): N-CREATE and N-SET of the Modality Performed Procedure Step
SOP Class on the worklist's AE and port, driven by pynetdicom's own MPPS SCU against an
in-process SCP on a real Redis.

Every status of the conformance statement is asserted with its exact code, Error
Comment, Error ID and Offending Element (read from the response's command set as it
arrived); every accepted status change is asserted as the stored instance plus the
internal message, its place in the ingest line and its rq job. What the workers make of
the message is tested by the workers' own tests.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
from mpps_support import STUDY, Answer, MppsScu, create_ds, final_ds, reason, series, step
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from redis_server import RedisServer
from rq import Queue
from scp_support import StartScp

from bridge.core import metrics
from bridge.intake.submit import JOB_FUNC
from bridge.scp import mpps_rules, pynetdicom_compat
from bridge.store.keys import Keys

KEYS = Keys()
STATUS_TAG = 0x00400252
A710 = 0xA710
FINAL_COMMENT = "Performed Procedure Step Object may no longer be updated"


def instance(client: redis.Redis, uid: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(KEYS.mpps(uid)).items()}


def messages(client: redis.Redis) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """The ingest line: (message id, message hash, payload), oldest first."""
    out = []
    for raw_id in client.lrange(KEYS.ingest_order, 0, -1):
        mid = raw_id.decode()
        h = {k.decode(): v for k, v in client.hgetall(KEYS.message(mid)).items()}
        out.append((mid, {k: v.decode() for k, v in h.items() if k != "raw"},
                    json.loads(h["raw"])))  # fmt: skip
    return out


def nothing_stored(client: redis.Redis, uid: str) -> bool:
    return not client.exists(KEYS.mpps(uid)) and client.llen(KEYS.ingest_order) == 0


def created(scu: MppsScu, client: redis.Redis, **attrs: Any) -> str:
    uid = generate_uid()
    assert scu.create(create_ds(**attrs), uid).status == 0x0000
    return uid


def count(op: str, status: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "mwl_mpps_requests_total", {"op": op, "status": status}
    )
    return value or 0.0


# -- accepted requests --------------------------------------------------------------------


def test_n_create_stores_the_instance_and_queues_the_internal_message(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    uid = generate_uid()
    before = time.time()
    with MppsScu(scp.port, "CT1") as scu:
        answer = scu.create(create_ds(steps=[step(), step("RP2", "SPS2", "ACC2")]), uid)
    assert (answer.status, answer.comment) == (0x0000, "")
    assert str(answer.command.AffectedSOPInstanceUID) == uid

    h = instance(redis_client, uid)
    created_at = float(h["created_at"])
    assert before <= created_at <= time.time() and h["updated_at"] == h["created_at"]
    refs = [
        {"StudyInstanceUID": STUDY, "RequestedProcedureID": "RP1",
         "ScheduledProcedureStepID": "SPS1", "AccessionNumber": "ACC1"},
        {"StudyInstanceUID": STUDY, "RequestedProcedureID": "RP2",
         "ScheduledProcedureStepID": "SPS2", "AccessionNumber": "ACC2"},
    ]  # fmt: skip
    assert (h["status"], h["calling_ae"], h["patient_id"], h["issuer"]) == (
        "IN PROGRESS",
        "CT1",
        "12345",
        "HOSP",
    )
    assert json.loads(h["refs"]) == refs
    assert json.loads(h["charset"]) == ["ISO_IR 100"]
    dataset = json.loads(h["dataset"])
    assert dataset["PatientName"] == "MÜLLER^HANS"  # decoded from Latin-1
    assert dataset["PerformedSeriesSequence"] == [] and dataset["PerformedLocation"] == ""
    assert dataset["ScheduledStepAttributesSequence"][1]["ScheduledProcedureStepID"] == "SPS2"
    assert "SpecificCharacterSet" not in dataset
    assert redis_client.zscore(KEYS.mpps_index, uid) == created_at
    assert 30 * 86400 - 5 < redis_client.ttl(KEYS.mpps(uid)) <= 30 * 86400

    [(mid, meta, payload)] = messages(redis_client)
    assert payload == {
        "kind": "mpps", "uid": uid, "event": "create", "status": "IN PROGRESS",
        "reason_code": "", "refs": refs, "PatientID": "12345", "IssuerOfPatientID": "HOSP",
        "calling_ae": "CT1", "at": created_at,
    }  # fmt: skip
    assert (meta["message_type"], meta["control_id"], meta["sending_app"], meta["peer"]) == (
        "MPPS",
        f"{uid}:IN PROGRESS",
        "CT1",
        "internal:CT1",
    )
    job = Queue(KEYS.queue_name(), connection=redis_client).fetch_job(f"msg-{mid}")
    assert job is not None and (job.func_name, job.args) == (JOB_FUNC, (mid,))
    assert job.retries_left == 5  # worker.max_retries
    assert redis_client.lrange(f"rq:queue:{KEYS.queue_name()}", 0, -1) == [f"msg-{mid}".encode()]


def test_n_set_completed_with_the_final_state_queues_a_set_message(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port, "CT1") as scu:
        uid = created(scu, redis_client)
        answer = scu.set(final_ds("COMPLETED"), uid)
    assert answer.status == 0x0000
    h = instance(redis_client, uid)
    assert h["status"] == "COMPLETED" and float(h["updated_at"]) > float(h["created_at"])
    dataset = json.loads(h["dataset"])
    assert dataset["PerformedProcedureStepStatus"] == "COMPLETED"
    assert dataset["PerformedProcedureStepEndTime"] == "103000"
    assert len(dataset["PerformedSeriesSequence"][0]["ReferencedImageSequence"]) == 2
    assert dataset["PatientName"] == "MÜLLER^HANS"  # N-CREATE attributes kept
    (_, _, first), (_, meta, payload) = messages(redis_client)
    assert first["event"] == "create"
    assert payload == {
        "kind": "mpps", "uid": uid, "event": "set", "status": "COMPLETED", "reason_code": "",
        "refs": json.loads(h["refs"]), "PatientID": "12345", "IssuerOfPatientID": "HOSP",
        "calling_ae": "CT1", "at": float(h["updated_at"]),
    }  # fmt: skip
    assert meta["control_id"] == f"{uid}:COMPLETED"


def test_n_set_discontinued_carries_the_reason_code(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        mods = final_ds("DISCONTINUED")
        mods.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason("110514")]
        assert scu.set(mods, uid).status == 0x0000
    assert instance(redis_client, uid)["status"] == "DISCONTINUED"
    *_, (_, meta, payload) = messages(redis_client)
    assert (payload["status"], payload["reason_code"]) == ("DISCONTINUED", "110514")
    assert meta["control_id"] == f"{uid}:DISCONTINUED"


def test_n_set_that_keeps_in_progress_updates_the_attributes_only(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        mods = Dataset()
        mods.PerformedProcedureStepDescription = "CT HEAD"
        mods.PerformedSeriesSequence = [series(images=1)]
        assert scu.set(mods, uid).status == 0x0000
        mods = Dataset()
        mods.PerformedProcedureStepStatus = "IN PROGRESS"
        assert scu.set(mods, uid).status == 0x0000
    h = instance(redis_client, uid)
    assert h["status"] == "IN PROGRESS"
    dataset = json.loads(h["dataset"])
    assert dataset["PerformedProcedureStepDescription"] == "CT HEAD"
    assert len(dataset["PerformedSeriesSequence"]) == 1
    assert [p["event"] for _, _, p in messages(redis_client)] == ["create"]


def test_final_state_attributes_sent_earlier_count(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    """F.7.2.2.2: the Final State attributes may be set "before or when" the status is."""
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        early = final_ds()
        del early.PerformedProcedureStepStatus
        assert scu.set(early, uid).status == 0x0000
        status_only = Dataset()
        status_only.PerformedProcedureStepStatus = "COMPLETED"
        assert scu.set(status_only, uid).status == 0x0000
    assert instance(redis_client, uid)["status"] == "COMPLETED"


def test_n_set_without_charset_is_decoded_in_the_n_create_charset(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    """F.7.2.2.1: an N-SET's text is in the N-CREATE's character set (here Latin-1)."""
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        mods = Dataset()
        mods.add_new(0x00400254, "LO", "SCHÄDEL".encode("latin-1"))
        assert scu.set(mods, uid).status == 0x0000
    dataset = json.loads(instance(redis_client, uid)["dataset"])
    assert dataset["PerformedProcedureStepDescription"] == "SCHÄDEL"


def test_n_create_without_a_uid_gets_one_assigned(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        answer = scu.create(create_ds(), None)
    assert answer.status == 0x0000
    uid = str(answer.command.AffectedSOPInstanceUID)
    assert mpps_rules.valid_uid(uid)
    assert instance(redis_client, uid)["status"] == "IN PROGRESS"


def test_retention_expires_the_instance_and_trims_the_index(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp(mpps_retention_s=600)
    old = "1.2.826.0.1.3680043.2.1125.9.1"
    redis_client.zadd(KEYS.mpps_index, {old: time.time() - 601})  # created before retention
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        assert 595 < redis_client.ttl(KEYS.mpps(uid)) <= 600
        redis_client.expire(KEYS.mpps(uid), 10)  # as if created long ago
        assert scu.set(final_ds(), uid).status == 0x0000
    assert 595 < redis_client.ttl(KEYS.mpps(uid)) <= 600  # counted from the last change
    assert [u.decode() for u in redis_client.zrange(KEYS.mpps_index, 0, -1)] == [uid]


def test_retention_zero_keeps_instances(start_scp: StartScp, redis_client: redis.Redis) -> None:
    scp = start_scp(mpps_retention_s=0)
    old = "1.2.826.0.1.3680043.2.1125.9.1"
    redis_client.zadd(KEYS.mpps_index, {old: 1.0})
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
    assert redis_client.ttl(KEYS.mpps(uid)) == -1
    assert redis_client.zcard(KEYS.mpps_index) == 2


# -- N-CREATE refused ----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED", "", None])
def test_n_create_not_in_progress_is_0106(
    start_scp: StartScp, redis_client: redis.Redis, status: str | None
) -> None:
    scp = start_scp()
    uid = generate_uid()
    before = count("n_create", "0106")
    with MppsScu(scp.port) as scu:
        answer = scu.create(create_ds(PerformedProcedureStepStatus=status), uid)
    assert answer.status == 0x0106
    assert answer.comment == "PerformedProcedureStepStatus must be IN PROGRESS"
    assert answer.tags("OffendingElement") == [STATUS_TAG]
    assert nothing_stored(redis_client, uid)
    assert count("n_create", "0106") == before + 1


def test_duplicate_n_create_is_0111(start_scp: StartScp, redis_client: redis.Redis) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        answer = scu.create(create_ds(PatientID="OTHER"), uid)
    assert (answer.status, answer.comment) == (0x0111, "SOP Instance UID already exists")
    assert instance(redis_client, uid)["patient_id"] == "12345"
    assert len(messages(redis_client)) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the SCU's, on purpose
def test_n_create_with_an_invalid_uid_is_0117(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        answer = scu.create(create_ds(), "1.2.03.4")  # a component with a leading zero
    assert (answer.status, answer.comment) == (0x0117, "SOP Instance UID is not a valid UID")
    assert redis_client.dbsize() == 0


def test_n_create_without_type1_attributes_is_0120(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    uid = generate_uid()
    with MppsScu(scp.port) as scu:
        answer = scu.create(create_ds(Modality=None, PerformedStationAETitle=None), uid)
        no_study = scu.create(create_ds(steps=[step(study="")]), uid)
        no_steps = scu.create(create_ds(ScheduledStepAttributesSequence=None), uid)
    assert answer.status == 0x0120
    assert answer.comment == "Missing: PerformedStationAETitle, Modality"
    assert answer.tags("OffendingElement") == [0x00400241, 0x00080060]
    assert answer.tags("AttributeIdentifierList") == [0x00400241, 0x00080060]
    assert no_study.status == 0x0121
    assert no_study.comment == "No value: ScheduledStepAttributesSequence[1].StudyInstanceUID"
    assert no_study.tags("OffendingElement") == [0x0020000D]
    assert (no_steps.status, no_steps.comment) == (
        0x0120,
        "Missing: ScheduledStepAttributesSequence",
    )
    assert nothing_stored(redis_client, uid)


def test_n_create_with_an_empty_type1_attribute_is_0121(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    uid = generate_uid()
    with MppsScu(scp.port) as scu:
        answer = scu.create(create_ds(PerformedProcedureStepStartTime="", steps=[]), uid)
    assert answer.status == 0x0121
    # The Error Comment (LO, 64 characters) names whole attributes; every tag is in
    # Offending Element.
    assert answer.comment == "No value: ScheduledStepAttributesSequence +1 more"
    assert answer.tags("OffendingElement") == [0x00400270, 0x00400245]
    assert nothing_stored(redis_client, uid)


@pytest.mark.filterwarnings("ignore:Failed to decode", "ignore:Unknown encoding")
def test_undecodable_text_and_unknown_charset_are_0106(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    uid = generate_uid()
    bad_utf8 = create_ds(SpecificCharacterSet="ISO_IR 192")
    bad_utf8.add_new(0x00100010, "PN", b"M\xfcLLER^HANS")  # Latin-1 bytes, not UTF-8
    unknown = create_ds(SpecificCharacterSet="ISO_IR 999")
    with MppsScu(scp.port) as scu:
        text = scu.create(bad_utf8, uid)
        charset = scu.create(unknown, uid)
    assert text.status == 0x0106
    assert text.comment == "Cannot be decoded in its character set: PatientName"
    assert text.tags("OffendingElement") == [0x00100010]
    assert (charset.status, charset.comment) == (
        0x0106,
        "SpecificCharacterSet is not a defined term",
    )
    assert charset.tags("OffendingElement") == [0x00080005]
    assert nothing_stored(redis_client, uid)


# -- N-SET refused --------------------------------------------------------------------------


def test_n_set_of_an_unknown_instance_is_0112(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    before = count("n_set", "0112")
    with MppsScu(scp.port) as scu:
        answer = scu.set(final_ds(), generate_uid())
    assert (answer.status, answer.comment) == (0x0112, "No such MPPS instance")
    assert redis_client.dbsize() == 0
    assert count("n_set", "0112") == before + 1


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_n_set_after_a_final_status_is_0110_a710(
    start_scp: StartScp, redis_client: redis.Redis, final: str
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        assert scu.set(final_ds(final), uid).status == 0x0000
        stored = instance(redis_client, uid)
        again = Dataset()
        again.PerformedProcedureStepDescription = "late"
        late = scu.set(again, uid)
        other = scu.set(final_ds("DISCONTINUED" if final == "COMPLETED" else "COMPLETED"), uid)
    for answer in (late, other):
        assert (answer.status, answer.comment, answer.error_id) == (0x0110, FINAL_COMMENT, A710)
    assert instance(redis_client, uid) == stored
    assert [p["event"] for _, _, p in messages(redis_client)] == ["create", "set"]


def test_n_set_of_attributes_that_may_not_be_set_is_0106_with_offending_elements(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        stored = instance(redis_client, uid)
        mods = Dataset()
        mods.PerformedProcedureStepDescription = "allowed"
        mods.Modality = "MR"
        mods.PatientID = "99999"
        mods.ScheduledStepAttributesSequence = [step("RP9", "SPS9")]
        answer = scu.set(mods, uid)
    assert answer.status == 0x0106
    assert answer.comment == "Not settable by N-SET: ScheduledStepAttributesSequence +2 more"
    assert answer.tags("OffendingElement") == [0x00400270, 0x00100020, 0x00080060]
    assert instance(redis_client, uid) == stored  # nothing of the request applied


def test_n_set_of_one_attribute_that_may_not_be_set(
    start_scp: StartScp, redis_client: redis.Redis
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        mods = final_ds()
        mods.PerformedProcedureStepStartTime = "090000"
        answer = scu.set(mods, uid)
    assert (answer.status, answer.comment) == (
        0x0106,
        "Not settable by N-SET: PerformedProcedureStepStartTime",
    )
    assert answer.tags("OffendingElement") == [0x00400245]
    assert instance(redis_client, uid)["status"] == "IN PROGRESS"
    assert len(messages(redis_client)) == 1


def test_n_set_of_an_unknown_status_is_0106(start_scp: StartScp, redis_client: redis.Redis) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        answer = scu.set(final_ds("CANCELED"), uid)
    assert answer.status == 0x0106
    assert answer.comment == "PerformedProcedureStepStatus is not an enumerated value"
    assert answer.tags("OffendingElement") == [STATUS_TAG]
    assert instance(redis_client, uid)["status"] == "IN PROGRESS"


def _without_image_uid() -> Dataset:
    item = series(images=2)
    del item.ReferencedImageSequence[1].ReferencedSOPInstanceUID
    return item


@pytest.mark.parametrize(
    ("mods", "comment", "tags"),
    [
        (
            {"PerformedProcedureStepEndTime": None},
            "COMPLETED needs: PerformedProcedureStepEndTime",
            [0x00400251],
        ),
        (
            {"PerformedProcedureStepEndDate": "", "PerformedProcedureStepEndTime": ""},
            "COMPLETED needs: PerformedProcedureStepEndDate +1 more",
            [0x00400250, 0x00400251],
        ),
        (
            {"PerformedSeriesSequence": []},
            "COMPLETED needs: PerformedSeriesSequence",
            [0x00400340],
        ),
        (
            {"PerformedSeriesSequence": [series(ProtocolName=""), series(SeriesInstanceUID=None)]},
            "COMPLETED needs: PerformedSeriesSequence[1].ProtocolName +1 more",
            [0x00181030, 0x0020000E],
        ),
        (
            {"PerformedSeriesSequence": [_without_image_uid()]},
            "COMPLETED needs: PerformedSeriesSequence[1].ReferencedImageSe...",
            [0x00081155],
        ),
    ],
    ids=["end-time-absent", "end-date-time-empty", "no-series", "series-type1", "image-ref"],
)
def test_n_set_to_a_final_status_without_its_type1_attributes_is_0110(
    start_scp: StartScp,
    redis_client: redis.Redis,
    mods: dict[str, Any],
    comment: str,
    tags: list[int],
) -> None:
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        answer = scu.set(final_ds("COMPLETED", **mods), uid)
        assert (answer.status, answer.comment, answer.error_id) == (0x0110, comment, None)
        assert answer.tags("OffendingElement") == tags
        assert instance(redis_client, uid)["status"] == "IN PROGRESS"
        # The modality may complete the step once it sends what was missing.
        assert scu.set(final_ds("COMPLETED"), uid).status == 0x0000
    assert [p["status"] for _, _, p in messages(redis_client)] == ["IN PROGRESS", "COMPLETED"]


def test_redis_down_is_0213(start_scp: StartScp) -> None:
    private = RedisServer()
    private.start()
    try:
        scp = start_scp(url=private.url)
        private.stop()
        before = count("n_create", "0213")
        with MppsScu(scp.port) as scu:
            answer = scu.create(create_ds(), generate_uid())
            set_answer = scu.set(final_ds(), generate_uid())
        assert (answer.status, answer.comment) == (0x0213, "MPPS store unavailable, retry later")
        assert set_answer.status == 0x0213
        assert count("n_create", "0213") == before + 1
    finally:
        private.cleanup()


# -- concurrency ----------------------------------------------------------------------------


def test_two_associations_setting_one_instance_at_once_only_one_wins(
    start_scp: StartScp, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both N-SETs read IN PROGRESS before either writes (a barrier inside the check);
    the WATCH on the instance makes the second write retry, see the first's final
    status and answer 0110 A710. Without it both would succeed and queue two messages."""
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
    barrier = threading.Barrier(2, timeout=10)
    calls: list[int] = []
    check_set = mpps_rules.check_set

    def both_read_first(stored: Any, changes: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            barrier.wait()
        return check_set(stored, changes)

    monkeypatch.setattr(mpps_rules, "check_set", both_read_first)
    answers: dict[str, Answer] = {}

    def send(status: str, calling: str) -> None:
        with MppsScu(scp.port, calling) as scu:
            answers[status] = scu.set(final_ds(status), uid)

    threads = [threading.Thread(target=send, args=(s, c)) for s, c in
               (("COMPLETED", "CT1"), ("DISCONTINUED", "CT2"))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 2 and barrier.n_waiting == 0
    statuses = sorted((a.status, a.error_id) for a in answers.values())
    assert statuses == [(0x0000, None), (0x0110, A710)]
    [winner] = [s for s, a in answers.items() if a.status == 0]
    assert instance(redis_client, uid)["status"] == winner
    assert [p["status"] for _, _, p in messages(redis_client)] == ["IN PROGRESS", winner]


# -- the stock pynetdicom path --------------------------------------------------------------


def test_stock_path_answers_the_same_without_offending_element(
    start_scp: StartScp, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an unverified pynetdicom the status and Error Comment are the same; Offending
    Element, which only the adapter can add, is not sent."""
    monkeypatch.setattr(pynetdicom_compat, "FAST", False)
    scp = start_scp()
    with MppsScu(scp.port) as scu:
        uid = created(scu, redis_client)
        mods = Dataset()
        mods.Modality = "MR"
        answer = scu.set(mods, uid)
    assert (answer.status, answer.comment) == (0x0106, "Not settable by N-SET: Modality")
    assert answer.tags("OffendingElement") == []
