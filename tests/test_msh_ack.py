"""MSH pre-read and ACK construction (pure functions, no sockets)."""

from __future__ import annotations

import codecs
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.codes import AckCode, Hl7Error
from bridge.hl7.ack import AckPolicy, Outcome, build_ack, escape
from bridge.hl7.charsets import CHARSETS, lookup
from bridge.hl7.msh import MshError, normalise_version, read_msh

SAMPLES = Path(__file__).parent / "samples"
NOW = dt.datetime(2026, 7, 5, 10, 15, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def sample(name: str, sep: bytes = b"\r") -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"\n", sep)


def segments(ack: bytes, codec: str = "latin-1") -> list[list[str]]:
    assert ack.endswith(b"\r")
    return [s.split("|") for s in ack.decode(codec).split("\r")[:-1]]


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("2.3", "2.3"), ("2.3.0", "2.3"), ("2.3.1", "2.3.1"), ("2.5.1", "2.5.1"), ("2.4^DEU", "2.4")],
)
def test_version_normalisation(raw: str, norm: str) -> None:
    assert normalise_version(raw.split("^")[0]) == norm


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("8859/1", "latin-1"),
        ("UNICODE UTF-8", "utf-8"),
        ("ASCII", "ascii"),
        ("8859/2", "iso8859-2"),
        ("8859/15", "iso8859-15"),
        ("utf-8", "utf-8"),
        ("UNICODE UTF-16", None),
    ],
)
def test_charset_table_0211(name: str, codec: str | None) -> None:
    entry = lookup(name)
    assert entry is not None and entry.name in CHARSETS
    if codec is None:
        assert entry.refused  # known, refused with a reason (103)
    else:
        assert codecs.lookup(entry.codec).name == codecs.lookup(codec).name


@pytest.mark.parametrize("sep", [b"\r", b"\n", b"\r\n"])
def test_read_msh_any_segment_separator(sep: bytes) -> None:
    h = read_msh(sample("mllp_orm_v23_zds.hl7", sep))
    assert (h.sending_app, h.sending_facility) == ("RIS", "RADIOLOGY")
    assert (h.receiving_app, h.receiving_facility) == ("MWL_BRIDGE", "HOSPITAL")
    assert h.control_id == "MSG00001"
    assert h.message_type == "ORM^O01"
    assert h.version == "2.3"
    assert h.processing_id == "P"
    assert h.charset == ""
    assert not h.enhanced_mode


def test_read_msh_utf8_charset() -> None:
    h = read_msh(sample("mllp_orm_v251_utf8.hl7"))
    assert h.decision.names == ("UNICODE UTF-8",) and not h.decision.code_extension
    assert h.charset == "UNICODE UTF-8"
    assert h.message_type == "ORM^O01"
    assert h.version == "2.5.1"


def test_read_msh_other_delimiters() -> None:
    h = read_msh(b"MSH#$%*@#A#B#C#D#20260101##ORM$O01#X1#P#2.3\r")
    assert h.message_type == "ORM^O01"
    assert h.control_id == "X1"


@pytest.mark.parametrize(
    "raw", [b"", b"hello world", b"PID|1\rMSH|^~\\&|A", b"MSHA^~\\&|x", b"MSH|\r"]
)
def test_garbage_is_not_an_msh(raw: bytes) -> None:
    with pytest.raises(MshError):
        read_msh(raw)


def test_undecodable_msh_keeps_partial_for_the_nak() -> None:
    raw = b"MSH|^~\\&|R\xe9S|B|C|D|||ORM^O01|C42|P|2.5|||||DE|UNICODE UTF-8\r"
    with pytest.raises(MshError) as info:
        read_msh(raw)
    assert info.value.partial is not None
    assert info.value.partial.control_id == "C42"


def test_ack_v23_original_mode() -> None:
    h = read_msh(sample("mllp_orm_v23_zds.hl7"))
    ack = build_ack(h, Outcome.ACCEPTED, AckPolicy(), now=NOW, control_id="ACK1")
    assert ack.code is AckCode.AA and ack.send
    msh, msa = segments(ack.content)
    assert msh[:12] == [
        "MSH", "^~\\&", "MWL_BRIDGE", "HOSPITAL", "RIS", "RADIOLOGY",
        "20260705101500+0200", "", "ACK", "ACK1", "P", "2.3",
    ]  # fmt: skip
    assert len(msh) == 12  # MSH-15/16/18 empty
    assert msa == ["MSA", "AA", "MSG00001", "Message accepted"]


def test_ack_v251_error_has_err3_and_echoes_charset() -> None:
    h = read_msh(sample("mllp_orm_v251_utf8.hl7"))
    ack = build_ack(
        h, Outcome.ERROR, AckPolicy(), error=Hl7Error.DUPLICATE_KEY, text="dup", location="MSH-10"
    )
    msh, msa, err = segments(ack.content, "utf-8")
    assert msh[8] == "ACK^O01^ACK"
    assert msh[14] == "" and msh[15] == ""
    assert msh[17] == "UNICODE UTF-8"
    assert msa == ["MSA", "AE", "MSG00002", "dup"]
    assert err == ["ERR", "", "MSH^1^10", "205^Duplicate key identifier^HL70357", "E"]


def test_ack_v23_error_uses_err1() -> None:
    h = read_msh(sample("mllp_orm_v23_zds.hl7"))
    ack = build_ack(h, Outcome.REJECTED, AckPolicy(), error=Hl7Error.UNSUPPORTED_VERSION)
    _msh, msa, err = segments(ack.content)
    assert msa[1] == "AR"
    assert err == ["ERR", "^^^203&Unsupported version id&HL70357"]


def test_ack_encoded_in_inbound_charset() -> None:
    raw = "MSH|^~\\&|RIS|KÖLN|MWL|HÔPITAL|||ORM^O01|1|P|2.4|||||DE|8859/1\r".encode("latin-1")
    ack = build_ack(read_msh(raw), Outcome.ACCEPTED, AckPolicy())
    assert "KÖLN".encode("latin-1") in ack.content
    assert "HÔPITAL".encode("latin-1") in ack.content
    msh = segments(ack.content)[0]
    assert msh[8] == "ACK^O01^ACK"
    assert msh[17] == "8859/1"


@pytest.mark.parametrize(
    ("msh15", "outcome", "code", "sent"),
    [
        ("AL", Outcome.ACCEPTED, AckCode.CA, True),
        ("AL", Outcome.REJECTED, AckCode.CR, True),
        ("NE", Outcome.ACCEPTED, AckCode.CA, False),
        ("NE", Outcome.REJECTED, AckCode.CR, False),
        ("ER", Outcome.ACCEPTED, AckCode.CA, False),
        ("ER", Outcome.ERROR, AckCode.CE, True),
        ("SU", Outcome.ACCEPTED, AckCode.CA, True),
        ("SU", Outcome.REJECTED, AckCode.CR, False),
    ],
)
def test_enhanced_mode_per_msh15(msh15: str, outcome: Outcome, code: AckCode, sent: bool) -> None:
    raw = f"MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5|||{msh15}|NE\r".encode()
    ack = build_ack(read_msh(raw), outcome, AckPolicy())
    assert (ack.code, ack.send) == (code, sent)


def test_configurable_codes() -> None:
    h = read_msh(sample("mllp_orm_v23_zds.hl7"))
    ack = build_ack(h, Outcome.REJECTED, AckPolicy(reject_code="AE"))
    assert ack.code is AckCode.AE


def test_nak_without_any_msh() -> None:
    ack = build_ack(None, Outcome.REJECTED, AckPolicy(), error=Hl7Error.SEGMENT_SEQUENCE)
    msh, msa, err = segments(ack.content)
    assert msh[0] == "MSH" and msh[11] == "2.5"
    assert msa[:3] == ["MSA", "AR", ""]
    assert err[3].startswith("100^")


def test_escape() -> None:
    assert escape("a|b^c~d\\e&f\rg") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g"


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=120).map(lambda b: b"MSH" + b),
        st.binary(max_size=120).map(lambda b: b"MSH|^~\\&|" + b),
    )
)
def test_any_bytes_get_an_answer(raw: bytes) -> None:
    """Garbage never crashes the ACK path: read_msh either succeeds or raises MshError,
    and a NAK can always be built from what was read."""
    try:
        h = read_msh(raw)
    except MshError as exc:
        h = exc.partial
    ack = build_ack(h, Outcome.REJECTED, AckPolicy(), error=Hl7Error.SEGMENT_SEQUENCE)
    assert ack.content.startswith(b"MSH") and b"\rMSA" in ack.content
