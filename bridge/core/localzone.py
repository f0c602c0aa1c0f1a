"""The time zone DICOM DA/TM values are expressed in (``worker.local_timezone``).

A modality compares the worklist's Scheduled Procedure Step Start Date/Time (no offset,
PS3.3 C.4.10) with its own clock, so the bridge must convert HL7 TS values that carry an
offset (``202607051000+0200``) to the zone the department lives in. An empty setting
(the default) means the host's zone: ``TZ`` if set, else ``/etc/localtime`` (a symlink
into a zoneinfo tree, or a copied TZif file), else ``/etc/timezone``; when none gives a
zone the bridge uses UTC and says so with a WARNING, because a wrong zone silently moves
every appointment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.core.logs import fields

log = logging.getLogger(__name__)

LOCALTIME = Path("/etc/localtime")
TIMEZONE_FILE = Path("/etc/timezone")


@dataclass(frozen=True)
class LocalZone:
    zone: ZoneInfo
    #: IANA name (or "localtime" for a TZif copy without a name) and where it came from.
    name: str
    source: str  # "setting", "TZ", "/etc/localtime", "/etc/timezone" or "fallback"


def _by_name(name: str) -> ZoneInfo | None:
    name = name.strip().lstrip(":")
    if "zoneinfo/" in name:
        name = name.split("zoneinfo/", 1)[1]
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def system_zone(
    env: Mapping[str, str] | None = None,
    localtime: Path | None = None,
    timezone_file: Path | None = None,
) -> LocalZone | None:
    """The host's zone, or None when it cannot be determined."""
    env = os.environ if env is None else env
    localtime = LOCALTIME if localtime is None else localtime
    timezone_file = TIMEZONE_FILE if timezone_file is None else timezone_file
    tz = env.get("TZ", "")
    if tz and (zone := _by_name(tz)) is not None:
        return LocalZone(zone, zone.key, "TZ")
    if localtime.is_symlink():
        target = os.path.realpath(localtime)
        if (zone := _by_name(target)) is not None:
            return LocalZone(zone, zone.key, str(localtime))
    if timezone_file.is_file():
        name = timezone_file.read_text(encoding="ascii", errors="replace").strip()
        if (zone := _by_name(name)) is not None:
            return LocalZone(zone, zone.key, str(timezone_file))
    if localtime.is_file():
        try:
            with localtime.open("rb") as fh:
                return LocalZone(ZoneInfo.from_file(fh, key="localtime"), "localtime", "TZif")
        except (OSError, ValueError):
            return None
    return None


@lru_cache(maxsize=8)
def resolve(setting: str) -> LocalZone:
    """The zone for ``worker.local_timezone`` (``""`` = the host's), logged once.

    Cached: the host zone is read once per process, so every message of a worker uses
    the same zone even if the file changes underneath.
    """
    if setting:
        return LocalZone(ZoneInfo(setting), setting, "setting")
    found = system_zone()
    if found is None:
        log.warning(
            "worker.local_timezone_unknown",
            extra=fields(
                zone="UTC",
                reason="no TZ, /etc/localtime or /etc/timezone; set worker.local_timezone",
            ),
        )
        return LocalZone(ZoneInfo("UTC"), "UTC", "fallback")
    log.info("worker.local_timezone", extra=fields(zone=found.name, source=found.source))
    return found
