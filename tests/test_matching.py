"""The pure matcher against PS3.4 C.2.2.2, table-driven plus property tests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.scp.matching import (
    DateTimeCondition,
    MatchOptions,
    QueryValueError,
    SequenceCondition,
    is_universal,
    match_datetime,
    match_single_value,
    match_value,
    match_wildcard,
    matches,
    parse_range,
    parse_value_condition,
)

DEFAULT = MatchOptions()
CASE_SENSITIVE = MatchOptions(pn_case_insensitive=False)
ACCENTS = MatchOptions(pn_accent_insensitive=True)


def cond(keyword: str, vr: str, *values: str):
    return parse_value_condition(keyword, vr, list(values))


# (clause, vr, query value, stored value, options, expected)
CASES: list[tuple[str, str, str, Any, MatchOptions, bool]] = [
    # C.2.2.2.1 single value: exact, case-sensitive except PN
    ("single", "LO", "PID1", "PID1", DEFAULT, True),
    ("single", "LO", "PID1", "pid1", DEFAULT, False),
    ("single", "LO", "PID1", "PID10", DEFAULT, False),
    ("single", "CS", "CT", "CT", DEFAULT, True),
    ("single padding", "SH", " ACC1 ", "ACC1", DEFAULT, True),
    ("PN case-insensitive", "PN", "doe^jane", "DOE^JANE", DEFAULT, True),
    ("PN case-sensitive option", "PN", "doe^jane", "DOE^JANE", CASE_SENSITIVE, False),
    ("PN accent default", "PN", "MULLER", "MÜLLER^JÜRGEN", DEFAULT, False),
    ("PN accent option", "PN", "MULLER^JURGEN", "MÜLLER^JÜRGEN", ACCENTS, True),
    ("PN fewer components", "PN", "DOE", "DOE^JANE", DEFAULT, True),
    ("PN other given name", "PN", "DOE^JOHN", "DOE^JANE", DEFAULT, False),
    ("PN more components", "PN", "DOE^JANE^X", "DOE^JANE", DEFAULT, False),
    ("PN alphabetic group", "PN", "YAMADA^TARO", "YAMADA^TARO=山田^太郎", DEFAULT, True),
    # C.2.2.2.4 wild card
    ("wildcard *", "PN", "DO*", "DOE^JANE", DEFAULT, True),
    ("wildcard * mid", "PN", "*JANE", "DOE^JANE", DEFAULT, True),
    ("wildcard ?", "SH", "ACC?", "ACC1", DEFAULT, True),
    ("wildcard ? one char", "SH", "ACC?", "ACC12", DEFAULT, False),
    ("wildcard * empty run", "LO", "PID1*", "PID1", DEFAULT, True),
    ("wildcard regex chars literal", "LO", "A.B*", "AXB1", DEFAULT, False),
    ("wildcard case-sensitive LO", "LO", "pid*", "PID1", DEFAULT, False),
    ("wildcard PN case", "PN", "doe*", "DOE^JANE", DEFAULT, True),
    # C.2.2.2.5 range (and DA/TM single values)
    ("DA single", "DA", "20260705", "20260705", DEFAULT, True),
    ("DA single other", "DA", "20260705", "20260706", DEFAULT, False),
    ("DA range", "DA", "20260701-20260705", "20260705", DEFAULT, True),
    ("DA range out", "DA", "20260701-20260705", "20260706", DEFAULT, False),
    ("DA open upper", "DA", "20260705-", "20991231", DEFAULT, True),
    ("DA open lower", "DA", "-20260705", "19000101", DEFAULT, True),
    ("DA open lower out", "DA", "-20260705", "20260706", DEFAULT, False),
    ("TM range", "TM", "1000-1800", "175959", DEFAULT, True),
    ("TM range upper precision", "TM", "1000-1800", "180030", DEFAULT, True),
    ("TM range out", "TM", "1000-1800", "180100", DEFAULT, False),
    ("TM single precision", "TM", "10", "105959", DEFAULT, True),
    ("TM fraction", "TM", "101500-101500.5", "101500.2", DEFAULT, True),
    ("DT range", "DT", "20260705-20260706", "20260706120000", DEFAULT, True),
    ("DT range out", "DT", "20260705-20260706", "20260707000000", DEFAULT, False),
    # C.2.2.2.2 list of UID
    ("UID single", "UI", "1.2.3", "1.2.3", DEFAULT, True),
    ("UID prefix is not a match", "UI", "1.2.3", "1.2.34", DEFAULT, False),
    # stored empty never matches a non-universal key
    ("empty stored", "LO", "PID1", "", DEFAULT, False),
    ("absent stored", "LO", "PID1", None, DEFAULT, False),
    ("empty stored wildcard", "PN", "D*", "", DEFAULT, False),
    ("empty stored range", "DA", "20260705-", "", DEFAULT, False),
    # multi-valued stored value: any value
    ("multi-valued any", "AE", "AA33", ["AA32", "AA33"], DEFAULT, True),
    ("multi-valued none", "AE", "AA34", ["AA32", "AA33"], DEFAULT, False),
]


@pytest.mark.parametrize(("clause", "vr", "query", "stored", "options", "expected"), CASES)
def test_matching_kinds(
    clause: str, vr: str, query: str, stored: Any, options: MatchOptions, expected: bool
) -> None:
    c = cond("K", vr, query)
    assert c is not None, clause
    assert match_value(c, stored, options) is expected, clause


def test_list_of_uid_matches_any() -> None:
    c = cond("StudyInstanceUID", "UI", "1.2.3", "1.2.4")
    assert c is not None and c.kind == "uid_list"
    assert match_value(c, "1.2.4", DEFAULT)
    assert not match_value(c, "1.2.5", DEFAULT)


@pytest.mark.parametrize("value", ["", " ", "*", " * "])
def test_universal_values_give_no_condition(value: str) -> None:
    assert is_universal(value)
    assert cond("PatientName", "PN", value) is None
    assert cond("PatientID", "LO", value) is None


@pytest.mark.parametrize(
    ("vr", "value", "bad_range"),
    [
        ("DA", "2026-07-05", True),
        ("DA", "20260705-2026", True),
        ("DA", "-", True),
        ("DA", "20261305", False),
        ("DA", "yesterday", False),
        ("TM", "2500", False),
        ("TM", "10-18-20", True),
        ("UI", "1.2.abc", False),
    ],
)
def test_invalid_values_are_rejected(vr: str, value: str, bad_range: bool) -> None:
    with pytest.raises(QueryValueError) as info:
        cond("K", vr, value)
    assert info.value.bad_range is bad_range


def test_multiple_values_only_for_uids() -> None:
    with pytest.raises(QueryValueError):
        cond("Modality", "CS", "CT", "MR")


def _dt(date: str, time: str) -> DateTimeCondition:
    return DateTimeCondition(
        "D",
        "T",
        parse_range("D", date, "DA") if date else None,
        parse_range("T", time, "TM") if time else None,
    )


@pytest.mark.parametrize(
    ("date", "time", "stored_date", "stored_time", "expected"),
    [
        # one interval 5 Jul 10:00 → 7 Jul 18:00 (PS3.4 C.2.2.2.5.1), not 10–18 daily
        ("20260705-20260707", "1000-1800", "20260705", "095959", False),
        ("20260705-20260707", "1000-1800", "20260705", "100000", True),
        ("20260705-20260707", "1000-1800", "20260705", "235000", True),
        ("20260705-20260707", "1000-1800", "20260706", "030000", True),
        ("20260705-20260707", "1000-1800", "20260707", "180000", True),
        ("20260705-20260707", "1000-1800", "20260707", "181500", False),
        # date only: whole days
        ("20260705", "", "20260705", "235959", True),
        ("20260705", "", "20260706", "000000", False),
        # time only: that time on any day
        ("", "1000-1100", "20300101", "103000", True),
        ("", "1000-1100", "20300101", "113000", False),
        # single date + time range
        ("20260705", "1000-1100", "20260705", "103000", True),
        ("20260705", "1000-1100", "20260706", "103000", False),
        # open ranges
        ("20260705-", "1200-", "20260705", "115959", False),
        ("20260705-", "1200-", "20260901", "000000", True),
        ("-20260705", "-1200", "20260705", "120059", True),
        ("-20260705", "-1200", "20260705", "120100", False),
        # stored empty
        ("20260705", "", "", "", False),
    ],
)
def test_combined_start_date_time(
    date: str, time: str, stored_date: str, stored_time: str, expected: bool
) -> None:
    assert match_datetime(_dt(date, time), stored_date, stored_time) is expected


def test_sequence_matching_one_item_must_match_all_keys() -> None:
    seq = SequenceCondition(
        "ScheduledProtocolCodeSequence",
        (cond("CodeValue", "SH", "P1"), cond("CodingSchemeDesignator", "SH", "LOCAL")),  # type: ignore[arg-type]
    )
    stored = [
        {"CodeValue": "P1", "CodingSchemeDesignator": "OTHER"},
        {"CodeValue": "P2", "CodingSchemeDesignator": "LOCAL"},
    ]
    assert not matches({"ScheduledProtocolCodeSequence": stored}, [seq], DEFAULT)
    stored.append({"CodeValue": "P1", "CodingSchemeDesignator": "LOCAL"})
    assert matches({"ScheduledProtocolCodeSequence": stored}, [seq], DEFAULT)
    assert not matches({"ScheduledProtocolCodeSequence": []}, [seq], DEFAULT)
    assert not matches({}, [seq], DEFAULT)


def test_keys_are_anded() -> None:
    conds = [cond("PatientID", "LO", "PID1"), cond("PatientSex", "CS", "F")]
    assert matches({"PatientID": "PID1", "PatientSex": "F"}, conds, DEFAULT)  # type: ignore[arg-type]
    assert not matches({"PatientID": "PID1", "PatientSex": "M"}, conds, DEFAULT)  # type: ignore[arg-type]


# -- properties -------------------------------------------------------------------------

text = (
    st.text(
        alphabet=st.characters(
            codec="utf-8", exclude_characters="*?\\^=", exclude_categories=["Cs", "Cc"]
        ),
        min_size=1,
        max_size=12,
    )
    .map(str.strip)
    .filter(bool)
)  # edge spaces are padding (PS3.5 6.2)


@given(text)
def test_value_matches_itself_and_star(value: str) -> None:
    for vr in ("LO", "SH", "PN"):
        assert match_single_value(value, value, vr, CASE_SENSITIVE)
        assert match_wildcard("*", value, vr, DEFAULT)
        assert match_wildcard(value + "*", value, vr, CASE_SENSITIVE)


@given(text, text)
def test_wildcard_agrees_with_a_reference_regex(prefix: str, stored: str) -> None:
    pattern = prefix.strip() + "?*"
    reference = re.fullmatch(re.escape(prefix.strip()) + ".+", stored.strip(), re.DOTALL)
    assert match_wildcard(pattern, stored, "LO", DEFAULT) is (reference is not None)


@given(text)
def test_pn_case_folding_is_symmetric(value: str) -> None:
    assert match_single_value(value.upper(), value.lower(), "PN", DEFAULT) == match_single_value(
        value.lower(), value.upper(), "PN", DEFAULT
    )


dates = st.dates().filter(lambda d: d.year >= 1000).map(lambda d: d.strftime("%Y%m%d"))
times = st.times().map(lambda t: t.strftime("%H%M%S"))


@settings(max_examples=300)
@given(dates, dates, dates)
def test_date_range_is_inclusive_interval(a: str, b: str, stored: str) -> None:
    lo, hi = sorted((a, b))
    c = cond("D", "DA", f"{lo}-{hi}")
    assert c is not None
    assert match_value(c, stored, DEFAULT) is (lo <= stored <= hi)


@settings(max_examples=300)
@given(dates, times, dates, times, dates, times)
def test_combined_range_is_one_datetime_interval(
    d1: str, t1: str, d2: str, t2: str, sd: str, stime: str
) -> None:
    (lo_d, lo_t), (hi_d, hi_t) = sorted([(d1, t1), (d2, t2)])
    expected = (lo_d + lo_t) <= (sd + stime) <= (hi_d + hi_t)
    assert match_datetime(_dt(f"{lo_d}-{hi_d}", f"{lo_t}-{hi_t}"), sd, stime) is expected


@given(st.lists(text, min_size=1, max_size=4), text)
def test_multivalued_stored_matches_if_any_value_matches(values: list[str], query: str) -> None:
    c = cond("ScheduledStationAETitle", "LO", query)
    assert c is not None
    expected = any(match_value(c, v, DEFAULT) for v in values)
    assert match_value(c, values, DEFAULT) is expected
