"""Supervisor mechanics on real processes, and `mwl-bridge run` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bridge_process import Run, gone, processes_with_env, wait_for

from bridge.ops.supervisor import ChildSpec, Supervisor, child_env, role_specs

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(120)"]


def test_crashing_child_is_restarted_with_backoff() -> None:
    sup = Supervisor(
        [ChildSpec("crasher", [PY, "-c", "raise SystemExit(1)"]), ChildSpec("ok", SLEEPER)],
        backoff_initial_s=0.05,
        backoff_max_s=0.4,
    )
    sup.start()
    started = time.monotonic()
    try:
        assert wait_for(lambda: sup.poll() is None and sup.restarts("crasher") >= 4, 15)
        # 0.05 + 0.1 + 0.2 + 0.4 s of back-off at least, plus process start-ups.
        assert time.monotonic() - started >= 0.7
        assert sup.restarts("ok") == 0
    finally:
        sup.stop()
    assert all(p is None for p in sup.children.values())


def test_child_config_error_stops_the_tree() -> None:
    sup = Supervisor(
        [ChildSpec("bad", [PY, "-c", "raise SystemExit(2)"]), ChildSpec("ok", SLEEPER)]
    )
    sup.start()
    ok_pid = sup.children["ok"].pid  # type: ignore[union-attr]
    try:
        codes: list[int | None] = []
        assert wait_for(lambda: codes.append(sup.poll()) or codes[-1] is not None, 15)
        assert codes[-1] == 2
    finally:
        sup.stop()
    assert gone(ok_pid)


def test_stubborn_child_is_killed_after_the_timeout(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = textwrap.dedent(
        f"""
        import signal, time, pathlib
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(120)
        """
    )
    sup = Supervisor([ChildSpec("stubborn", [PY, "-c", code])], stop_timeout_s=0.5)
    sup.start()
    proc = sup.children["stubborn"]
    assert proc is not None
    assert wait_for(ready.exists, 10)
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 5
    assert proc.returncode == -signal.SIGKILL


def test_children_die_when_the_supervisor_is_sigkilled() -> None:
    script = textwrap.dedent(
        f"""
        import time
        from bridge.ops.supervisor import ChildSpec, Supervisor
        sup = Supervisor([ChildSpec("a", {SLEEPER!r}), ChildSpec("b", {SLEEPER!r})])
        sup.start()
        print(*[p.pid for p in sup.children.values()], flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert all(gone(pid) for pid in pids), "a child outlived its SIGKILLed supervisor"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_children_get_settings_only_from_the_rendered_file(tmp_path: Path) -> None:
    env = child_env({"PATH": "/bin", "REDIS_URL": "x", "MWL_BRIDGE_MLLP_PORT": "1",
                     "MWL_BRIDGE_CONFIG": "f", "HOME": "/h"})  # fmt: skip
    assert env == {"PATH": "/bin", "HOME": "/h"}
    specs = role_specs(tmp_path / "s.toml", 3)
    assert [s.name for s in specs] == ["listener", "worker-1", "worker-2", "worker-3", "scp"]
    assert specs[1].argv[-3:] == ["worker", "--config", str(tmp_path / "s.toml")]
    # With outbound.host set, one delivery process for the procedure status to the RIS.
    specs = role_specs(tmp_path / "s.toml", 1, outbound=True)
    assert [s.name for s in specs] == ["listener", "worker-1", "outbound", "scp"]
    assert specs[2].argv[-3:] == ["outbound", "--config", str(tmp_path / "s.toml")]


# -- mwl-bridge run ---------------------------------------------------------------------
@pytest.mark.slow
def test_run_starts_embedded_redis_and_leaves_nothing_behind(tmp_path: Path) -> None:
    run = Run(tmp_path, "--workers", "2")
    try:
        assert wait_for(lambda: "Stop with Ctrl-C" in run.text(), 30), run.text()
        banner = run.text()
        assert f"HL7 MLLP listener  127.0.0.1:{run.mllp_port}" in banner
        assert (f"DICOM SCP          127.0.0.1:{run.dicom_port}  AE title MWL_BRIDGE  "
                "(MWL C-FIND, MPPS)") in banner
        assert f"embedded unix://{run.data_dir}/redis.sock" in banner
        assert "AOF always" in banner and "Workers            2" in banner
        assert "Time zone (DA/TM)  " in banner
        assert wait_for(lambda: run.get("/healthz") == 200, 15)
        assert run.get("/metrics") == 200
        assert wait_for(lambda: len(run.pids()) >= 5, 15)  # redis, listener, 2 workers, scp
        assert (run.data_dir / "redis.url").exists()
        assert run.terminate() == 0
    finally:
        run.kill()
    pids = run.pids()
    assert all(gone(pid) for pid in pids), f"left behind: {pids} \n{run.text()}"
    assert not (run.data_dir / "redis.url").exists()
    assert "run.stopped code=0" in run.text()
    assert processes_with_env(f"XDG_DATA_HOME={tmp_path / 'data'}") == []


def test_run_with_invalid_settings_starts_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_BRIDGE_")}
    env["XDG_DATA_HOME"] = str(tmp_path)
    out = subprocess.run(
        [PY, "-m", "bridge", "run", "--workers", "-1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "mwl-bridge: invalid setting worker.workers: -1 must not be negative"
    ]
    assert not (tmp_path / "mwl-bridge").exists()  # no Redis data dir was even created


@pytest.mark.slow
def test_sigkilled_run_leaves_no_redis_or_child(tmp_path: Path) -> None:
    run = Run(tmp_path, "--workers", "1")
    try:
        assert wait_for(lambda: "redis.embedded.started" in run.text(), 30), run.text()
        assert wait_for(lambda: len(run.pids()) >= 4, 15)
        run.proc.kill()  # no chance to clean up: the kernel's death signal must do it
        run.proc.wait(timeout=10)
    finally:
        run.kill()
    assert all(gone(pid) for pid in run.pids()), run.text()
    assert processes_with_env(f"XDG_DATA_HOME={tmp_path / 'data'}") == []
