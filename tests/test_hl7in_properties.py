"""Property tests: HL7 escaping round-trips; TS → DA/TM zone conversion agrees with zoneinfo."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.hl7.escapes import unescape
from bridge.worker.mapping.transforms import ts_date, ts_time

ENC = "^~\\&"


def escape(text: str) -> str:
    """HL7 v2 ch. 2.7 escaping, the way a sender does it (escape character first)."""
    out = []
    for ch in text:
        out.append({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\",
                    "\n": "\\.br\\"}.get(ch, ch))  # fmt: skip
    return "".join(out)


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=60
    )
)
def test_escape_unescape_round_trip(text: str) -> None:
    assert unescape(escape(text), ENC) == text


@settings(max_examples=200)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)),
    st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda m: m - m % 15),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_ts_conversion_matches_zoneinfo(naive: datetime, offset_min: int, zone_name: str) -> None:
    naive = naive.replace(microsecond=0)
    sign = "+" if offset_min >= 0 else "-"
    ts = (
        naive.strftime("%Y%m%d%H%M%S")
        + f"{sign}{abs(offset_min) // 60:02d}{abs(offset_min) % 60:02d}"
    )
    zone = ZoneInfo(zone_name)
    expected = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min))).astimezone(zone)
    assert ts_date(ts, "X", zone) == expected.strftime("%Y%m%d")
    assert ts_time(ts, "X", zone) == expected.strftime("%H%M%S")
    # Without an offset the value is taken as already local.
    assert ts_time(naive.strftime("%Y%m%d%H%M%S"), "X", zone) == naive.strftime("%H%M%S")
