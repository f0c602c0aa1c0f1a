"""Interoperability with DCMTK's findscu -W and echoscu (an independent C++ SCU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from mwl_items import make_item
from scp_support import StartScp, dcmtk

from bridge.store.worklist_store import WorklistStore

FINDSCU = dcmtk("findscu")
ECHOSCU = dcmtk("echoscu")
DCMCONV = dcmtk("dcmconv")
pytestmark = pytest.mark.skipif(not (FINDSCU and ECHOSCU), reason="DCMTK not installed")


def findscu(
    port: int, keys: list[str | bytes], out: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[bytes], list[pydicom.Dataset]]:
    assert FINDSCU
    args: list[str | bytes] = [FINDSCU, "-W", "-v", "-aet", "MODALITY1", "-aec", "MWL_BRIDGE"]
    args += [*extra, "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    args += ["127.0.0.1", str(port)]
    proc = subprocess.run(args, capture_output=True, timeout=60)
    responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return proc, responses


BASE_KEYS = [
    "PatientName",
    "PatientID",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].Modality",
]


def test_echoscu(start_scp: StartScp) -> None:
    assert ECHOSCU
    port = start_scp().port
    proc = subprocess.run(
        [ECHOSCU, "-v", "-aec", "MWL_BRIDGE", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_findscu_combined_date_time_range(
    store: WorklistStore, start_scp: StartScp, tmp_path: Path
) -> None:
    store.apply(
        [
            make_item(1, date="20260705", time="095900"),
            make_item(2, date="20260705", time="100000"),
            make_item(3, date="20260706", time="030000"),
            make_item(4, date="20260707", time="180000"),
            make_item(5, date="20260707", time="181500"),
        ]
    )
    proc, responses = findscu(
        start_scp().port,
        [
            *BASE_KEYS,
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260705-20260707",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1000-1800",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r.PatientID for r in responses) == ["PID2", "PID3", "PID4"]
    for r in responses:
        assert len(r.ScheduledProcedureStepSequence) == 1
        assert {e.keyword for e in r} == {
            "PatientName",
            "PatientID",
            "ScheduledProcedureStepSequence",
        }


@pytest.mark.parametrize(
    ("charset", "codec", "name", "pattern"),
    [
        ("ISO_IR 100", "latin-1", "MÜLLER^JÜRGEN", "MÜLLER*"),
        ("ISO_IR 192", "utf-8", "ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ", "δημητρίου*"),
    ],
)
def test_findscu_non_ascii_patient_name(
    store: WorklistStore,
    start_scp: StartScp,
    tmp_path: Path,
    charset: str,
    codec: str,
    name: str,
    pattern: str,
) -> None:
    store.apply([make_item(1, name=name), make_item(2, name="SMITH^JOHN")])
    # findscu passes the bytes of -k through: give them in the query's charset.
    keys: list[str | bytes] = [
        f"(0008,0005)={charset}",
        f"PatientName={pattern}".encode(codec),
        "PatientID",
        "ScheduledProcedureStepSequence[0].Modality",
    ]
    scp = start_scp(pn_accent_insensitive=charset == "ISO_IR 192")
    proc, responses = findscu(scp.port, keys, tmp_path)
    assert proc.returncode == 0, proc.stderr
    [rsp] = responses
    assert rsp.SpecificCharacterSet == charset
    assert str(rsp.PatientName) == name
    raw = (tmp_path / "rsp0001.dcm").read_bytes()
    assert name.split("^")[0].encode(codec) in raw


def charset_terms(ds: pydicom.Dataset) -> tuple[str, ...]:
    if "SpecificCharacterSet" not in ds:
        return ()
    elem = ds["SpecificCharacterSet"]
    return tuple(elem.value) if elem.VM > 1 else (elem.value,)


@pytest.mark.parametrize(
    ("name", "charset", "raw"),
    [
        ("MÜLLER^JÜRGEN", ("ISO_IR 100",), "MÜLLER".encode("latin-1")),
        ("ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ", ("ISO_IR 126",), "ΔΗΜΗΤΡΙΟΥ".encode("iso8859_7")),
        (
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            ("", "ISO 2022 IR 87"),
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=",
        ),
    ],
)
def test_findscu_without_charset_gets_the_smallest_set(
    store: WorklistStore,
    start_scp: StartScp,
    tmp_path: Path,
    name: str,
    charset: tuple[str, ...],
    raw: bytes,
) -> None:
    """findscu sends no (0008,0005): a Latin-1 name comes back in ISO_IR 100, a Greek one
    in ISO_IR 126, a Japanese one in ISO 2022 IR 87 (PS3.5 Example H.3.2-1 bytes), each
    decoding to the stored Unicode. Today's code answered all three in ISO_IR 192."""
    store.apply([make_item(1, name=name), make_item(2, name="SMITH^JOHN")])
    proc, responses = findscu(start_scp().port, BASE_KEYS, tmp_path)
    assert proc.returncode == 0, proc.stderr
    by_pid = {r.PatientID: r for r in responses}
    assert charset_terms(by_pid["PID1"]) == charset
    assert str(by_pid["PID1"].PatientName) == name
    assert "SpecificCharacterSet" not in by_pid["PID2"]  # ASCII: none
    files = {pydicom.dcmread(p).PatientID: p for p in tmp_path.glob("rsp*.dcm")}
    assert raw in files["PID1"].read_bytes()


@pytest.mark.skipif(DCMCONV is None, reason="DCMTK dcmconv not installed")
@pytest.mark.parametrize("in_query", [False, True], ids=["auto", "query_charset"])
@pytest.mark.parametrize(
    ("name", "comments", "charset"),
    [
        ("Hong^Gildong=洪^吉洞=홍^길동", "홍\r\n길동", ("", "ISO 2022 IR 149")),
        ("Zhang^XiaoDong=张^小东", "张\r\n小东", ("", "ISO 2022 IR 58")),
    ],
)
def test_dcmtk_decodes_our_korean_and_chinese_iso_2022(
    store: WorklistStore,
    start_scp: StartScp,
    tmp_path: Path,
    name: str,
    comments: str,
    charset: tuple[str, ...],
    in_query: bool,
) -> None:
    """DCMTK's own ISO 2022 decoder (dcmconv +U8) reads back our Korean and Chinese
    responses, including a second line after CR LF (PS3.5 6.1.2.5.3), whether the set
    was chosen automatically or named by the query. Today's code answered in ISO_IR 192
    without a query charset; with one it wrote the Chinese bytes without ESC $ ) A and
    did not designate the Korean set again after CR LF."""
    assert DCMCONV
    store.apply([make_item(1, name=name, extra={"PatientComments": comments})])
    keys: list[str | bytes] = [*BASE_KEYS, "PatientComments"]
    if in_query:
        keys.append("(0008,0005)=" + "\\".join(charset))
    proc, [rsp] = findscu(start_scp().port, keys, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert charset_terms(rsp) == charset
    [path] = tmp_path.glob("rsp*.dcm")
    utf8 = tmp_path / "utf8.dcm"
    conv = subprocess.run([DCMCONV, "+U8", str(path), str(utf8)], capture_output=True, timeout=30)
    assert conv.returncode == 0, conv.stdout + conv.stderr
    converted = pydicom.dcmread(utf8)
    assert converted.SpecificCharacterSet == "ISO_IR 192"
    assert str(converted.PatientName) == name
    assert converted.PatientComments == comments


@pytest.mark.parametrize(
    ("forced", "stored", "sent", "charset"),
    [
        # Latin-1 has Ü: kept; it lacks Ł and Ř: transliterated.
        ("ISO_IR 100", "MÜLLER^ŁUKASZ", "MÜLLER^LUKASZ", "ISO_IR 100"),
        ("ISO_IR 100", "DVOŘÁK^ANTONÍN", "DVORÁK^ANTONÍN", "ISO_IR 100"),
        # ASCII only: Ü → UE (DIN 5007-2), no (0008,0005).
        ("ISO_IR 6", "MÜLLER^JÜRGEN", "MUELLER^JUERGEN", None),
    ],
)
def test_findscu_forced_charset_with_transliteration(
    store: WorklistStore,
    start_scp: StartScp,
    tmp_path: Path,
    forced: str,
    stored: str,
    sent: str,
    charset: str | None,
) -> None:
    """A calling AE forced to a set, with ``transliterate``: only the characters the set
    lacks are replaced. Today's code had no such setting and skipped these items."""
    store.apply([make_item(1, name=stored)])
    scp = start_scp(
        response_charset_by_ae={"MODALITY1": forced},
        unrepresentable_text_by_ae={"MODALITY1": "transliterate"},
    )
    proc, [rsp] = findscu(scp.port, BASE_KEYS, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert rsp.get("SpecificCharacterSet") == charset
    assert str(rsp.PatientName) == sent
    [path] = tmp_path.glob("rsp*.dcm")
    assert sent.encode("latin-1") in path.read_bytes()


def test_findscu_cancel(store: WorklistStore, start_scp: StartScp, tmp_path: Path) -> None:
    store.apply([make_item(n) for n in range(200)])
    proc, responses = findscu(start_scp().port, BASE_KEYS, tmp_path, "--cancel", "5")
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, output
    assert "Cancel" in output, output
    assert 5 <= len(responses) < 200


def test_findscu_rejected_calling_ae(start_scp: StartScp, tmp_path: Path) -> None:
    port = start_scp(allowed_calling_aes=("OTHER",)).port
    proc, _ = findscu(port, BASE_KEYS, tmp_path)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in output or "Rejected" in output
