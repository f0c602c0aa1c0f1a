"""worker.local_timezone: empty = the host's zone; a real worker converts HL7 offsets to it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from orm_builder import orm
from worker_helpers import items, run

from bridge.core import localzone
from bridge.core.settings import load_settings


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    localzone.resolve.cache_clear()
    yield
    localzone.resolve.cache_clear()


def test_default_is_the_host_zone_not_utc() -> None:
    assert load_settings({}, env={}).worker.local_timezone == ""


def test_system_zone_from_tz_symlink_timezone_file_or_tzif_copy(tmp_path: Path) -> None:
    zoneinfo = Path("/usr/share/zoneinfo")
    if not (zoneinfo / "Europe/Berlin").is_file():
        pytest.skip("no system zoneinfo tree")
    none = tmp_path / "missing"
    got = localzone.system_zone({"TZ": ":Europe/Berlin"}, none, none)
    assert got is not None and (got.name, got.source) == ("Europe/Berlin", "TZ")
    link = tmp_path / "localtime"
    link.symlink_to(zoneinfo / "America/New_York")
    got = localzone.system_zone({}, link, none)
    assert got is not None and got.name == "America/New_York"
    named = tmp_path / "timezone"
    named.write_text("Asia/Tokyo\n", encoding="ascii")
    got = localzone.system_zone({}, none, named)
    assert got is not None and got.name == "Asia/Tokyo"
    copy = tmp_path / "copy"
    copy.write_bytes((zoneinfo / "Europe/Berlin").read_bytes())
    got = localzone.system_zone({}, copy, none)
    assert got is not None and got.source == "TZif"
    assert localzone.system_zone({}, none, none) is None


def test_unknown_host_zone_falls_back_to_utc_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TZ", raising=False)
    monkeypatch.setattr(localzone, "LOCALTIME", tmp_path / "none")
    monkeypatch.setattr(localzone, "TIMEZONE_FILE", tmp_path / "none")
    with caplog.at_level(logging.WARNING, logger="bridge.core.localzone"):
        got = localzone.resolve("")
    assert (got.name, got.source) == ("UTC", "fallback")
    assert [r.message for r in caplog.records] == ["worker.local_timezone_unknown"]


def test_worker_converts_an_offset_to_the_host_zone_by_default(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 4: with no setting, 10:00+02:00 on a Berlin host is 10:00, not 08:00."""
    if not Path("/usr/share/zoneinfo/Europe/Berlin").is_file() and "TZDIR" not in os.environ:
        pytest.skip("no system zoneinfo tree")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    s = load_settings({"redis.url": redis_url, "worker.worker_class": "simple"}, env={})
    assert s.worker.local_timezone == ""
    run(redis_client, s, orm(start="202607051000+0200", control_id="T"))
    (it,) = items(redis_client, s)
    sps = it.sps
    assert (sps["ScheduledProcedureStepStartDate"], sps["ScheduledProcedureStepStartTime"]) == (
        "20260705", "100000")  # fmt: skip
    assert localzone.resolve("").name == "Europe/Berlin"
