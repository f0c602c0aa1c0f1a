"""hl7in: charset by MSH-18, separator normalisation, version coercion, HL7 paths, escapes."""

from __future__ import annotations

import pytest
from conftest import SAMPLES

from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.hl7.escapes import unescape
from bridge.hl7.message import parse_path
from bridge.hl7.msh import read_msh
from bridge.hl7.parse import coerce_version, parse


def test_latin1_by_msh18_and_default_charset() -> None:
    msg = parse((SAMPLES / "orm_v231_zds_latin1.hl7").read_bytes())
    assert msg.charset == "8859/1"
    assert msg.get("PID-5.1") == "MÜLLER"
    # MSH-18 empty: the sender default decides (Latin-1 bytes in the LF-separated sample).
    msg = parse((SAMPLES / "orm_v23_two_obr_nozds.hl7").read_bytes(), default_charset="8859/1")
    assert msg.charset == "8859/1"
    assert msg.get("PID-5.1") == "ÅSTRÖM"


def test_utf8_and_undecodable_bytes_rejected_with_102() -> None:
    raw = (SAMPLES / "orm_v24_utf8_escapes.hl7").read_bytes()
    assert parse(raw).get("PID-5.2") == "ZOË"
    bad = raw.replace("ZOË".encode(), b"ZO\xcb")  # a Latin-1 byte in a UTF-8 message
    with pytest.raises(MessageRejected) as exc:
        parse(bad)
    assert exc.value.code == Hl7Error.DATA_TYPE and exc.value.location == "MSH-18"


def test_unknown_charset_name_rejected_with_103() -> None:
    raw = (SAMPLES / "orm_v24_utf8_escapes.hl7").read_bytes().replace(b"UNICODE UTF-8", b"KLINGON")
    with pytest.raises(MessageRejected) as exc:
        parse(raw)
    assert exc.value.code == Hl7Error.TABLE_VALUE_NOT_FOUND and exc.value.location == "MSH-18"


@pytest.mark.parametrize(
    "sent,used", [("2.3.0", "2.3"), ("2.3.1", "2.3.1"), ("2.5.1", "2.5.1"), ("2.9", "2.5.1"),
                  ("2.6", "2.5.1"), ("2.4.0", "2.4")],
)  # fmt: skip
def test_version_coercion(sent: str, used: str) -> None:
    assert coerce_version(sent) == used


def test_version_230_parses_and_crlf_lf_are_normalised() -> None:
    assert parse((SAMPLES / "orm_v230_version.hl7").read_bytes()).version == "2.3"
    crlf = parse((SAMPLES / "orm_v251_crlf.hl7").read_bytes())
    assert [s.name for s in crlf.segments] == ["MSH", "PID", "PV1", "ORC", "OBR", "ZDS"]
    lf = parse((SAMPLES / "orm_v23_two_obr_nozds.hl7").read_bytes())
    assert [s.name for s in lf.segments].count("OBR") == 2


def test_garbage_is_rejected() -> None:
    with pytest.raises(MessageRejected):
        parse(b"this is not HL7")


def test_paths_repetitions_and_selectors() -> None:
    msg = parse((SAMPLES / "orm_v24_utf8_escapes.hl7").read_bytes())
    assert msg.get("PID-3") == "777"
    assert msg.get("PID-3[2]") == "12345"
    assert msg.get("PID-3[4=HOSP].1") == "12345"
    assert msg.get("PID.3.4") == "OTHER"
    assert msg.get("OBR-27.4") == "202607051015-0500"
    assert msg.get("ZDS-1.1").startswith("1.2.826")
    assert msg.get("MSH-9.2") == "O01"
    assert msg.get("MSH-3") == "RIS"
    assert [n.text for n in msg.resolve(parse_path("NTE[*]-3"))] == [
        "Allergic & anxious",
        "Line\ntwo A",
    ]
    assert msg.get("PV1-99") == ""
    with pytest.raises(ValueError):
        parse_path("PID5")


def test_unescape_sequences() -> None:
    enc = "^~\\&"
    assert unescape(r"a\F\b\S\c\T\d\R\e\E\f", enc) == "a|b^c&d~e\\f"
    assert unescape("x\\.br\\y\\X4142\\\\H\\z\\N\\", enc) == "x\nyABz"
    assert unescape("\\XC3A9\\", enc, "utf-8") == "é"


def test_read_msh_from_bytes() -> None:
    msh = read_msh((SAMPLES / "orm_v24_utf8_escapes.hl7").read_bytes())
    assert (msh.charset, msh.version, msh.sending_app, msh.sending_facility) == (
        "UNICODE UTF-8", "2.4", "RIS", "HOSP")  # fmt: skip
