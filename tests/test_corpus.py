"""A corpus of differently shaped ORMs as real RIS and engines send them
(``tests/samples/corpus/``; each file's shape is in ``expected.json``): with the shipped
default mapping, every one goes through the real intake, a real rq worker and the real
SCP, and comes back from a C-FIND by date and modality carrying the fields it had.

With the mapping as shipped before the fallbacks (now ``strict``), most of them were
dead-lettered after their AA: the last test keeps that contrast visible.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import redis
from conftest import SAMPLES
from intake_helpers import submit
from pydicom.dataset import Dataset
from scp_support import StartScp, find

from bridge.core.settings import Settings, load_settings
from bridge.intake import deadletter
from bridge.store.keys import Keys
from bridge.worker import rq_worker as workers

CORPUS = SAMPLES / "corpus"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text("utf-8"))


def query(date: str, modality: str) -> Dataset:
    q = Dataset()
    q.SpecificCharacterSet = "ISO_IR 192"
    for kw in ("PatientName", "PatientID", "AccessionNumber", "RequestedProcedureID",
               "RequestedProcedurePriority", "StudyInstanceUID"):  # fmt: skip
        setattr(q, kw, "")
    sps = Dataset()
    sps.ScheduledProcedureStepStartDate = date
    sps.Modality = modality
    for kw in ("ScheduledStationAETitle", "ScheduledProcedureStepStartTime",
               "ScheduledProcedureStepID"):  # fmt: skip
        setattr(sps, kw, "")
    q.ScheduledProcedureStepSequence = [sps]
    return q


def work(client: redis.Redis, settings: Settings) -> None:
    ctx = workers.install(settings, client)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    workers.make_worker(ctx).work(burst=True, logging_level="WARNING")


def test_the_corpus_has_twelve_shapes_or_more() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.hl7"))
    assert len(files) >= 12 and files == sorted(EXPECTED)
    assert len({e["shape"] for e in EXPECTED.values()}) == len(files)


def test_every_corpus_order_is_findable_with_its_fields(
    redis_client: redis.Redis, redis_url: str, start_scp: StartScp,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    s = load_settings({"redis.url": redis_url, "worker.local_timezone": "UTC"}, env={})
    for name in sorted(EXPECTED):
        submit(redis_client, s, (CORPUS / name).read_bytes())
    with caplog.at_level(logging.WARNING, logger="bridge.worker.claim"):
        work(redis_client, s)
    assert deadletter.count(redis_client, Keys()) == 0
    scp = start_scp()
    for name, want in sorted(EXPECTED.items()):
        got = find(scp.port, query(want["date"], want["modality"]))
        assert got.final_status == 0, name
        mine = [ds for ds in got.identifiers if ds.PatientID == want["pid"]]
        assert len(mine) == want.get("items", 1), name
        ds = sorted(mine, key=lambda d: d.RequestedProcedureID)[0]
        sps = ds.ScheduledProcedureStepSequence[0]
        assert str(ds.PatientName) == want["name"], name
        assert ds.AccessionNumber == want["accession"], name
        assert ds.RequestedProcedureID == want["rpid"], name
        assert sps.ScheduledStationAETitle == want["station"], name
        assert sps.ScheduledProcedureStepStartTime == want["time"], name
        assert sps.ScheduledProcedureStepID, name  # Type 1: never empty
        assert ds.StudyInstanceUID == want.get("suid", ds.StudyInstanceUID), name
        assert ds.StudyInstanceUID.startswith(want.get("suid", "")), name
        if "priority" in want:
            assert ds.RequestedProcedurePriority == want["priority"], name
    # The last-resort start and the missing stations were logged (no patient data).
    alerts = [r for r in caplog.records if r.getMessage() == "message.mapping_alerts"]
    texts = " ".join(r.fields["alerts"] for r in alerts)  # type: ignore[attr-defined]
    assert "taken from OBR-7.1" in texts and "ScheduledStationAETitle" in texts
    assert "LINDQVIST" not in texts


def test_the_strict_profile_rejects_most_of_the_corpus() -> None:
    """What sites extending the old default had: these orders were AA'd by the listener,
    then dead-lettered (101) by the worker."""
    from bridge.core.errors import MessageRejected
    from bridge.hl7.parse import parse
    from bridge.worker.mapping.apply import map_message
    from bridge.worker.mapping.load import load_mapping

    strict = load_mapping("strict")
    rejected = []
    for name in sorted(EXPECTED):
        try:
            map_message(parse((CORPUS / name).read_bytes()), strict, "UTC")
        except MessageRejected:
            rejected.append(name)
    assert len(rejected) >= 9, rejected
