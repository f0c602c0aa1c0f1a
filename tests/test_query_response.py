"""Identifier parsing and response shaping without a network (pure parts of the SCP)."""

from __future__ import annotations

import pytest
from mwl_items import make_item
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from bridge.core.codes import CFindStatus
from bridge.core.settings import ScpSettings
from bridge.scp.query import QueryError, parse_identifier
from bridge.scp.response import ResponseError, build_response

SCP = ScpSettings()


def sps_query(**keys: object) -> Dataset:
    q = Dataset()
    q.PatientName = ""
    item = Dataset()
    for k, v in keys.items():
        setattr(item, k, v)
    q.ScheduledProcedureStepSequence = [item]
    return q


def test_candidate_query_uses_indexes_and_start_interval() -> None:
    q = sps_query(
        Modality="CT",
        ScheduledStationAETitle="CT1",
        ScheduledProcedureStepStartDate="20260705-20260707",
        ScheduledProcedureStepStartTime="1000-1800",
    )
    q.PatientID = "PID1"
    plan = parse_identifier(q, SCP)
    cand = plan.candidate
    assert cand.equals == {"modality": ("CT",), "station": ("CT1",), "pid": ("PID1",)}
    assert (cand.start_min, cand.start_max) == (20260705100000, 20260707180059)
    assert cand.exclude == {"status": ("CANCELED", "COMPLETED", "DISCONTINUED")}
    assert not plan.unsupported


def test_wildcards_and_pn_are_not_sent_to_the_indexes() -> None:
    q = sps_query(Modality="C*")
    q.PatientName = "DOE*"
    assert parse_identifier(q, SCP).candidate.equals == {}


def test_status_match_lifts_hiding_and_uses_the_index() -> None:
    plan = parse_identifier(sps_query(ScheduledProcedureStepStatus="COMPLETED"), SCP)
    assert plan.candidate.exclude == {}
    assert plan.candidate.equals == {"status": ("COMPLETED",)}


def test_per_called_ae_and_calling_station() -> None:
    scp = ScpSettings(per_called_ae_worklists=True, calling_ae_as_station=True)
    plan = parse_identifier(sps_query(ScheduledStationAETitle="*"), scp, "MR7", "WL_A")
    assert plan.candidate.equals == {"station": ("MR7",), "worklist": ("WL_A",)}
    assert plan.worklist == "WL_A"


A900 = CFindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
SPS_TAG = 0x00400100


@pytest.mark.parametrize(
    ("query", "status", "offending"),
    [
        (sps_query(Modality=["CT", "MR"]), A900, (SPS_TAG, 0x00080060)),
        (
            sps_query(ScheduledProcedureStepStartDate="2026-07-05"),
            CFindStatus.UNABLE_BAD_RANGE,
            (SPS_TAG, 0x00400002),
        ),
        (sps_query(ScheduledProcedureStepStartTime="2561"), A900, (SPS_TAG, 0x00400003)),
    ],
)
def test_invalid_identifiers(
    query: Dataset, status: CFindStatus, offending: tuple[int, ...]
) -> None:
    with pytest.raises(QueryError) as info:
        parse_identifier(query, SCP)
    assert info.value.status == status
    assert info.value.offending == offending


def test_unknown_and_private_keys_are_unsupported_not_refused() -> None:
    q = sps_query()
    q.QueryRetrieveLevel = ""
    q.StudyDescription = ""
    q.add_new(0x00091010, "LO", "x")
    plan = parse_identifier(q, SCP)
    assert "QueryRetrieveLevel" in plan.unsupported and "StudyDescription" in plan.unsupported
    assert len(plan.unsupported) == 3


def test_response_projection_and_sps_expansion() -> None:
    q = Dataset()
    q.PatientID = ""
    q.AdmissionID = ""
    q.ScheduledProcedureStepSequence = DicomSequence([Dataset()])  # one empty item
    item = make_item(1)
    ds = build_response(item.attrs, parse_identifier(q, SCP))
    assert {e.keyword for e in ds} == {"PatientID", "AdmissionID", "ScheduledProcedureStepSequence"}
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepID == "SPS1"
    assert "PreMedication" in sps and not sps.PreMedication  # present, zero-length
    assert "CommentsOnTheScheduledProcedureStep" not in sps  # Type 3, not stored


def test_item_without_sps_still_answers_one_sps_item() -> None:
    q = sps_query(Modality="")
    item = make_item(1)
    del item.attrs["ScheduledProcedureStepSequence"]
    ds = build_response(item.attrs, parse_identifier(q, SCP))
    assert len(ds.ScheduledProcedureStepSequence) == 1
    assert not ds.ScheduledProcedureStepSequence[0].Modality


def test_invalid_stored_value_is_a_response_error() -> None:
    q = Dataset()
    q.PregnancyStatus = ""
    item = make_item(1, extra={"PregnancyStatus": "not a number"})
    with pytest.raises(ResponseError):
        build_response(item.attrs, parse_identifier(q, SCP))
