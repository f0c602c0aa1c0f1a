"""`mwl-bridge run` as a subprocess, and process checks, for the run tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from redis_server import free_port

PY = sys.executable


def gone(pid: int, timeout_s: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def wait_for(predicate, timeout_s: float = 10.0, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return False


# -- mwl-bridge run ----------------------------------------------------------------------
class Run:
    """`mwl-bridge run` in a subprocess with a private data dir and embedded Redis."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.mllp_port, self.dicom_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = tmp_path / "run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_BRIDGE_")} | {
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "TMPDIR": str(tmp_path),
        }
        env.pop("REDIS_URL", None)
        self.data_dir = tmp_path / "data" / "mwl-bridge" / "redis"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "bridge", "run",
             "--mllp-host", "127.0.0.1", "--mllp-port", str(self.mllp_port),
             "--dicom-host", "127.0.0.1", "--dicom-port", str(self.dicom_port),
             "--metrics-port", str(self.metrics_port), *extra],
            env=env, stdout=self._fh, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> set[int]:
        text = self.text()
        found = {int(m) for m in re.findall(r"child\.started child=\S+ pid=(\d+)", text)}
        found |= {int(m) for m in re.findall(r"redis\.embedded\.started pid=(\d+)", text)}
        return found

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2
            ) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return 0

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._fh.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._fh.close()


def processes_with_env(needle: str) -> list[int]:
    """Live processes whose environment contains ``needle`` (children inherit the test's
    private XDG_DATA_HOME, so this finds any child or redis-server left behind)."""
    found = []
    raw = needle.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if raw in env.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found
