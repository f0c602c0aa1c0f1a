"""``mwl-bridge scp`` as a real process: serves C-ECHO, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis_server import free_port
from scp_support import scu

from bridge.ops.cli import main

ROOT = Path(__file__).resolve().parent.parent


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


def test_scp_verb_serves_and_stops_on_sigterm(redis_url: str) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MWL_BRIDGE_CONFIG": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "scp", "--redis-url", redis_url,
         "--dicom-host", "127.0.0.1", "--dicom-port", str(port), "--ae-title", "MWLTEST"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port(port)
        assoc = scu().associate("127.0.0.1", port, ae_title="MWLTEST")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        _, err = proc.communicate(timeout=5)
        assert b"scp.stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_scp_verb_without_redis_url_is_a_config_error(capsys) -> None:
    env_backup = os.environ.pop("MWL_BRIDGE_REDIS_URL", None)
    try:
        assert main(["scp", "--dicom-port", "0"]) == 2
    finally:
        if env_backup is not None:
            os.environ["MWL_BRIDGE_REDIS_URL"] = env_backup
    assert "redis.url" in capsys.readouterr().err


def test_scp_verb_exits_2_when_its_port_is_taken(redis_url: str, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(
            ["scp", "--redis-url", redis_url, "--dicom-host", "127.0.0.1",
             "--dicom-port", str(port)]
        )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid setting scp.port: cannot listen on" in err
