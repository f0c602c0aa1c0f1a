"""Start-up checks of the Redis server (bridge/store/redis_checks.py) on real
redis-servers configured the ways that silently lose ACKed orders: eviction, no AOF,
appendfsync everysec, CONFIG hidden. Before these checks no role looked at eviction
at all, and only the listener warned about the AOF (CONFIG GET, nothing when hidden)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mllp_harness import MllpClient, ack_fields, msg
from redis_server import RedisServer, free_port

from bridge.core.errors import ConfigError
from bridge.core.settings import RedisSettings
from bridge.store import redis_checks

ROOT = Path(__file__).resolve().parents[1]
EVICTING = ("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru")
HIDDEN_CONFIG = ("--rename-command", "CONFIG", "")
WARN_EVENTS = {
    "redis.not_durable", "redis.durability_unchecked", "redis.eviction_allowed",
    "redis.unchecked", "redis.check.waiting",
}  # fmt: skip


def server(*args: str, appendonly: str = "yes", appendfsync: str = "always") -> RedisServer:
    s = RedisServer(appendfsync=appendfsync, appendonly=appendonly, extra_args=args)
    s.start()
    return s


@pytest.fixture
def evicting() -> Iterator[RedisServer]:
    s = server(*EVICTING)
    yield s
    s.cleanup()


def role_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_BRIDGE_")}
    env.pop("REDIS_URL", None)
    return env | {"PYTHONPATH": str(ROOT)} | extra


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "argv",
    [
        ["listen", "--mllp-host", "127.0.0.1", "--mllp-port", "0"],
        ["worker", "--burst"],
        ["scp", "--dicom-host", "127.0.0.1", "--dicom-port", "0"],
        ["run", "--workers", "1"],
    ],
    ids=["listen", "worker", "scp", "run"],
)
def test_every_role_refuses_a_redis_that_evicts(evicting: RedisServer, argv: list[str]) -> None:
    """maxmemory 100mb + allkeys-lru: exit 2 with one line naming the setting and both
    fixes, before anything starts (today's code started every role on it: the timeout
    fails the test)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", *argv, "--redis-url", evicting.url],
        env=role_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and " WARNING " not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("mwl-bridge:")]
    assert line.startswith("mwl-bridge: invalid setting redis.allow_eviction: ")
    assert "maxmemory-policy allkeys-lru" in line and "maxmemory 104857600" in line
    assert "CONFIG SET maxmemory-policy noeviction" in line
    assert "redis.allow_eviction = true" in line


def test_eviction_is_read_from_info_when_config_is_hidden() -> None:
    """Managed services hide CONFIG; INFO memory still tells the policy."""
    s = server(*EVICTING, *HIDDEN_CONFIG)
    try:
        with pytest.raises(ConfigError) as exc:
            redis_checks.check_at_start(RedisSettings(url=s.url))
        assert exc.value.key == "redis.allow_eviction"
    finally:
        s.cleanup()


def test_allowed_eviction_and_no_aof_start_the_listener_with_one_warning_each(
    tmp_path: Path,
) -> None:
    """The listen verb with redis.allow_eviction = true on an evicting server without
    AOF: it starts and ACKs, and says so once per problem (today's listener logged
    nothing about eviction, and the AOF warning did not name what is at risk)."""
    s = server(*EVICTING, appendonly="no")
    port = free_port()
    env = role_env(MWL_BRIDGE_REDIS_ALLOW_EVICTION="true")
    err_file = tmp_path / "listen.err"
    with err_file.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "listen", "--redis-url", s.url,
             "--mllp-host", "127.0.0.1", "--mllp-port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, err_file.read_text()
                assert time.monotonic() < deadline, "listener did not start"
                time.sleep(0.05)
        with MllpClient(port) as c:
            assert ack_fields(c.send(msg("E1")))["MSA"][1:3] == ["AA", "E1"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        s.cleanup()
    lines = err_file.read_text().splitlines()
    warned = [ln for ln in lines if " WARNING " in ln or "level=WARNING" in ln]
    assert len(warned) == 2, warned
    (evict,) = [ln for ln in warned if "redis.eviction_allowed" in ln]
    (durable,) = [ln for ln in warned if "redis.not_durable" in ln]
    assert "allkeys-lru" in evict
    assert "since the last RDB snapshot" in durable and "appendonly yes" in durable


@pytest.mark.parametrize(
    ("appendonly", "appendfsync", "window"),
    [
        ("no", "always", "every order ACKed since the last RDB snapshot"),
        ("yes", "everysec", "up to ~1 s of ACKed orders"),
        ("yes", "no", "typically up to ~30 s"),
    ],
)
def test_a_durability_gap_is_one_warning_naming_the_window(
    appendonly: str, appendfsync: str, window: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.store.redis_checks")
    s = server(appendonly=appendonly, appendfsync=appendfsync)
    try:
        facts = redis_checks.check_at_start(RedisSettings(url=s.url))
    finally:
        s.cleanup()
    assert facts is not None and not facts.durable and not facts.evicts
    (warning,) = warnings_of(caplog)
    assert warning.getMessage() == "redis.not_durable"
    assert window in warning.fields["at_risk"]  # type: ignore[attr-defined]
    assert warning.fields["appendfsync"] == appendfsync  # type: ignore[attr-defined]


def test_a_durable_server_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.store.redis_checks")
    s = server()
    try:
        facts = redis_checks.check_at_start(RedisSettings(url=s.url))
    finally:
        s.cleanup()
    assert facts == redis_checks.RedisFacts(0, "noeviction", True, "always")
    assert warnings_of(caplog) == []
    assert [r.getMessage() for r in caplog.records] == ["redis.checked"]


def test_hidden_config_warns_that_appendfsync_could_not_be_checked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """AOF on, CONFIG renamed away: one WARNING saying appendfsync is unknown (today's
    listener logged ``mllp.redis.unchecked`` with the raw error, other roles nothing)."""
    caplog.set_level(logging.INFO, logger="bridge.store.redis_checks")
    s = server(*HIDDEN_CONFIG)
    try:
        facts = redis_checks.check_at_start(RedisSettings(url=s.url))
    finally:
        s.cleanup()
    assert facts is not None and facts.appendfsync is None and facts.aof_enabled
    (warning,) = warnings_of(caplog)
    assert warning.getMessage() == "redis.durability_unchecked"
    assert "CONFIG GET appendfsync refused" in warning.fields["reason"]  # type: ignore[attr-defined]


def test_waits_for_redis_at_start_then_checks(caplog: pytest.LogCaptureFixture) -> None:
    """A role started before its Redis waits for it (one WARNING) instead of running
    unchecked: the listener must not ACK on a server nobody looked at."""
    caplog.set_level(logging.INFO, logger="bridge.store.redis_checks")
    s = RedisServer(appendfsync="everysec")
    late = threading.Timer(0.6, s.start)
    late.start()
    try:
        started = time.monotonic()
        facts = redis_checks.check_at_start(RedisSettings(url=s.url, socket_timeout_s=0.5))
        assert time.monotonic() - started >= 0.5
    finally:
        late.join()
        s.cleanup()
    assert facts is not None and facts.appendfsync == "everysec"
    assert [r.getMessage() for r in warnings_of(caplog)] == [
        "redis.check.waiting", "redis.not_durable"
    ]


def test_waiting_ends_when_stop_is_set() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    unreachable = RedisSettings(url=url, socket_timeout_s=0.2)
    assert redis_checks.check_at_start(unreachable, stop=stop) is None
    assert stop.is_set()


def test_refused_credentials_are_a_config_error_not_a_wait() -> None:
    s = RedisServer(password="sekret")
    s.start()
    try:
        wrong = f"redis://:wrong@127.0.0.1:{s.port}/0"
        with pytest.raises(ConfigError) as exc:
            redis_checks.check_at_start(RedisSettings(url=wrong))
        assert exc.value.key == "redis.url" and "wrong" not in str(exc.value)
        right = f"redis://:sekret@127.0.0.1:{s.port}/0"
        assert redis_checks.check_at_start(RedisSettings(url=right)) is not None
    finally:
        s.cleanup()
