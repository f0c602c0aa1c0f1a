"""Response character sets without a network: the automatic choice, the ISO 2022 bytes of
PS3.5 6.1.2.5.3 (checked against the standard's own examples), forced sets per calling
AE and transliteration. The SCP and DCMTK tests (test_scp.py, test_scp_dcmtk.py) show
the same on the wire."""

from __future__ import annotations

from typing import Any

import pytest
from mwl_items import make_item
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from bridge.core.codes import specific_character_set
from bridge.core.settings import ScpSettings
from bridge.scp.charsets import Charset, automatic, charset_for
from bridge.scp.query import parse_identifier
from bridge.scp.response import (
    CharsetPolicy,
    UnrepresentableText,
    choose_charset,
    encoded_response,
)
from bridge.scp.transliteration import Untransliterable, transliterate

SCP = ScpSettings()
JAPANESE = ("", "ISO 2022 IR 87")
KOREAN = ("", "ISO 2022 IR 149")
CHINESE = ("", "ISO 2022 IR 58")
#: PS3.5 Example H.3.2-1 (Japanese, ISO 2022 IR 87), bytes of (0010,0010).
H32_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
H32_BYTES = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
#: PS3.5 Example H.3.1-1 (ISO 2022 IR 13 as value 1, IR 87 as extension).
H31_NAME = "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
H31_BYTES = (
    b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J="
    b"\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J"
)
#: PS3.5 Example I.2-1 (Korean, ISO 2022 IR 149).
I2_NAME = "Hong^Gildong=洪^吉洞=홍^길동"
I2_BYTES = (
    b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf"
)
#: PS3.5 Example K.2-1 (Chinese, ISO 2022 IR 58), without its empty third group.
K2_NAME = "Zhang^XiaoDong=张^小东"
K2_BYTES = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"


def query(charset: tuple[str, ...] | None = None, **keys: Any) -> Dataset:
    q = Dataset()
    if charset is not None:
        q.SpecificCharacterSet = list(charset) if len(charset) > 1 else charset[0]
    q.PatientName = ""
    q.PatientID = ""
    for k, v in keys.items():
        setattr(q, k, v)
    return q


def respond(
    item_attrs: dict[str, Any],
    q: Dataset,
    policy: CharsetPolicy | None = None,
) -> tuple[Dataset, Any]:
    """The encoded response as the SCP sends it, read back raw (explicit VR LE)."""
    parsed = parse_identifier(q, SCP)
    return encoded_response(b"item", item_attrs, parsed, policy or CharsetPolicy(), False)


def raw_value(ds: Dataset, tag: int) -> bytes:
    value = ds.get_item(tag).value
    assert isinstance(value, bytes)
    return value


def charset_of(ds: Dataset) -> tuple[str, ...]:
    if "SpecificCharacterSet" not in ds:
        return ()
    value = ds.SpecificCharacterSet
    return tuple(value) if isinstance(value, MultiValue | list) else (value,)


# -- the automatic choice ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["SMITH^JOHN"], ()),
        (["MÜLLER^JÜRGEN"], ("ISO_IR 100",)),
        (["ŁUKASZ^WAŁĘSA"], ("ISO_IR 101",)),
        (["ŞAHİN^AYŞE"], ("ISO_IR 148",)),
        (["BĒRZIŅŠ^JĀNIS"], ("ISO_IR 110",)),
        (["ĦABIBA^ĠORĠ"], ("ISO_IR 109",)),
        (["ИВАНОВ^ИВАН"], ("ISO_IR 144",)),
        (["ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ"], ("ISO_IR 126",)),
        (["محمد"], ("ISO_IR 127",)),
        (["כהן^דוד"], ("ISO_IR 138",)),
        (["สมชาย"], ("ISO_IR 166",)),
        ([H32_NAME], JAPANESE),
        ([H31_NAME], ("", "ISO 2022 IR 87", "ISO 2022 IR 13")),
        (["ﾔﾏﾀﾞ^ﾀﾛｳ"], ("", "ISO 2022 IR 13")),
        ([I2_NAME], KOREAN),
        ([K2_NAME], CHINESE),
        # Greek and Cyrillic together fit no single-byte set; JIS X 0208 holds both, but
        # text without East Asian characters never goes to a CJK set.
        (["ΔΗΜΗΤΡΙΟΥ", "ИВАНОВ"], ("ISO_IR 192",)),
        (["MÜLLER", "ΔΗΜΗΤΡΙΟΥ"], ("ISO_IR 192",)),
        (["🙂"], ("ISO_IR 192",)),
    ],
)
def test_automatic_choice_is_the_smallest_standard_set(
    texts: list[str], expected: tuple[str, ...]
) -> None:
    """Today's code answered every non-ASCII response to a query without (0008,0005) in
    ISO_IR 192, which many modalities cannot read."""
    assert automatic(texts).terms == expected
    assert choose_charset(texts, ()).terms == expected


@pytest.mark.parametrize(
    ("texts", "query_charset", "expected"),
    [
        (["MÜLLER"], ("ISO_IR 100",), ("ISO_IR 100",)),
        (["MÜLLER"], ("ISO_IR 192",), ("ISO_IR 192",)),
        ([H32_NAME], ("ISO 2022 IR 6", "ISO 2022 IR 87"), ("ISO 2022 IR 6", "ISO 2022 IR 87")),
        ([H32_NAME], ("ISO 2022 IR 87",), JAPANESE),  # value 1 cannot be multi-byte
        (["SMITH"], ("ISO_IR 100",), ("ISO_IR 100",)),  # requested: echoed
        # The query's set cannot represent it: the smallest set that can, not UTF-8.
        (["ΔΗΜΗΤΡΙΟΥ"], ("ISO_IR 100",), ("ISO_IR 126",)),
        (["ŁUKASZ"], ("ISO_IR 100",), ("ISO_IR 101",)),
        (["MÜLLER"], ("NO SUCH SET",), ("ISO_IR 100",)),
    ],
)
def test_query_charset_first_then_the_smallest_set(
    texts: list[str], query_charset: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    """PS3.4 C.4.1.1.3.2: the SCP may answer in another set. Today's code fell back to
    ISO_IR 192 whenever the query's set could not represent the text."""
    assert choose_charset(texts, query_charset).terms == expected


def test_the_choice_covers_every_text_value_of_the_response() -> None:
    """One set per response (per item), over every text value it carries, sequence items
    included: a Polish SPS description with a German name needs Latin-2, not Latin-1."""
    item = make_item(
        1, name="MÜLLER^JÜRGEN", sps_extra={"ScheduledProcedureStepDescription": "Łódź"}
    )
    sps = Dataset()
    sps.ScheduledProcedureStepDescription = ""
    ds, response = respond(item.attrs, query(ScheduledProcedureStepSequence=[sps]))
    assert charset_of(ds) == ("ISO_IR 101",) and response.charset == "ISO_IR 101"
    assert str(ds.PatientName) == "MÜLLER^JÜRGEN"
    assert ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == "Łódź"
    # Without the description the name alone is Latin-1.
    ds, _ = respond(item.attrs, query())
    assert charset_of(ds) == ("ISO_IR 100",)
    assert raw_value(ds, 0x00100010).rstrip(b" ") == "MÜLLER^JÜRGEN".encode("latin-1")


def test_ascii_response_carries_no_charset_unless_requested() -> None:
    ds, _ = respond(make_item(1).attrs, query())
    assert "SpecificCharacterSet" not in ds
    ds, _ = respond(make_item(1).attrs, query(("ISO_IR 100",)))
    assert charset_of(ds) == ("ISO_IR 100",)


# -- ISO 2022 bytes (PS3.5 6.1.2.5.3) ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "terms", "expected"),
    [
        (H32_NAME, JAPANESE, H32_BYTES),
        (H31_NAME, ("ISO 2022 IR 13", "ISO 2022 IR 87"), H31_BYTES),
        (I2_NAME, KOREAN, I2_BYTES),
        (K2_NAME, CHINESE, K2_BYTES),
    ],
)
def test_person_names_match_the_standards_examples(
    name: str, terms: tuple[str, ...], expected: bytes
) -> None:
    """Value 1's set is active again before every ^ and = and at the end of the value.
    Today's code (pydicom's encoder) wrote the Chinese name with no escape sequence at
    all (GB 2312 bytes that no decoder can attribute to ISO 2022 IR 58)."""
    ds, _ = respond(make_item(1, name=name).attrs, query(terms))
    assert charset_of(ds) == terms
    assert raw_value(ds, 0x00100010).rstrip(b" ") == expected
    if terms != CHINESE:  # pydicom 3.0 cannot decode ISO 2022 IR 58 (see the DCMTK test)
        assert str(ds.PatientName) == name


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        (JAPANESE, b"\x1b$B;3ED\x1b(BTaro"),
        # Value 1 ISO 2022 IR 13: its G0 is JIS X 0201 Roman, designated by ESC ( J.
        (("ISO 2022 IR 13", "ISO 2022 IR 87"), b"\x1b$B;3ED\x1b(JTaro"),
    ],
)
def test_text_after_a_switch_designates_value_1s_set_again(
    terms: tuple[str, ...], expected: bytes
) -> None:
    assert charset_for(terms).encode("山田Taro") == expected


def test_control_characters_end_a_designation() -> None:
    """PS3.5 6.1.2.5.3: value 1's set before every control character, so the Korean set
    is designated again after CR LF. Today's code designated it once, and a decoder that
    resets at CR LF (pydicom itself) read the second line as Latin-1 garbage."""
    comments = "홍\r\n길동"
    item = make_item(1, extra={"PatientComments": comments})
    ds, _ = respond(item.attrs, query(KOREAN, PatientComments=""))
    assert raw_value(ds, 0x00104000).rstrip(b" ") == (b"\x1b$)C\xc8\xab\r\n\x1b$)C\xb1\xe6\xb5\xbf")
    assert ds.PatientComments == comments
    jp = "山田\r\n太郎"
    ds, _ = respond(make_item(1, extra={"PatientComments": jp}).attrs, query(PatientComments=""))
    assert charset_of(ds) == JAPANESE
    assert raw_value(ds, 0x00104000).rstrip(b" ") == b"\x1b$B;3ED\x1b(B\r\n\x1b$BB@O:\x1b(B"


def test_each_value_of_a_multi_valued_element_ends_in_value_1s_set() -> None:
    """Before each backslash the default set is active again (JIS X 0208 → ESC ( B)."""
    alerts = ["山田病院", "ペニシリン", "latex"]
    item = make_item(1, extra={"MedicalAlerts": alerts})
    ds, _ = respond(item.attrs, query(MedicalAlerts=""))
    assert charset_of(ds) == JAPANESE
    parts = raw_value(ds, 0x00102000).rstrip(b" ").split(b"\\")
    assert parts[0] == b"\x1b$B;3EDIB1!\x1b(B"
    assert parts[1].startswith(b"\x1b$B") and parts[1].endswith(b"\x1b(B")
    assert parts[2] == b"latex"
    assert list(ds.MedicalAlerts) == alerts


def test_escape_character_in_a_stored_value_is_never_sent() -> None:
    """An ESC inside a value would switch the modality's decoder to another set. Today's
    code wrote it through as it was."""
    item = make_item(1, extra={"PatientComments": "abc\x1b$Bdef"})
    with pytest.raises(UnrepresentableText):
        respond(item.attrs, query(PatientComments=""))


def test_every_encoded_character_decodes_back() -> None:
    """The encoder checks each character's bytes with the codec's decoder: a character
    that two Unicode code points share in a legacy set is refused rather than altered."""
    korean = charset_for(KOREAN)
    assert korean.encodes("\uac00")
    assert not korean.encodes("\u3164")  # HANGUL FILLER: Python's bytes decode to nothing
    assert not korean.encodes("\uac02")  # outside KS X 1001's 2350 syllables (8-byte form)
    assert not Charset.of(("ISO_IR 100",)).encodes("\x85")  # C1 control, not a character


# -- forced character sets and transliteration -------------------------------------------


@pytest.mark.parametrize(
    ("setting", "terms"),
    [
        ("ISO_IR 100", ("ISO_IR 100",)),
        ("ISO 2022 IR 87", JAPANESE),
        ("\\ISO 2022 IR 149", KOREAN),
        (
            "ISO 2022 IR 6\\ISO 2022 IR 87\\ISO 2022 IR 159",
            ("ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 159"),
        ),
        ("ISO_IR 6", ()),
        ("ISO_IR 192", ("ISO_IR 192",)),
    ],
)
def test_forced_charset_settings_are_normalised(setting: str, terms: tuple[str, ...]) -> None:
    """Today ``ISO 2022 IR 87`` was sent as (0008,0005) value 1, which PS3.3 C.12.1.1.2
    does not allow for a multi-byte set."""
    scp = ScpSettings(response_charset_by_ae={"CT1": setting})
    assert CharsetPolicy.for_calling_ae(scp, "CT1").forced == terms
    assert specific_character_set(setting) == terms


@pytest.mark.parametrize(
    "value",
    [
        "LATIN1",
        "ISO_IR 192\\ISO 2022 IR 87",
        "ISO 2022 IR 87\\ISO 2022 IR 149",
        "ISO_IR 100\\ISO_IR 126",
        "ISO 2022 GBK",
    ],
)
def test_invalid_charset_values_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        specific_character_set(value)


def test_forced_charset_skips_or_transliterates() -> None:
    """Skip (the default) keeps today's lossless-or-skip rule; transliterate sends the
    item with only the missing characters replaced (today: no such rule)."""
    item = make_item(1, name="ŁUKASZ^ŘEHOŘ", extra={"PatientComments": "Łódź é"})
    q = query(PatientComments="")
    skip = CharsetPolicy(("ISO_IR 100",))
    with pytest.raises(UnrepresentableText) as info:
        respond(item.attrs, q, skip)
    assert info.value.charset == "ISO_IR 100"
    assert "Ł" not in str(info.value) and "UKASZ" not in str(info.value)
    ds, response = respond(item.attrs, q, CharsetPolicy(("ISO_IR 100",), transliterate=True))
    assert charset_of(ds) == ("ISO_IR 100",)
    assert str(ds.PatientName) == "LUKASZ^REHOR"
    assert ds.PatientComments == "Lódz é"  # ó and é are in Latin-1: kept
    assert response.transliterated.keywords == ("PatientName", "PatientComments")
    assert response.transliterated.characters == 5


def test_transliteration_that_no_longer_fits_the_vr_skips() -> None:
    """Ü → UE lengthens a value: past the VR's 64 characters the item is skipped."""
    long_name = "Ü" * 40
    policy = CharsetPolicy((), transliterate=True)
    with pytest.raises(UnrepresentableText):
        respond(make_item(1, name=long_name).attrs, query(), policy)


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("MÜLLER^JÜRGEN", "ISO_IR 6", "MUELLER^JUERGEN"),
        ("Müller^Jürgen", "ISO_IR 6", "Mueller^Juergen"),
        ("Über", "ISO_IR 6", "Ueber"),
        ("STRAẞE", "ISO_IR 6", "STRASSE"),
        ("Größe", "ISO_IR 6", "Groesse"),
        ("MÜLLER^JÜRGEN", "ISO_IR 100", "MÜLLER^JÜRGEN"),
        ("ŁUKASZ^ŘEHOŘ", "ISO_IR 100", "LUKASZ^REHOR"),
        ("Ægir Ōtsuka", "ISO_IR 100", "Ægir Otsuka"),
        ("ΔΗΜΗΤΡΙΟΥ", "ISO_IR 100", "DIMITRIOY"),
        ("ИВАНОВ", "ISO_IR 101", "IVANOV"),
        ("ＡＢＣ", "ISO_IR 6", "ABC"),
        ("e\u0301", "ISO_IR 100", "é"),
        ("Ł", "ISO 2022 IR 87", "L"),
    ],
)
def test_transliteration_replaces_only_what_the_target_lacks(
    text: str, target: str, expected: str
) -> None:
    assert transliterate(text, charset_for(target))[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "山田^太郎",  # Han: one romanisation per language (山田 → ShanTian)
        "محمد",  # abjad: vowels would be lost
        "やまだ",  # kana: several systems
        "홍길동",
        "＼",  # full-width backslash → a DICOM delimiter
        "A＝B",
        "🙂",  # symbols are not names
    ],
)
def test_transliteration_refuses_what_it_cannot_do_safely(text: str) -> None:
    with pytest.raises(Untransliterable):
        transliterate(text, charset_for("ISO_IR 100"))
