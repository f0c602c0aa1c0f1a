"""MWL SCP benchmark: mwl-bridge's indexed C-FIND vs DCMTK wlmscpfs, same items, same run.

Method (reference mwl-dicom.md §4): N worklist items over 30 days (20260105…20260203),
20 stations (station k: AE ``STNkk``, its own modality), start times 07:00–18:55, N/2
patients; every item carries the Type 1 keys so wlmscpfs keeps them all. Each query is
one ``findscu -W`` process = associate + C-FIND + release, timed as client wall time:

* (a) SPS Start Date = 20260107 and Modality = MR, 11 return keys;
* (b) SPS Start Date = 20260107, 11 return keys;
* (c) Patient ID = PAT0000101, 7 return keys;
* C-ECHO with ``echoscu`` (the association floor).

Both servers are checked to return the same number of matches before timing. Then
20 concurrent findscu (one per station, query (a) with its modality) are fired at once
against mwl-bridge, for several rounds, and every one must end in Success.

usage: python bench/scp_bench.py [--sizes 10000,100000] [--runs 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from redis_server import RedisServer, free_port  # noqa: E402

from bridge.store.item import SPS, WorklistItem  # noqa: E402
from bridge.store.keys import Keys  # noqa: E402
from bridge.store.worklist_store import WorklistStore  # noqa: E402

MODALITIES = [
    "CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF",
    "ES", "IO", "PX", "OP", "XC", "GM", "SM", "OCT", "BMD", "IVUS",
]  # fmt: skip
FIRST_DAY = 20260105
DAYS = 30
CALLED_AE = "MWLSCP"
MWL_FIND = "1.2.840.10008.5.1.4.31"


def tool(name: str) -> str:
    # pynetdicom installs Python scripts called findscu/echoscu: use DCMTK's binaries.
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.path.exists(candidate):
            with open(candidate, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return candidate
    raise SystemExit(f"DCMTK {name} not found")


FINDSCU, ECHOSCU, WLMSCPFS = tool("findscu"), tool("echoscu"), tool("wlmscpfs")
#: Environment of the DCMTK clients; ``--client-nodelay`` sets DCMTK's TCP_NODELAY=1
#: (Nagle off in findscu/echoscu, which DCMTK leaves on by default).
CLIENT_ENV: dict[str, str] = dict(os.environ)


def day(n: int) -> str:
    """The n-th day (0-based) of the 30-day window as YYYYMMDD."""
    import datetime as dt

    start = dt.date(FIRST_DAY // 10000, FIRST_DAY // 100 % 100, FIRST_DAY % 100)
    return (start + dt.timedelta(days=n)).strftime("%Y%m%d")


def generate(n_items: int, seed: int = 42) -> list[WorklistItem]:
    rng = random.Random(seed)
    patients = max(1, n_items // 2)
    days = [day(d) for d in range(DAYS)]
    items = []
    for i in range(n_items):
        station = i % 20
        # Each patient gets exactly two items (i and i + N/2), far apart in time.
        pid = f"PAT{i % patients:07d}"
        minutes = rng.randrange(0, 144) * 5  # 07:00 … 18:55
        time_s = f"{7 + minutes // 60:02d}{minutes % 60:02d}00"
        attrs: dict[str, Any] = {
            "PatientName": f"PATIENT{pid[3:]}^TEST",
            "PatientID": pid,
            "PatientBirthDate": f"19{rng.randrange(30, 99)}0{rng.randrange(1, 9)}"
            f"1{rng.randrange(0, 9)}",
            "PatientSex": rng.choice("FM"),
            "AccessionNumber": f"A{i:09d}",
            "RequestedProcedureID": f"RP{i:09d}",
            "RequestedProcedureDescription": f"{MODALITIES[station]} examination",
            "StudyInstanceUID": f"1.2.826.0.1.3680043.10.543.{i}",
            "ReferringPhysicianName": "REFERRER^ANNA",
            "AdmissionID": "",
            "ReferencedStudySequence": [],
            "ReferencedPatientSequence": [],
            SPS: [
                {
                    "ScheduledStationAETitle": f"STN{station:02d}",
                    "ScheduledProcedureStepStartDate": days[(i // 20) % DAYS],
                    "ScheduledProcedureStepStartTime": time_s,
                    "Modality": MODALITIES[station],
                    "ScheduledPerformingPhysicianName": "",
                    "ScheduledProcedureStepDescription": f"{MODALITIES[station]} protocol",
                    "ScheduledProcedureStepID": f"SPS{i:09d}",
                    "ScheduledStationName": f"STATION{station:02d}",
                    "ScheduledProcedureStepLocation": "",
                    "ScheduledProcedureStepStatus": "SCHEDULED",
                }
            ],
        }
        items.append(WorklistItem(item_id=f"b{i}", attrs=attrs, order_key=f"o{i}"))
    return items


def write_wl_files(items: list[WorklistItem], folder: Path) -> None:
    """The same items as DCMTK worklist files (``<folder>/<AE>/*.wl`` + lockfile)."""
    target = folder / CALLED_AE
    target.mkdir(parents=True)
    (target / "lockfile").touch()
    for item in items:
        ds = Dataset()
        for kw, value in item.attrs.items():
            if kw == SPS:
                continue
            if isinstance(value, list):
                setattr(ds, kw, [])
            else:
                setattr(ds, kw, value)
        sps = Dataset()
        for kw, value in item.attrs[SPS][0].items():
            setattr(sps, kw, value)
        ds.ScheduledProcedureStepSequence = [sps]
        ds.SpecificCharacterSet = "ISO_IR 100"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MWL_FIND
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(target / f"{item.item_id}.wl", enforce_file_format=True)


QUERY_A = [
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260107",
    "ScheduledProcedureStepSequence[0].Modality=MR",
]
RETURN_11 = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "RequestedProcedureID", "StudyInstanceUID",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
]  # fmt: skip
QUERIES: dict[str, list[str]] = {
    "a_day_modality": [*QUERY_A, *RETURN_11],
    "b_whole_day": [QUERY_A[0], "ScheduledProcedureStepSequence[0].Modality", *RETURN_11],
    "c_patient_id": [
        "PatientID=PAT0000101", "PatientName", "PatientBirthDate", "AccessionNumber",
        "StudyInstanceUID", "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    ],
}  # fmt: skip


def findscu_args(port: int, keys: list[str], extra: list[str] | None = None) -> list[str]:
    args = [FINDSCU, "-W", "-aet", "BENCH", "-aec", CALLED_AE, *(extra or [])]
    for k in keys:
        args += ["-k", k]
    return [*args, "127.0.0.1", str(port)]


def count_matches(port: int, keys: list[str]) -> int:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            findscu_args(port, keys, ["-X", "-od", out]),
            capture_output=True,
            timeout=600,
            env=CLIENT_ENV,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace"))
        return len(list(Path(out).glob("rsp*.dcm")))


def time_command(args: list[str], runs: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        subprocess.run(args, capture_output=True, timeout=600, check=True, env=CLIENT_ENV)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(args, capture_output=True, timeout=600, check=True, env=CLIENT_ENV)
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "runs": runs,
    }


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def start_bridge(redis_url: str, port: int, max_results: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MWL_BRIDGE_SCP_MAX_RESULTS": str(max_results),
        "MWL_BRIDGE_SCP_MAX_ASSOCIATIONS": "40",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "scp", "--redis-url", redis_url, "--dicom-host",
         "127.0.0.1", "--dicom-port", str(port), "--ae-title", CALLED_AE,
         "--log-level", "WARNING"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_port(port)
    return proc


def concurrent_polls(port: int, rounds: int = 5) -> dict[str, Any]:
    """20 modalities polling at once (query (a) with each station's own AE + modality)."""

    def poll(station: int) -> tuple[bool, float]:
        keys = [
            f"ScheduledProcedureStepSequence[0].ScheduledStationAETitle=STN{station:02d}",
            QUERY_A[0],
            f"ScheduledProcedureStepSequence[0].Modality={MODALITIES[station]}",
            *RETURN_11[:7],
        ]
        started = time.perf_counter()
        proc = subprocess.run(
            findscu_args(port, keys, ["-v"]), capture_output=True, timeout=120, env=CLIENT_ENV
        )
        elapsed = (time.perf_counter() - started) * 1000
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        ok = proc.returncode == 0 and "Received Final Find Response (Success)" in text
        return ok, elapsed

    errors = 0
    latencies: list[float] = []
    walls: list[float] = []
    with ThreadPoolExecutor(max_workers=20) as pool:
        for _ in range(rounds):
            started = time.perf_counter()
            results = list(pool.map(poll, range(20)))
            walls.append((time.perf_counter() - started) * 1000)
            errors += sum(1 for ok, _ in results if not ok)
            latencies += [ms for _, ms in results]
    return {
        "polls": 20 * rounds,
        "errors": errors,
        "latency_median_ms": round(statistics.median(latencies), 1),
        "latency_max_ms": round(max(latencies), 1),
        "round_wall_median_ms": round(statistics.median(walls), 1),
    }


def bench_size(n_items: int, runs: int) -> dict[str, Any]:
    print(f"== N = {n_items}", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"mwl-bench-{n_items}-"))
    redis_server = RedisServer(appendfsync="everysec")
    redis_server.start()
    bridge_proc = wl_proc = None
    try:
        t0 = time.perf_counter()
        items = generate(n_items)
        client = redis.Redis.from_url(redis_server.url)
        store = WorklistStore(client, Keys("mwl"))
        for start in range(0, n_items, 1000):
            store.apply(items[start : start + 1000])
        t1 = time.perf_counter()
        write_wl_files(items, work / "wl")
        t2 = time.perf_counter()
        print(f"   loaded Redis in {t1 - t0:.1f}s, wrote .wl files in {t2 - t1:.1f}s", flush=True)

        bridge_port, wl_port = free_port(), free_port()
        bridge_proc = start_bridge(redis_server.url, bridge_port, max_results=n_items)
        wl_proc = subprocess.Popen(
            [WLMSCPFS, "-dfp", str(work / "wl"), str(wl_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(wl_port)

        result: dict[str, Any] = {"n_items": n_items, "queries": {}}
        for name, keys in QUERIES.items():
            ours = count_matches(bridge_port, keys)
            theirs = count_matches(wl_port, keys)
            if ours != theirs:
                raise RuntimeError(f"{name}: mwl-bridge {ours} matches, wlmscpfs {theirs}")
            wl_runs = runs if n_items <= 10_000 else max(3, runs // 2)
            entry = {
                "matches": ours,
                "mwl_bridge": time_command(findscu_args(bridge_port, keys), runs),
                "wlmscpfs": time_command(findscu_args(wl_port, keys), wl_runs),
            }
            entry["speedup"] = round(
                entry["wlmscpfs"]["median_ms"] / entry["mwl_bridge"]["median_ms"], 1
            )
            result["queries"][name] = entry
            print(f"   {name}: {json.dumps(entry)}", flush=True)
        for name, port in (("mwl_bridge", bridge_port), ("wlmscpfs", wl_port)):
            echo = time_command([ECHOSCU, "-aec", CALLED_AE, "127.0.0.1", str(port)], runs)
            result.setdefault("echo", {})[name] = echo
        print(f"   echo: {json.dumps(result['echo'])}", flush=True)
        result["concurrent_20"] = concurrent_polls(bridge_port)
        print(f"   concurrent: {json.dumps(result['concurrent_20'])}", flush=True)
        return result
    finally:
        for proc in (bridge_proc, wl_proc):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        redis_server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dcmtk = subprocess.run([FINDSCU, "--version"], capture_output=True, text=True).stdout
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "dcmtk": dcmtk.strip().splitlines()[0] if dcmtk else "?",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "scp_bench.json"))
    parser.add_argument(
        "--client-nodelay", action="store_true", help="run findscu/echoscu with TCP_NODELAY=1"
    )
    args = parser.parse_args(argv)
    if args.client_nodelay:
        CLIENT_ENV["TCP_NODELAY"] = "1"
    report = {"machine": machine(), "client_nodelay": args.client_nodelay, "results": []}
    for size in (int(s) for s in args.sizes.split(",")):
        report["results"].append(bench_size(size, args.runs))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
