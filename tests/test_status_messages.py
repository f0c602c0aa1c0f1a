"""Status messages to the RIS (issue #13): the order status from its procedure steps,
the message rendered from the mapping file's ``status_messages`` template, and the
template's checks when the mapping file is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.store.item import SPS, WorklistItem
from bridge.worker.mapping.load import MappingFileError, load_mapping
from bridge.worker.status_messages import order_status, render

IHE = load_mapping()


def item(status: str, spsid: str = "S1", name: str = "DOE^JANE") -> WorklistItem:
    return WorklistItem(spsid, {
        "PatientName": name, "PatientID": "P1", "IssuerOfPatientID": "HOSP",
        "AccessionNumber": "A1", "RequestedProcedureID": "RP1",
        "RequestedProcedureCodeSequence": [{"CodeValue": "CTHEAD", "CodingSchemeDesignator": "L"}],
        "RequestedProcedureDescription": "CT head",
        SPS: [{"ScheduledProcedureStepStatus": status, "ScheduledProcedureStepID": spsid,
               "Modality": "CT"}],
    })  # fmt: skip


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["SCHEDULED"], "SC"),
        (["STARTED"], "IP"),
        (["STARTED", "SCHEDULED"], "IP"),
        (["COMPLETED", "SCHEDULED"], "IP"),  # partly done: in progress, not complete
        (["COMPLETED", "COMPLETED"], "CM"),
        (["COMPLETED", "DISCONTINUED"], "CM"),  # every step final, one was performed
        (["DISCONTINUED", "CANCELED"], "DC"),
        ([], ""),
    ],
)
def test_order_status(statuses: list[str], expected: str) -> None:
    assert order_status([item(s, f"S{n}") for n, s in enumerate(statuses)]) == expected


def test_render_builds_msh_and_fills_every_segment() -> None:
    template = IHE.status_messages
    assert template is not None
    items = [item("COMPLETED", "S1", "O'Hara^Ann^B^DR^PHD"), item("COMPLETED", "S2")]
    control_id, raw = render(template, items, "PL|1", "FL1", "CM", 1_780_000_000.0)
    segments = raw.decode("utf-8").split("\r")
    assert segments[-1] == ""  # CR after the last segment
    msh = segments[0].split("|")
    assert (msh[8], msh[9], msh[11], msh[17]) == ("ORM^O01", control_id, "2.3.1", "UNICODE UTF-8")
    assert segments[1].split("|")[5] == "O'Hara^Ann^B^PHD^DR"  # XPN: suffix before prefix
    orc = segments[2].split("|")
    assert (orc[1], orc[2], orc[5]) == ("SC", "PL\\F\\1", "CM")  # a | in a value escaped
    obrs = [s.split("|") for s in segments if s.startswith("OBR|")]
    assert [(o[1], o[18], o[20], o[24]) for o in obrs] == [("1", "A1", "S1", "CT"),
                                                           ("2", "A1", "S2", "CT")]
    assert obrs[0][4] == "CTHEAD^CT head^L"
    assert render(template, items, "PL|1", "FL1", "CM", 0.0)[0] != control_id  # fresh MSH-10


def write(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(f"extends: default\nstatus_messages:\n{section}")
    return path


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  segments: ['ORC|SC|{Nonsense}']\n", "unknown placeholder {Nonsense}"),
        ("  segments: ['MSH|^~\\\\&|X']\n", "is not a segment"),
        ("  type: ADT^A08\n", "allowed: ORM^O01, OMG^O19, OMI^O23"),
        ("  version: '3'\n", "an HL7 version"),
        ("  colour: red\n", "unknown key"),
    ],
)
def test_template_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(MappingFileError) as err:
        load_mapping(write(tmp_path, section))
    assert message in str(err.value) and "site.yaml" in str(err.value)


def test_v25_defaults_to_omg(tmp_path: Path) -> None:
    m = load_mapping(write(tmp_path, "  version: '2.5.1'\n  segments: ['ORC|SC|{placer}']\n"))
    assert m.status_messages is not None and m.status_messages.message_type == "OMG^O19"
