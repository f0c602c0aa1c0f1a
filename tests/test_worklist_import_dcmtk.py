"""Side by side with DCMTK's wlmscpfs (issue #12): after ``worklist import`` of a folder,
our SCP answers DCMTK ``findscu -W`` queries with the same items wlmscpfs answers from
the same files, on the keys both match.

The folder is what a site replacing wlmscpfs or Orthanc has: ``<dir>/<AE>/*.wl`` per-AE
folders with their lockfiles (the folder name is the called AE title and becomes the
item's worklist label), an Orthanc-style flat folder (served to wlmscpfs through a
symlinked AE folder; imported with ``--worklist``), files with and without a file meta
header, ISO_IR 100 and plain ASCII files, and files that both servers refuse (missing
Type 1 attributes). Items are compared as (Accession Number, SPS ID) sets per query and
called AE.

Expected differences, asserted as such and kept out of the comparison:

* files wlmscpfs 3.6.7 skips as "incomplete" that the bridge imports: an empty Scheduled
  Station AE Title (the default mapping allows it, with a warning) and an SPS Sequence
  with two items (one item per SPS);
* keys wlmscpfs 3.6.7 does not match (it answers as if the key were universal): SPS ID
  and Study Instance UID (also SPS Status, SPS Location, Station Name; conformance.md).
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from redis_server import free_port
from scp_support import StartScp, dcmtk
from wl_files import ae_folder, wl_dataset, write_wl

from bridge.ops.cli import main

FINDSCU = dcmtk("findscu")
WLMSCPFS = dcmtk("wlmscpfs")
pytestmark = pytest.mark.skipif(not (FINDSCU and WLMSCPFS), reason="DCMTK not installed")

SPS = "ScheduledProcedureStepSequence[0]."
NAMES = ["SMITH^JOHN", "SMITHSON^ANNA", "MÜLLER^JÜRGEN", "DOE^JANE", "GARCIA^LUIS",
         "O'NEIL^MARY", "LEE^KIM", "SMITH^ADAM^B"]  # fmt: skip
#: (modality, station) pairs: a station has one modality, as rooms do.
ROOMS = [("CT", "CT1"), ("MR", "MR1"), ("US", "US1"), ("CR", "CR1"), ("CT", "CT2")]


def _item(n: int, **kw: object) -> pydicom.Dataset:
    """Item ``n``: its date, time, room, name, charset and order numbers vary with n."""
    modality, station = ROOMS[n % len(ROOMS)]
    name = NAMES[n % len(NAMES)]
    minutes = 7 * 60 + (n * 37) % (11 * 60)
    values: dict[str, object] = {
        "name": name,
        "date": f"202607{5 + n % 5:02d}",
        "time": f"{minutes // 60:02d}{minutes % 60:02d}00",
        "modality": modality,
        "station": station,
        # Plain ASCII files often carry no Specific Character Set at all.
        "charset": "ISO_IR 100" if not name.isascii() or n % 3 else None,
        "placer": f"PL{n}" if n % 2 else None,
        "filler": f"FL{n}" if n % 4 == 1 else None,
        "sps_extra": {"ScheduledPerformingPhysicianName": "HOUSE^GREGORY" if n % 3 == 0 else ""},
        "extra": {"PatientSex": "FM"[n % 2], "PatientBirthDate": f"19{50 + n % 40}0{1 + n % 9}15"},
    }
    values.update(kw)
    return wl_dataset(n, **values)  # type: ignore[arg-type]


def _folder(tmp: Path) -> tuple[Path, Path, Path, set[tuple[str, str]]]:
    """(wlmscpfs data folder, per-AE root to import, flat folder, items only we serve)."""
    root = tmp / "worklists"
    mwl, ct = ae_folder(root, "MWLSCP"), ae_folder(root, "CT_ROOM")
    for n in range(1, 17):
        write_wl(mwl / f"item{n:02d}.wl", _item(n))
    for n in range(17, 23):
        write_wl(ct / f"{n}.wl", _item(n))
    flat = tmp / "orthanc-worklists"
    for n in range(23, 29):
        write_wl(flat / f"{n}.wl", _item(n), file_format=n % 2 == 0)
    # Refused by both: Type 1 missing.
    write_wl(mwl / "no_patient_id.wl", _item(40, drop=("PatientID",)))
    write_wl(ct / "no_start_date.wl", _item(41, drop=("ScheduledProcedureStepStartDate",)))
    write_wl(flat / "no_modality.wl", _item(42, drop=("Modality",)))
    # Imported by the bridge, skipped by wlmscpfs as incomplete (see the module docstring).
    write_wl(mwl / "no_station.wl", _item(50, station=""))
    write_wl(mwl / "two_steps.wl", _item(51, steps=2))
    ours_only = {("ACC50", "SPS50"), ("ACC51", "SPS51.1"), ("ACC51", "SPS51.2")}
    # wlmscpfs serves <dfp>/<called AE>/: the flat folder through a symlink (and a lockfile).
    dfp = tmp / "dfp"
    dfp.mkdir()
    (flat / "lockfile").touch()
    for name, target in (("MWLSCP", mwl), ("CT_ROOM", ct), ("ORTHANC", flat)):
        os.symlink(target, dfp / name)
    return dfp, root, flat, ours_only


#: name → (matching keys, called AEs to ask). Return keys are added to each.
QUERIES: dict[str, tuple[list[str], list[str]]] = {
    "universal": ([], ["MWLSCP", "CT_ROOM", "ORTHANC"]),
    "date_range": ([f"{SPS}ScheduledProcedureStepStartDate=20260706-20260707"],
                   ["MWLSCP", "CT_ROOM"]),
    "date_time_interval": ([f"{SPS}ScheduledProcedureStepStartDate=20260705-20260707",
                            f"{SPS}ScheduledProcedureStepStartTime=1000-1400"], ["MWLSCP"]),
    "single_date": ([f"{SPS}ScheduledProcedureStepStartDate=20260708"], ["MWLSCP", "ORTHANC"]),
    "modality": ([f"{SPS}Modality=MR"], ["MWLSCP", "ORTHANC"]),
    "station": ([f"{SPS}ScheduledStationAETitle=CT1"], ["MWLSCP", "CT_ROOM"]),
    "name_wildcard": (["PatientName=SMITH*"], ["MWLSCP", "ORTHANC"]),
    "name_single_char_latin1": (["PatientName=M?LLER^J?RGEN"], ["MWLSCP", "CT_ROOM"]),
    "patient_id": (["PatientID=PID12"], ["MWLSCP"]),
    "accession": (["AccessionNumber=ACC5"], ["MWLSCP"]),
    "performing_physician": ([f"{SPS}ScheduledPerformingPhysicianName=HOUSE*"], ["MWLSCP"]),
    "birth_date_and_sex": (["PatientBirthDate=19550101-19701231", "PatientSex=F"],
                           ["MWLSCP", "CT_ROOM"]),
    "requested_procedure_id": (["RequestedProcedureID=RP19"], ["CT_ROOM"]),
}  # fmt: skip
RETURN_KEYS = ["AccessionNumber", f"{SPS}ScheduledProcedureStepID", "PatientName"]


def findscu(port: int, called: str, matching: list[str], out: Path) -> set[tuple[str, str]]:
    """(Accession Number, SPS ID) of every response; the query must end in Success."""
    assert FINDSCU
    out.mkdir(parents=True)
    keys = [*matching, *(k for k in RETURN_KEYS if not any(m.startswith(k) for m in matching))]
    args = [FINDSCU, "-W", "-aet", "MODALITY1", "-aec", called, "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = set()
    for path in out.glob("rsp*.dcm"):
        ds = pydicom.dcmread(path)
        found.add(
            (
                str(ds.AccessionNumber),
                str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID),
            )
        )
    return found


@pytest.fixture
def wlmscpfs(tmp_path: Path):
    """DCMTK wlmscpfs on the folder, on a free port (stopped after the test)."""
    assert WLMSCPFS
    dfp, root, flat, ours_only = _folder(tmp_path)
    port = free_port()
    proc = subprocess.Popen([WLMSCPFS, "-dfp", str(dfp), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(
            [dcmtk("echoscu"), "-aec", "MWLSCP", "127.0.0.1", str(port)], capture_output=True
        ).returncode:  # readiness by polling: C-ECHO answers once it listens
            assert time.monotonic() < deadline, "wlmscpfs did not start"
            time.sleep(0.05)
        yield port, root, flat, ours_only
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cfind_after_import_matches_wlmscpfs_on_the_same_files(
    wlmscpfs, start_scp: StartScp, redis_url: str, tmp_path: Path, capsys
) -> None:
    wl_port, root, flat, ours_only = wlmscpfs
    code = main(["worklist", "import", "--redis-url", redis_url, str(root), str(flat),
                 "--worklist", "ORTHANC"])  # fmt: skip
    report = capsys.readouterr().out
    assert code == 1  # three files were rejected
    rejected = {line.split()[0].rsplit("/", 1)[-1]: line for line in report.splitlines()
                if " rejected " in line}  # fmt: skip
    assert sorted(rejected) == ["no_modality.wl", "no_patient_id.wl", "no_start_date.wl"]
    assert "PatientID: missing or empty (Type 1" in rejected["no_patient_id.wl"]
    assert "ScheduledProcedureStepStartDate: missing or empty" in rejected["no_start_date.wl"]
    assert "Modality: missing or empty" in rejected["no_modality.wl"]
    assert report.splitlines()[-1] == (
        "33 file(s): 30 imported (31 item(s)), 0 skipped (already present), 3 rejected"
    )

    port = start_scp(per_called_ae_worklists=True).port
    pool = ThreadPoolExecutor(2)  # both servers at once: half the wall time

    def both(called: str, matching: list[str], where: Path) -> tuple[set[Any], set[Any]]:
        theirs = pool.submit(findscu, wl_port, called, matching, where / "wlmscpfs")
        ours = pool.submit(findscu, port, called, matching, where / "bridge")
        return theirs.result(), ours.result()

    universal: dict[str, set[tuple[str, str]]] = {}
    for name, (matching, called_aes) in QUERIES.items():
        for called in called_aes:
            theirs, ours = both(called, matching, tmp_path / "rsp" / name / called)
            assert theirs, (name, called)  # every query selects something
            if name == "universal":
                universal[called] = theirs
                assert ours_only & ours == (ours_only if called == "MWLSCP" else set())
            else:
                assert theirs < universal[called], (name, called)  # and not everything
            assert ours - ours_only == theirs, (name, called)

    # Keys wlmscpfs 3.6.7 does not match: it answers as if they were universal.
    for key, expected in (
        (f"{SPS}ScheduledProcedureStepID=SPS3", {("ACC3", "SPS3")}),
        ("StudyInstanceUID=1.2.826.0.1.3680043.10.77.3", {("ACC3", "SPS3")}),
    ):
        theirs, ours = both("MWLSCP", [key], tmp_path / "rsp" / key.split("=")[0])
        assert theirs == universal["MWLSCP"] and ours == expected
    pool.shutdown()
