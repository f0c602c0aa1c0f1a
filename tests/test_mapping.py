"""Mapping rules on sample messages: every rule of the IHE default plus the format's
features (fallbacks, transforms, tables, regex, join, VR lengths, inheritance)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLES
from orm_builder import orm

from bridge.core.codes import Hl7Error
from bridge.core.errors import MappingFileError, MessageRejected
from bridge.hl7.message import parse_path
from bridge.hl7.parse import parse
from bridge.worker.mapping.apply import MappedItem, MappingResult, map_message, study_uid
from bridge.worker.mapping.load import MappingRegistry, load_mapping

IHE = load_mapping()


def mapped(raw: bytes | str, mapping: Any = IHE, zone: str = "Europe/Berlin") -> MappingResult:
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    return map_message(parse(data), mapping, zone)


def first(result: MappingResult) -> MappedItem:
    return result.groups[0].items[0]


def test_ihe_table_on_v231_with_zds_latin1() -> None:
    r = mapped((SAMPLES / "orm_v231_zds_latin1.hl7").read_bytes())
    g = r.groups[0]
    assert (g.control, g.order_status, g.action, g.status) == ("NW", "SC", "create", "SCHEDULED")
    it = first(r)
    a, s = it.attrs, it.sps
    assert a["SpecificCharacterSet"] == "ISO_IR 100"  # MSH-18 8859/1
    assert a["PatientName"] == "MÜLLER^JÖRG^^DR"  # XPN prefix moved after middle
    assert (a["PatientID"], a["IssuerOfPatientID"]) == ("12345", "HOSP")
    assert a["PatientBirthDate"] == "19700101" and a["PatientSex"] == "F"
    assert a["PregnancyStatus"] == "3"  # PV1-15 B6
    assert a["CurrentPatientLocation"] == "RAD^101^1"
    assert a["ReferringPhysicianName"] == "WELBY^MARCUS^A^DR"  # XCN: ID skipped
    assert a["AdmissionID"] == "V123"
    assert a["RequestingPhysician"] == "HOUSE^GREGORY"
    assert a["PlacerOrderNumberImagingServiceRequest"] == "PL1"
    assert a["FillerOrderNumberImagingServiceRequest"] == "FL1"
    assert (a["AccessionNumber"], a["RequestedProcedureID"]) == ("ACC1", "RP1")
    assert a["RequestedProcedurePriority"] == "ROUTINE"
    assert a["RequestedProcedureDescription"] == "CT Chest 1"  # OBR-44 empty → OBR-4.2
    assert a["RequestedProcedureCodeSequence"] == [
        {"CodeValue": "CTCHEST1", "CodingSchemeDesignator": "LOCAL", "CodeMeaning": "CT Chest 1"}
    ]
    assert a["PatientTransportArrangements"] == "WALK"
    assert a["ReasonForTheRequestedProcedure"] == "Chest pain"
    assert a["StudyInstanceUID"] == "1.2.826.0.1.3680043.2.1125.1.1"  # ZDS-1.1
    assert s["Modality"] == "CT" and s["ScheduledStationAETitle"] == "CT_ROOM1"
    # 10:15 +0200 is 10:15 in Berlin in July (CEST).
    assert (s["ScheduledProcedureStepStartDate"], s["ScheduledProcedureStepStartTime"]) == (
        "20260705", "101500")  # fmt: skip
    assert s["ScheduledPerformingPhysicianName"] == "TECH^TOM"  # OBR-34.1 subcomponents
    assert s["ScheduledProcedureStepDescription"] == "Chest protocol 1"
    assert s["ScheduledProtocolCodeSequence"][0]["CodeValue"] == "P1"
    assert s["ScheduledProcedureStepID"] == "SPS1"
    # Type 2 attributes not in the message are absent (stored empty on create).
    assert "MedicalAlerts" in it.absent and "SPS.ScheduledStationName" in it.absent
    assert it.complete and r.warnings == []


def test_v23_two_obrs_without_zds_generate_stable_uids() -> None:
    raw = (SAMPLES / "orm_v23_two_obr_nozds.hl7").read_bytes()
    r = mapped(raw)
    items = r.groups[0].items
    assert len(items) == 2
    assert [i.sps["Modality"] for i in items] == ["CT", "MR"]
    assert items[1].sps["ScheduledStationAETitle"] == "MR_ROOM2"
    uids = [i.defaults["StudyInstanceUID"] for i in items]
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in uids)
    assert uids[0] != uids[1]  # one per requested procedure
    assert uids == [i.defaults["StudyInstanceUID"] for i in mapped(raw).groups[0].items]
    assert uids[0] == study_uid("", "P|PL1", "RP1")  # not scoped by the sender
    assert first(r).attrs["PatientName"] == "ÅSTRÖM^Åsa"
    assert any("generated" in w for w in r.warnings)


def test_v24_utf8_escapes_partial_birth_date_and_offset() -> None:
    r = mapped((SAMPLES / "orm_v24_utf8_escapes.hl7").read_bytes())
    it = first(r)
    assert it.attrs["SpecificCharacterSet"] == "ISO_IR 192"
    # \S\ inside a name part must not become a PN component separator.
    assert it.attrs["PatientName"] == "ŁUKASZ X^ZOË"
    assert it.attrs["PatientID"] == "12345"  # repetition chosen by assigning authority HOSP
    assert it.attrs["PatientBirthDate"] == ""  # YYYYMM stays empty, never invented
    assert any("PatientBirthDate" in w for w in r.warnings)
    assert it.attrs["RequestedProcedureComments"] == "Allergic & anxious Line\ntwo A"
    # 10:15 -0500 = 15:15 UTC = 17:15 in Berlin.
    assert it.sps["ScheduledProcedureStepStartTime"] == "171500"


def test_v251_procedure_code_from_obr44() -> None:
    it = first(mapped((SAMPLES / "orm_v251_crlf.hl7").read_bytes(), zone="UTC"))
    assert it.attrs["RequestedProcedureDescription"] == "CT Thorax"
    code = it.attrs["RequestedProcedureCodeSequence"][0]
    assert (code["CodeValue"], code["CodingSchemeDesignator"]) == ("PROC1", "LN")
    assert code["CodeMeaning"] == "CT Thorax"


@pytest.mark.parametrize(
    "sample,code,location",
    [("orm_bad_missing_pid3.hl7", Hl7Error.REQUIRED_FIELD_MISSING, "PID-3.1"),
     ("orm_bad_date.hl7", Hl7Error.DATA_TYPE, "OBR-27.4"),
     ("orm_bad_modality.hl7", Hl7Error.TABLE_VALUE_NOT_FOUND, "OBR-24")],
)  # fmt: skip
def test_type1_and_data_errors(sample: str, code: Hl7Error, location: str) -> None:
    with pytest.raises(MessageRejected) as exc:
        mapped((SAMPLES / sample).read_bytes())
    assert exc.value.code == code and exc.value.location == location


@pytest.mark.parametrize("code,dicom", [("S", "STAT"), ("A", "HIGH"), ("R", "ROUTINE"),
                                        ("P", "HIGH"), ("C", "HIGH"), ("T", "MEDIUM")])  # fmt: skip
def test_priority_table(code: str, dicom: str) -> None:
    raw = orm(obrs=[{27: f"^^^20260705101500^^{code}"}])
    assert first(mapped(raw)).attrs["RequestedProcedurePriority"] == dicom


def test_priority_falls_back_to_orc7_and_sex_table() -> None:
    raw = orm(obrs=[{27: ""}], start="20260705101500", sex="U")
    it = first(mapped(raw))
    assert it.attrs["RequestedProcedurePriority"] == "ROUTINE"  # ORC-7.6
    assert it.sps["ScheduledProcedureStepStartTime"] == "101500"  # ORC-7.4
    assert it.attrs["PatientSex"] == ""


def test_missing_patient_name_is_101() -> None:
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(patient_name=""))
    assert (exc.value.code, exc.value.location) == (Hl7Error.REQUIRED_FIELD_MISSING, "PID-5")


def test_date_only_start_is_rejected_102() -> None:
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(start="20260705"))
    assert exc.value.code == Hl7Error.DATA_TYPE


def test_hl7_null_clears_and_absent_is_reported() -> None:
    it = first(mapped(orm(obrs=[{30: '""', 12: "ISOLATION"}])))
    assert it.attrs["PatientTransportArrangements"] == ""  # "" = clear
    assert "PatientTransportArrangements" not in it.absent
    assert it.attrs["PatientState"] == "ISOLATION"


def test_unknown_order_control_is_rejected_103() -> None:
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(control="ZZ"))
    assert (exc.value.code, exc.value.location) == (Hl7Error.TABLE_VALUE_NOT_FOUND, "ORC-1")
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(control="NW", status="ZZ"))
    assert exc.value.location == "ORC-5"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_site_file_overrides_three_lines(tmp_path: Path) -> None:
    site = write(tmp_path, "site.yaml", """\
extends: default
tables:
  station_by_modality: {CT: CT_SITE}
attributes:
  AccessionNumber: {source: OBR-18, regex: "^ACC(\\\\d+)$"}
""")  # fmt: skip
    m = load_mapping(site)
    assert len(m.rules) == len(IHE.rules) and m.lifecycle == IHE.lifecycle
    it = first(mapped(orm(station=""), m))
    assert it.sps["ScheduledStationAETitle"] == "CT_SITE"  # modality → station table
    assert it.attrs["AccessionNumber"] == "1"  # regex extract
    assert m.tables["priority"] == IHE.tables["priority"]  # inherited


def test_station_rules_location_table_and_names(tmp_path: Path) -> None:
    site = write(tmp_path, "site.yaml", """\
extends: default
tables:
  station_by_location: {RAD: CT_RAD}
  station_name: {CT_RAD: CT Radiology}
  station_location: {CT_RAD: Building A}
""")  # fmt: skip
    it = first(mapped(orm(station=""), load_mapping(site)))
    assert it.sps["ScheduledStationAETitle"] == "CT_RAD"  # from PV1-3.1
    assert it.sps["ScheduledStationName"] == "CT Radiology"
    assert it.sps["ScheduledProcedureStepLocation"] == "Building A"


def test_join_const_truncate_and_reject_lengths(tmp_path: Path) -> None:
    site = write(tmp_path, "site.yaml", """\
extends: default
attributes:
  ImagingServiceRequestComments: {source: [OBR-13, OBR-12], join: " / "}
  InstitutionName: {const: General Hospital}
  AccessionNumber: {source: OBR-18}
  RequestedProcedureID: {source: OBR-19, required: true, too_long: reject}
""")  # fmt: skip
    m = load_mapping(site)
    r = mapped(orm(obrs=[{12: "DANGER", 13: "INFO", 18: "A" * 20}]), m)
    it = first(r)
    assert it.attrs["ImagingServiceRequestComments"] == "INFO / DANGER"
    assert it.attrs["InstitutionName"] == "General Hospital"
    assert it.attrs["AccessionNumber"] == "A" * 16  # SH 16: truncated with a warning
    assert any("AccessionNumber: truncated" in w for w in r.warnings)
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(obrs=[{19: "R" * 17}]), m)
    assert (exc.value.code, exc.value.location) == (Hl7Error.DATA_TYPE, "OBR-19")
    # The shipped default rejects over-long accession numbers (a classic RIS problem).
    with pytest.raises(MessageRejected):
        mapped(orm(obrs=[{18: "A" * 20}]))


def test_invalid_zds_uid_is_102() -> None:
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(zds="not-a-uid"))
    assert (exc.value.code, exc.value.location) == (Hl7Error.DATA_TYPE, "ZDS-1.1")


@pytest.mark.parametrize(
    "text,line,key",
    [("attributes:\n  PatientName: {source: PID-5, transfrom: x}\n", 2, "PatientName.transfrom"),
     ("attributes:\n  PatientNam: PID-5\n", 2, "PatientNam"),
     ("attributes:\n  PatientName:\n    source: PID5\n", 3, "PatientName"),
     ("attributes:\n  PatientSex: {source: PID-8, table: nope}\n", 2, "PatientSex.table"),
     ("lifecycle:\n  NW/SC: explode\nattributes:\n  PatientID: PID-3\n", 2, "NW/SC"),
     ("extends: default\nattributes:\n  X: [\n", None, ""),
     ("bogus: 1\nattributes:\n  PatientID: PID-3\n", 1, "bogus")],
)  # fmt: skip
def test_mapping_file_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int | None, key: str
) -> None:
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(MappingFileError) as exc:
        load_mapping(p)
    assert exc.value.path == str(p.resolve())  # load_mapping resolves the path it reads
    if line is not None:
        assert exc.value.line == line
    assert exc.value.mapping_key == key


def test_per_sender_selection(tmp_path: Path) -> None:
    site = write(tmp_path, "site.yaml", "extends: default\nvars:\n  issuer: OTHER\n")
    reg = MappingRegistry("", {"RIS|SITE2": str(site), "LAB": str(site)})
    assert reg.for_sender("RIS", "HOSP") is reg.default
    assert reg.for_sender("RIS", "SITE2") is reg.by_sender["RIS|SITE2"]
    assert reg.for_sender("LAB", "X") is reg.by_sender["LAB"]
    raw = (SAMPLES / "orm_v24_utf8_escapes.hl7").read_bytes()
    assert first(mapped(raw, reg.by_sender["LAB"])).attrs["PatientID"] == "777"


def test_unmapped_segments_are_warned() -> None:
    raw = orm().replace("\rORC|", "\rAL1|1||PENICILLIN\rORC|")
    r = mapped(raw)
    assert "segments not used by the mapping: AL1" in r.warnings


def test_two_order_groups_in_one_message() -> None:
    one = orm(placer="A1", filler="")
    two = orm(placer="B1", filler="", control="CA", status="CA")
    groups_two = two[two.index("ORC|") :]
    r = mapped(one + groups_two)
    assert [(g.placer, g.action, len(g.items)) for g in r.groups] == [
        ("A1", "create", 1), ("B1", "final", 0)]  # fmt: skip


def test_code_sequence_values_fit_their_vr() -> None:
    long_code = "C" * 20
    r = mapped(orm(obrs=[{44: f"{long_code}^" + "M" * 70 + "^LN"}]))
    code = first(r).attrs["RequestedProcedureCodeSequence"][0]
    assert (len(code["CodeValue"]), len(code["CodeMeaning"])) == (16, 64)
    assert any("CodeValue truncated" in w for w in r.warnings)


WORKLIST_SITE = """extends: default
tables:
  worklist_by_station: {CT_ROOM1: WL_CT, MR_ROOM1: WL_MR}
worklist:
  source: "@ScheduledStationAETitle"
  table: worklist_by_station
  on_missing: skip
"""


def test_worklist_label_rule_from_the_station_table(tmp_path: Path) -> None:
    """The ``worklist`` target sets WorklistItem.worklist (scp.per_called_ae_worklists)."""
    site = load_mapping(write(tmp_path, "site.yaml", WORKLIST_SITE))
    assert first(mapped(orm(), site)).worklist == "WL_CT"
    assert first(mapped(orm(station="MR_ROOM1", modality="MR"), site)).worklist == "WL_MR"
    assert first(mapped(orm(station="US_ROOM9"), site)).worklist is None  # skip → not given
    assert first(mapped(orm())).worklist is None  # the shipped mapping sets no label
    strict = WORKLIST_SITE.replace("on_missing: skip", "required: true")
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(station="US_ROOM9"), load_mapping(write(tmp_path, "strict.yaml", strict)))
    assert exc.value.code == Hl7Error.TABLE_VALUE_NOT_FOUND  # on_missing defaults to reject


@pytest.mark.parametrize(
    "text,key",
    [("extends: default\nworklist: {source: '@Nope'}\n", "worklist"),
     ("extends: default\nworklist: {source: OBR-21, colour: red}\n", "worklist.colour"),
     ("extends: default\nworklist: {source: OBR-21, table: nope}\n", "worklist.table")],
)  # fmt: skip
def test_worklist_rule_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(MappingFileError) as exc:
        load_mapping(write(tmp_path, "bad.yaml", text))
    assert exc.value.mapping_key == key


# -- fallbacks of the default mapping for real RIS feeds (issue #11) ----------------------

STRICT = load_mapping("strict")


def test_strict_profile_rejects_what_the_default_fills_in() -> None:
    """The shipped default took OBR-20 as the only SPS ID source (today: 101 at OBR-20);
    the strict profile keeps that, the default falls back to the Requested Procedure ID."""
    raw = (SAMPLES / "orm_bad_missing_spsid.hl7").read_bytes()
    with pytest.raises(MessageRejected) as exc:
        mapped(raw, STRICT)
    assert (exc.value.code, exc.value.location) == (Hl7Error.REQUIRED_FIELD_MISSING, "OBR-20")
    assert first(mapped(raw)).sps["ScheduledProcedureStepID"] == "RP1"


def test_ids_fall_back_to_accession_then_placer_unique_per_obr() -> None:
    """No OBR-18/19/20 (today: 101 at OBR-19): RPID ← accession ← placer, made unique
    per OBR when there are several; SPS ID ← RPID; accession ← filler (≤ 16 chars)."""
    one = first(mapped(orm(obrs=[{18: None, 19: None, 20: None}], filler="F-0042")))
    assert (one.attrs["AccessionNumber"], one.attrs["RequestedProcedureID"],
            one.sps["ScheduledProcedureStepID"]) == ("F-0042", "F-0042", "F-0042")  # fmt: skip
    bare = {18: None, 19: None, 20: None}
    two = mapped(orm(obrs=[bare, {**bare, 1: "2"}], filler="F-LONGER-THAN-16-CHARS"))
    got = [(i.attrs.get("AccessionNumber"), i.attrs["RequestedProcedureID"],
            i.sps["ScheduledProcedureStepID"]) for i in two.groups[0].items]  # fmt: skip
    assert [(i.attrs.get("AccessionNumber", "absent"), *x[1:]) for i, x in
            zip(two.groups[0].items, got, strict=True)] == [
        ("absent", "PL1.1", "PL1.1"), ("absent", "PL1.2", "PL1.2")]  # fmt: skip
    assert any("AccessionNumber: ORC-3.1 longer than 16" in w for w in two.warnings)


def test_accession_from_filler_can_be_turned_off(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text('extends: default\nvars:\n  accession_from_filler: "false"\n')
    it = first(mapped(orm(obrs=[{18: None}], filler="F-0042"), load_mapping(site)))
    assert "AccessionNumber" in it.absent and it.attrs["RequestedProcedureID"] == "RP1"


@pytest.mark.parametrize(
    "extra,date,time,alert",
    [({27: "", 36: "20260707111500"}, "20260707", "111500", False),
     ({27: "", 7: "20260708121500"}, "20260708", "121500", True)],
)  # fmt: skip
def test_start_falls_back_to_obr36_then_obr7_with_an_alert(
    extra: dict[int, str], date: str, time: str, alert: bool
) -> None:
    r = mapped(orm(obrs=[extra], start=""), zone="UTC")
    sps = first(r).sps
    assert (sps["ScheduledProcedureStepStartDate"], sps["ScheduledProcedureStepStartTime"]) == (
        date, time)  # fmt: skip
    assert any("OBR-7" in a for a in r.alerts) is alert


def test_start_from_tq1_7() -> None:
    text = orm(obrs=[{27: ""}], start="", version="2.5")
    text = text.replace("\rOBR|", "\rTQ1|1||||||20260709131500\rOBR|", 1)
    sps = first(mapped(text, zone="UTC")).sps
    assert sps["ScheduledProcedureStepStartDate"] == "20260709"


def test_missing_station_is_an_alert_not_a_rejection() -> None:
    """Today: 101 at OBR-21. Now the item is made with an empty station and the worker
    logs a WARNING; the strict profile still rejects it."""
    raw = orm(station="")
    r = mapped(raw)
    assert "SPS.ScheduledStationAETitle" in first(r).absent  # stored present-but-empty
    assert any("ScheduledStationAETitle: not in the message" in a for a in r.alerts)
    with pytest.raises(MessageRejected) as exc:
        mapped(raw, STRICT)
    assert exc.value.location == "OBR-21"


@pytest.mark.parametrize("code", ["ES", "IO", "PX", "OP", "XC", "GM", "SM", "BMD", "IVUS",
                                  "PT", "OT", "SR", "CT", "MG", "RTIMAGE"])  # fmt: skip
def test_every_dicom_modality_passes_through(code: str) -> None:
    """Today ES, IO, PX, OP, XC, GM, SM, BMD, IVUS were dead-lettered (103)."""
    assert first(mapped(orm(modality=code))).sps["Modality"] == code


@pytest.mark.parametrize("code,dicom", [("RAD", "CR"), ("MRI", "MR"), ("VUS", "US")])
def test_hl7_table_0074_codes_map_as_before(code: str, dicom: str) -> None:
    assert first(mapped(orm(modality=code))).sps["Modality"] == dicom


def test_unknown_modality_names_the_allowed_values_in_the_rejection() -> None:
    with pytest.raises(MessageRejected) as exc:
        mapped(orm(modality="XYZ"))
    assert exc.value.code == Hl7Error.TABLE_VALUE_NOT_FOUND and exc.value.location == "OBR-24"
    assert "IVUS" in exc.value.detail and "XYZ" not in str(exc.value)


# -- Japanese names: PID-5 repetitions by XPN-8 (issue #11) -----------------------------


@pytest.mark.parametrize(
    ("pid5", "pn"),
    [
        # JAHIS: alphabetic, ideographic and phonetic repetitions (table 4000 A/I/P)
        ("Yamada^Tarou^^^^^L^A~山田^太郎^^^^^L^I~やまだ^たろう^^^^^L^P",
         "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        # order of the repetitions does not matter; the alphabetic group comes first
        ("山田^太郎^^^^^L^I~やまだ^たろう^^^^^L^P~Yamada^Tarou^^^^^L^A",
         "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        # no alphabetic repetition: the group stays empty between the =
        ("山田^太郎^^^^^L^I~やまだ^たろう^^^^^L^P", "=山田^太郎=やまだ^たろう"),
        # trailing empty groups are dropped
        ("Yamada^Tarou^^^^^L^A~山田^太郎^^^^^L^I", "Yamada^Tarou=山田^太郎"),
        ("~やまだ^たろう^^^^^L^P", "==やまだ^たろう"),
    ],
)  # fmt: skip
def test_xpn8_repetitions_become_pn_component_groups(pid5: str, pn: str) -> None:
    """Today PatientName came from the first PID-5 repetition only: the ideographic and
    phonetic names of a JAHIS order were lost (``Yamada^Tarou``)."""
    raw = orm(patient_name=pid5, charset="UNICODE UTF-8").encode()
    assert first(mapped(raw)).attrs["PatientName"] == pn


@pytest.mark.parametrize(
    "pid5",
    [
        "DOE^JOHN^Q^JR^DR^PHD",
        "SMITH^JOHN~SMYTHE^JOHN^^^^^M",  # an alias repetition without XPN-8: not used
        "O\\S\\BRIEN^ANN",
        "MÜLLER^JÖRG^^^^^L^A",
    ],
)
def test_ordinary_names_map_as_before(pid5: str) -> None:
    """The shipped mapping now reads PID-5[*] with xpn_pn_groups: a name without XPN-8
    groups gives exactly what PID-5 with xpn_pn gave."""
    before = load_mapping()
    raw = orm(patient_name=pid5, charset="UNICODE UTF-8").encode()
    rule = next(r for r in before.rules if r.keyword == "PatientName")
    path = rule.sources[0].path
    assert rule.transform == "xpn_pn_groups" and path is not None and path.repetition == "*"
    old_rule = dataclasses.replace(
        rule,
        transform="xpn_pn",
        sources=(dataclasses.replace(rule.sources[0], path=parse_path("PID-5")),),
    )
    old = dataclasses.replace(before, rules=[old_rule if r is rule else r for r in before.rules])
    assert first(mapped(raw)).attrs["PatientName"] == first(mapped(raw, old)).attrs["PatientName"]


def test_mapping_file_default_charset_must_move_to_the_setting(tmp_path: Path) -> None:
    """The listener decides the charset at ACK time and cannot see mapping files; today a
    mapping's default_charset made the worker decode in another charset than the one the
    listener had checked."""
    site = tmp_path / "site.yaml"
    site.write_text("extends: default\ndefault_charset: UNICODE UTF-8\n")
    with pytest.raises(MappingFileError) as info:
        load_mapping(site)
    err = info.value
    assert err.path in (str(site), str(site.resolve()))
    assert (err.line, err.mapping_key) == (2, "default_charset")
    assert "move it to the setting mllp.sender_charsets" in str(err)
