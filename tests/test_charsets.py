"""One charset truth from MLLP to the worklist (issue #11), without sockets.

The table (HL7 table 0211 + aliases) and the decision the listener makes at ACK time:
every spelling gives the same decision in both stages; whatever the listener admits,
the worker decodes; ISO 2022 code extension (HL7 v2.5 2.16.9.18 MSH-18 repetitions,
2.16.9.20 MSH-20 / table 0356) with real ESC sequences and with HL7's ``\\C..\\`` /
``\\M..\\`` escapes (2.7.2); ``\\X..\\`` (2.7.3) strict; the ACK in the same charset.
"""

from __future__ import annotations

import codecs
import time

import pydicom.charset
import pytest
from charset_samples import SAMPLES_BY_LANGUAGE

from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.core.settings import load_settings
from bridge.hl7.ack import AckPolicy, Outcome, build_ack
from bridge.hl7.charsets import (
    ALIASES,
    CHARSETS,
    GRAPHIC_SETS,
    CharsetError,
    Decision,
    DecodeError,
    decide,
)
from bridge.hl7.message import parse_path
from bridge.hl7.msh import MshError, read_msh
from bridge.hl7.parse import decide as worker_decide
from bridge.hl7.parse import parse, read_head
from bridge.intake.submit import IntakeRecord
from bridge.mllp.gate import check_decodable, check_header

MLLP = load_settings(env={}).mllp
SPELLINGS = sorted([*CHARSETS, *ALIASES, "utf8", " iso  ir87 "])


def message(msh18: str = "", pid5: str = "DOE^JOHN", msh20: str = "", msh4: str = "HOSP") -> str:
    """A small ORM^O01 as text (encode it in the charset under test)."""
    return (
        f"MSH|^~\\&|RIS|{msh4}|MWL|HOSP|20260705101500||ORM^O01|C1|P|2.5||||||{msh18}||{msh20}\r"
        f"PID|1||P1^^^HOSP||{pid5}\rORC|NW|PL1\rOBR|1|PL1||CT^CT\r"
    )


def admitted(raw: bytes) -> tuple[str, Decision] | tuple[str, Hl7Error]:
    """What the listener does at ACK time: ("AA", decision) or ("refused", code)."""
    try:
        h = read_msh(raw, MLLP.default_charset, MLLP.sender_charsets)
    except MshError as exc:
        code = {MshError.UNKNOWN_CHARSET: Hl7Error.TABLE_VALUE_NOT_FOUND,
                MshError.UNDECODABLE: Hl7Error.DATA_TYPE}[exc.kind]  # fmt: skip
        return "refused", code
    refusal = check_header(h, MLLP) or check_decodable(raw, h, MLLP)
    if refusal is not None:
        return "refused", refusal.error
    record = IntakeRecord.from_msh(raw, h, received_at=time.time(), peer="t", ack_mode="commit")
    return "AA", Decision.from_record(record.to_hash()["charset_used"])


# -- one table, one decision --------------------------------------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_name_and_alias_gives_the_same_decision_in_both_stages(spelling: str) -> None:
    """Today msh.py and hl7in disagree: UTF8, ISO-8859-1, ISO8859-1, LATIN1, CP1252,
    US-ASCII and ISO IR14 were ACKed AA by the listener and dead-lettered with 103 by
    the worker; ISO IR100, UNICODE and CNS 11643-1992 the other way round."""
    raw = message(spelling).encode("ascii")
    try:
        listener = read_msh(raw).decision
    except MshError as exc:
        assert exc.kind == MshError.UNKNOWN_CHARSET and exc.location == "MSH-18"
        with pytest.raises(MessageRejected) as info:
            worker_decide(read_head(raw), MLLP.default_charset)
        assert info.value.code == Hl7Error.TABLE_VALUE_NOT_FOUND
        return
    worker = worker_decide(read_head(raw), MLLP.default_charset)
    assert worker == listener
    assert listener.names[-1] == (ALIASES.get(" ".join(spelling.split()).upper())
                                  or " ".join(spelling.split()).upper())  # fmt: skip


#: A family name per script, tried in order until one encodes in the set under test.
_NAMES = ["MÜLLER", "DVOŘÁK", "ĦAĠAR", "ĶĒNIŅŠ", "ИВАНОВ", "عمر", "ΔΗΜΗΤΡΙΟΥ", "כהן",
          "ŞAHİN", "ŒUVRE€", "O’NEIL"]  # fmt: skip
#: Sets that need ISO 2022: (name in that set, Python codec that encodes the message).
_EXTENDED = {
    "ISO IR14": ("ﾔﾏﾀﾞ", "shift_jis"),  # 8-bit JIS X 0201 Katakana in GR
    "ISO IR87": ("山田", "iso2022_jp"),
    "ISO IR159": ("丂", "iso2022_jp_1"),  # a JIS X 0212 kanji
    "KS X 1001": ("홍길동", "euc_kr"),
}
_WIDE = {"GB 18030-2000": ("王小明", "gb18030"), "BIG-5": ("王小明", "big5")}


def _sample_for(name: str) -> tuple[str, str]:
    if name in _EXTENDED:
        return _EXTENDED[name]
    if name in _WIDE:
        return _WIDE[name]
    codec = CHARSETS[name].codec
    for family in _NAMES:
        try:
            family.encode(codec)
        except UnicodeEncodeError:
            continue
        if not family.isascii():
            return family, codec
    return "DOE", codec  # ASCII


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_what_the_listener_acks_aa_the_worker_decodes(spelling: str) -> None:
    """The listener's verdict and record, then the worker with that record: AA implies
    the worker decodes the very name that was sent; a refusal happens at ACK time.
    Today a message with MSH-18 UTF8 (and the 6 other spellings above) got AA and then a
    103 dead letter from the worker."""
    entry = CHARSETS.get(ALIASES.get(" ".join(spelling.split()).upper(), ""))
    entry = entry or CHARSETS.get(" ".join(spelling.split()).upper())
    assert entry is not None
    if entry.refused:
        raw = message(spelling).encode("ascii")
        assert admitted(raw) == ("refused", Hl7Error.TABLE_VALUE_NOT_FOUND)
        return
    family, codec = _sample_for(entry.name)
    raw = message(spelling, f"{family}^ANNA").encode(codec)
    verdict, decision = admitted(raw)
    assert verdict == "AA", decision
    assert isinstance(decision, Decision)
    assert parse(raw, decision).get("PID-5.1") == family


def test_the_table_is_hl7_table_0211_plus_documented_extras() -> None:
    table_0211 = {
        "ASCII", "8859/1", "8859/2", "8859/3", "8859/4", "8859/5", "8859/6", "8859/7",
        "8859/8", "8859/9", "8859/15", "ISO IR6", "ISO IR14", "ISO IR87", "ISO IR159",
        "GB 18030-2000", "KS X 1001", "CNS 11643-1992", "BIG-5", "UNICODE",
        "UNICODE UTF-8", "UNICODE UTF-16", "UNICODE UTF-32",
    }  # fmt: skip
    assert {n for n, c in CHARSETS.items() if c.in_0211} == table_0211
    assert {n for n, c in CHARSETS.items() if not c.in_0211} == {"WINDOWS-1252"}
    assert set(ALIASES.values()) <= set(CHARSETS)
    for alias in ("UTF8", "UTF-8", "ISO-8859-1", "ISO8859-1", "LATIN1", "CP1252",
                  "WINDOWS-1252", "US-ASCII", "ISO IR100", "UNICODE"):  # fmt: skip
        assert decide(alias).names[0] in CHARSETS


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("UNICODE UTF-16", "MLLP"),
        ("UTF-32", "MLLP"),
        ("CNS 11643-1992", "Big5"),
    ],
)
def test_known_but_refused_names_say_why(name: str, words: str) -> None:
    """UTF-16/32 code units contain the MLLP framing bytes; CNS 11643 has no codec (the
    worker used to read it as Big5, which changes the characters)."""
    with pytest.raises(CharsetError) as info:
        decide(name)
    assert words in info.value.reason and info.value.location == "MSH-18"


def test_scheme_not_in_table_0356_and_impossible_combinations_are_103() -> None:
    with pytest.raises(CharsetError) as info:
        decide("~ISO IR87", "ISO 2022")
    assert info.value.location == "MSH-20"
    with pytest.raises(CharsetError):
        decide("UNICODE UTF-8~ISO IR87")  # UTF-8 has no ISO 2022 designation
    with pytest.raises(CharsetError) as info:
        decide("UNICODE UTF-8", "ISO 2022-1994")
    assert info.value.location == "MSH-20"
    with pytest.raises(CharsetError):
        decide("8859/1~~ISO IR87")  # an empty alternate names nothing


def test_the_recorded_decision_round_trips_and_refuses_what_it_does_not_know() -> None:
    d = decide("", "", "~ISO IR87", default_source="mllp.sender_charsets")
    assert d == Decision(("ASCII", "ISO IR87"), "", "mllp.sender_charsets")
    assert Decision.from_record(d.to_record()) == d
    with pytest.raises(CharsetError):
        Decision.from_record('{"names":["KLINGON"],"scheme":""}')
    with pytest.raises(CharsetError):
        Decision.from_record("not json")


def test_sender_charsets_decide_for_an_empty_msh18_by_the_sender_mapping_keys() -> None:
    raw = message("", "ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ", msh4="ATHENS^1.2.3^ISO").encode("iso8859_7")
    senders = {"RIS|ATHENS": "8859/7", "RIS": "UNICODE UTF-8"}
    h = read_msh(raw, "8859/1", senders)
    assert h.decision == Decision(("8859/7",), "", "mllp.sender_charsets")
    assert read_msh(raw.replace(b"ATHENS", b"PATRAS"), "8859/1", senders).decision.names == (
        "UNICODE UTF-8",
    )
    assert parse(raw, h.decision).get("PID-5.1") == "ΔΗΜΗΤΡΙΟΥ"
    assert read_msh(raw, "8859/1").decision.source == "mllp.default_charset"


# -- ISO 2022 ----------------------------------------------------------------------------


def test_jahis_iso2022_message_keeps_its_kanji_and_kana() -> None:
    """MSH-18 ``~ISO IR87`` + MSH-20 ``ISO 2022-1994``: today the worker read it as Latin-1
    (first repetition empty) and 山田 was stored as ``$B;3ED (B``. Inside the JIS X 0208
    runs the bytes ``^`` (ま = ``$^``) and ``&`` (う = ``$&``) are halves of kana: the whole
    message is decoded before it is split, so they split nothing."""
    sample = SAMPLES_BY_LANGUAGE["japanese"]
    raw = sample.message()
    assert b"\x1b$B$d$^$@\x1b(B" in raw and b"$&\x1b(B" in raw
    verdict, decision = admitted(raw)
    assert verdict == "AA"
    assert isinstance(decision, Decision)
    assert decision == Decision(("ASCII", "ISO IR87"), "ISO 2022-1994")
    msg = parse(raw, decision)
    reps = [(n.part(1), n.part(2), n.part(8)) for n in msg.resolve(parse_path("PID-5[*]"))]
    assert reps == [("Yamada", "Tarou", "A"), ("山田", "太郎", "I"), ("やまだ", "たろう", "P")]
    assert msg.charset == "ASCII~ISO IR87"


def test_iso_ir87_alone_is_iso_2022_jp_text() -> None:
    raw = message("ISO IR87", "山田^太郎").encode("iso2022_jp")
    verdict, decision = admitted(raw)
    assert verdict == "AA" and isinstance(decision, Decision)
    assert parse(raw, decision).get("PID-5.2") == "太郎"


def test_several_alternate_sets_with_their_escape_sequences() -> None:
    """JIS X 0208 + JIS X 0212 (ESC $ B / ESC $ ( D), KS X 1001 in G1 (ESC $ ) C, the
    DICOM way), GB 2312 in G1 (ESC $ ) A), ISO 8859/7 in G1 (ESC - F): each only because
    MSH-18 declares it."""
    jp = message("~ISO IR87~ISO IR159", "山田^丂", "ISO 2022-1994").encode("iso2022_jp_1")
    assert b"\x1b$(D" in jp
    assert parse(jp, admitted(jp)[1]).get("PID-5.2") == "丂"  # type: ignore[arg-type]
    ko = message("~KS X 1001", "@^ANNA", "ISO 2022-1994").encode("ascii")
    ko = ko.replace(b"@", b"\x1b$)C" + "홍길동".encode("euc_kr"))
    assert parse(ko, admitted(ko)[1]).get("PID-5.1") == "홍길동"  # type: ignore[arg-type]
    zh = message("~GB 18030-2000", "@^ANNA", "ISO 2022-1994").encode("ascii")
    zh = zh.replace(b"@", b"\x1b$)A" + "王小明".encode("gb2312"))
    assert parse(zh, admitted(zh)[1]).get("PID-5.1") == "王小明"  # type: ignore[arg-type]
    el = message("~8859/7", "@^ANNA", "ISO 2022-1994").encode("ascii")
    el = el.replace(b"@", b"\x1b-F" + "ΔΗΜΗΤΡΙΟΥ".encode("iso8859_7"))
    assert parse(el, admitted(el)[1]).get("PID-5.1") == "ΔΗΜΗΤΡΙΟΥ"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msh18", "body", "why"),
    [
        ("~ISO IR87", b"\x1b$(D0!\x1b(B", "not declare"),  # JIS X 0212 not declared
        ("~ISO IR87", b"\x1b$B;3E\x1b(B", "not valid"),  # half a kanji
        ("~ISO IR87", b"\x1b$B;3ED", "control byte"),  # no switch back before the CR
        ("~ISO IR87", b"\x1b%G", "unknown escape"),  # UTF-8 by ISO 2022 DOCS: not ours
        ("~ISO IR87", "É".encode("latin-1"), "no G1"),  # GR byte with no G1 set
        ("~8859/7", b"\x1b-F\xae", "not valid"),  # 0xAE is unassigned in 8859/7
        ("", b"\x1b$B;3ED\x1b(B", "ESC byte"),  # ISO 2022 bytes, MSH-18 empty
        ("8859/1", b"\x1b$B;3ED\x1b(B", "ESC byte"),
    ],
)
def test_iso2022_bytes_that_do_not_decode_are_102_at_ack_and_in_the_worker(
    msh18: str, body: bytes, why: str
) -> None:
    """Today the last two were ACKed AA and 山田 reached the worklist as ``$B;3ED (B``
    (Latin-1 with the ESC bytes dropped); the others did not exist as a rule."""
    raw = message(msh18, "@", "ISO 2022-1994" if msh18.startswith("~") else "")
    data = raw.encode("ascii").replace(b"@", body)
    assert admitted(data) == ("refused", Hl7Error.DATA_TYPE)
    with pytest.raises(MessageRejected) as info:
        parse(data, read_msh(data).decision)
    assert info.value.code == Hl7Error.DATA_TYPE and why in str(info.value)


def test_hl7_charset_escapes_in_mode_2_3() -> None:
    """MSH-20 ``2.3``: ``\\M2442\\`` switches to JIS X 0208, ``\\C2842\\`` back to ASCII,
    ``\\C2D41\\`` puts ISO-IR 100 in G1 (HL7 v2.5 2.7.2). Today these escapes were
    dropped and the bytes between them read as ASCII: 山田 became ``;3ED``."""
    pid5 = "\\M2442\\;3ED\\C2842\\^\\M2442\\B@O:\\C2842\\"
    raw = message("~ISO IR87", pid5, "2.3").encode("ascii")
    verdict, decision = admitted(raw)
    assert verdict == "AA"
    assert parse(raw, decision).get("PID-5.1") == "山田"  # type: ignore[arg-type]
    assert parse(raw, decision).get("PID-5.2") == "太郎"  # type: ignore[arg-type]
    latin = message("ASCII~8859/1", "@^ANNA", "2.3").encode("ascii")
    latin = latin.replace(b"@", b"M\\C2D41\\\xdcLLER")
    assert parse(latin, admitted(latin)[1]).get("PID-5.1") == "MÜLLER"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msh18", "msh20", "pid5"),
    [
        ("~ISO IR87", "2.3", "\\M242844\\0!\\C2842\\"),  # JIS X 0212 not declared
        ("~ISO IR87", "2.3", "\\C2442\\;3ED\\C2842\\"),  # \C for a multi-byte set
        ("8859/1", "", "\\M2442\\;3ED\\C2842\\"),  # no code extension declared
        ("UNICODE UTF-8", "", "\\C2D41\\X"),
    ],
)
def test_unresolvable_charset_escapes_are_102(msh18: str, msh20: str, pid5: str) -> None:
    """Today every ``\\C..\\``/``\\M..\\`` was dropped silently, whatever MSH-18 said."""
    raw = message(msh18, pid5, msh20).encode("ascii")
    assert admitted(raw) == ("refused", Hl7Error.DATA_TYPE)
    with pytest.raises(MessageRejected):
        parse(raw, read_msh(raw).decision)


@pytest.mark.parametrize(
    ("msh18", "pid5", "codec"),
    [
        ("UNICODE UTF-8", "ZO\\XC3\\", "utf-8"),  # half a UTF-8 character
        ("UNICODE UTF-8", "ZO\\XZZ\\", "utf-8"),  # not hex
        ("ASCII", "ZO\\XCB\\", "ascii"),  # not ASCII
        ("~ISO IR87", "ZO\\XE9\\", "ascii"),  # a GR byte, and no G1 set declared
    ],
)
def test_x_escape_that_does_not_decode_is_rejected_not_replaced(
    msh18: str, pid5: str, codec: str
) -> None:
    """HL7 v2.5 2.7.3 ``\\Xhh..\\``: today ``ZO\\XC3\\`` became ``ZO\\ufffd`` (U+FFFD)
    in the worklist and ``\\XZZ\\`` vanished; now the listener refuses it (102) and a
    worker reading an older message rejects it (102)."""
    raw = message(msh18, f"{pid5}^ANNA", "ISO 2022-1994" if "~" in msh18 else "")
    data = raw.encode(codec)
    assert admitted(data) == ("refused", Hl7Error.DATA_TYPE)
    msg = parse(data, read_msh(data).decision)  # decodes: the escape is only text so far
    with pytest.raises(MessageRejected) as info:
        msg.get("PID-5.1")
    assert info.value.code == Hl7Error.DATA_TYPE


def test_x_escape_in_the_message_charset() -> None:
    raw = message("UNICODE UTF-8", "ZO\\XC38B\\^ANNA").encode()
    assert parse(raw, admitted(raw)[1]).get("PID-5.1") == "ZOË"  # type: ignore[arg-type]
    raw = message("8859/1", "ZO\\XCB\\^ANNA").encode()
    assert parse(raw, admitted(raw)[1]).get("PID-5.1") == "ZOË"  # type: ignore[arg-type]


def test_a_multibyte_character_holding_a_delimiter_byte_in_msh_is_refused_not_guessed() -> None:
    """GB 18030 trail bytes include ``|``: a sending facility with such a character makes
    the byte split find another MSH-18 than the text has. The listener refuses (103)
    instead of deciding on the wrong field."""
    ch = next(
        c for c in map(chr, range(0x4E00, 0x9FA5)) if b"|" in c.encode("gb18030")[1:]
    )  # fmt: skip
    raw = message("GB 18030-2000", "王^小明", msh4=f"{ch}院").encode("gb18030")
    verdict, _ = admitted(raw)
    assert verdict == "refused"


# -- the ACK ------------------------------------------------------------------------------


def test_the_ack_is_encoded_with_the_decision_and_echoes_msh18_and_msh20() -> None:
    """Today a ``~ISO IR87`` message's ACK was encoded in Latin-1 with MSH-18/MSH-20 not
    echoed, its facility name a string of ESC-mangled Latin-1."""
    raw = message("~ISO IR87", "山田^太郎", "ISO 2022-1994", msh4="東京").encode("iso2022_jp")
    h = read_msh(raw)
    assert h.sending_facility == "東京"
    ack = build_ack(h, Outcome.ACCEPTED, AckPolicy()).content
    assert b"\x1b$BEl5~\x1b(B" in ack  # 東京 in JIS X 0208
    text = h.decision.decode(ack)
    fields = text.split("\r")[0].split("|")
    assert fields[5] == "東京" and fields[17] == "~ISO IR87" and fields[19] == "ISO 2022-1994"
    korean = message("KS X 1001", "홍^길동", msh4="서울").encode("euc_kr")
    ack = build_ack(read_msh(korean), Outcome.ACCEPTED, AckPolicy()).content
    assert "서울".encode("euc_kr") in ack  # EUC-KR: G1 over ASCII, no escape needed


# -- the decoder against pydicom's tables ----------------------------------------------


def test_graphic_sets_use_the_escape_sequences_dicom_uses() -> None:
    """Our designations are pydicom's public ``CODES_TO_ENCODINGS`` (PS3.3 C.12.1.1.2),
    plus ISO-IR 203 (8859/15), which DICOM has and pydicom's table lacks."""
    theirs = {code[1:] for code in pydicom.charset.CODES_TO_ENCODINGS}
    ours = {s.escape for s in GRAPHIC_SETS.values()}
    assert ours - theirs == {b"-b"}
    for entry in CHARSETS.values():
        if entry.dicom and entry.dicom != "ISO_IR 203":
            assert entry.dicom in pydicom.charset.python_encoding, entry.name


@pytest.mark.parametrize(
    ("terms", "data"),
    [
        (["", "ISO 2022 IR 87"], "山田^太郎".encode("iso2022_jp")),
        (["", "ISO 2022 IR 159"], "丂".encode("iso2022_jp_1")),
        (["", "ISO 2022 IR 149"], b"\x1b$)C" + "홍길동".encode("euc_kr")),
        (["", "ISO 2022 IR 126"], b"\x1b-F" + "ΔΗΜΗΤΡΙΟΥ".encode("iso8859_7")),
        (["", "ISO 2022 IR 144"], b"\x1b-L" + "ИВАНОВ".encode("iso8859_5")),
        (["", "ISO 2022 IR 13"], b"\x1b)I" + "ﾔﾏﾀﾞ".encode("shift_jis")),
    ],
)
def test_strict_decoder_agrees_with_pydicom_on_valid_bytes(terms: list[str], data: bytes) -> None:
    """Same text as pydicom's (lenient) ``decode_bytes`` wherever the bytes are valid."""
    expected = pydicom.charset.decode_bytes(data, pydicom.charset.convert_encodings(terms), set())
    keys = {"ISO 2022 IR 87": "ISO-IR 87", "ISO 2022 IR 159": "ISO-IR 159",
            "ISO 2022 IR 149": "ISO-IR 149", "ISO 2022 IR 126": "ISO-IR 126",
            "ISO 2022 IR 144": "ISO-IR 144", "ISO 2022 IR 13": "ISO-IR 13"}  # fmt: skip
    from bridge.hl7.charsets import _decode_2022

    allowed = (GRAPHIC_SETS["ISO-IR 6"], GRAPHIC_SETS[keys[terms[1]]])
    assert _decode_2022(data, allowed, (GRAPHIC_SETS["ISO-IR 6"], None), b"") == expected


def test_plain_codecs_are_the_ones_their_names_say() -> None:
    expect = {"8859/1": "iso8859-1", "8859/5": "iso8859-5", "8859/7": "iso8859-7",
              "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8", "GB 18030-2000": "gb18030",
              "WINDOWS-1252": "cp1252", "ASCII": "ascii"}  # fmt: skip
    for name, codec in expect.items():
        assert codecs.lookup(CHARSETS[name].codec).name == codec


def test_decode_error_names_offsets_not_content() -> None:
    with pytest.raises(DecodeError) as info:
        decide("UNICODE UTF-8").decode("ZOË".encode("latin-1"))
    assert info.value.offset == 2 and "ZO" not in info.value.reason


# -- the committed samples ---------------------------------------------------------------


@pytest.mark.parametrize("language", list(SAMPLES_BY_LANGUAGE))
def test_committed_samples_are_what_the_builder_makes(language: str) -> None:
    sample = SAMPLES_BY_LANGUAGE[language]
    assert sample.path.read_bytes() == sample.build(), "run python tests/charset_samples.py"
