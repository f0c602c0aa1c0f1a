"""Test harness for the MLLP listener: the real asyncio listener in a background thread,
and a blocking socket client that reads whole ACK frames (not a single ``recv``)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.settings import Settings, load_settings
from bridge.mllp.listener import Listener, start

SAMPLES = Path(__file__).parent / "samples"
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def sample(name: str, sep: bytes = b"\r") -> bytes:
    """A sample message (stored with LF line ends) with ``sep`` between segments."""
    return (SAMPLES / name).read_bytes().replace(b"\n", sep)


def listener_settings(redis_url: str, **mllp: Any) -> Settings:
    flags = {"redis.url": redis_url, "mllp.host": "127.0.0.1", "mllp.port": 0}
    flags.update({f"mllp.{k}": v for k, v in mllp.items()})
    return load_settings(flags, env={})


class ListenerThread:
    """Runs :func:`bridge.listener.start` on its own event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener: Listener = self.call(start(settings))

    @property
    def port(self) -> int:
        return self.listener.port

    def call(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def in_loop(self, func: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return func()

        return self.call(run())

    def stop(self) -> None:
        try:
            self.call(self.listener.stop(drain_timeout_s=5.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class MllpClient:
    def __init__(self, port: int, timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        self.buf = b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, content: bytes) -> bytes:
        self.write(VT + content + FS + CR)
        return self.read_ack()

    def read_ack(self) -> bytes:
        """Content of the next ACK frame; raises ConnectionError on EOF."""
        while True:
            start = self.buf.find(VT)
            end = self.buf.find(FS + CR, start + 1) if start >= 0 else -1
            if end >= 0:
                content = self.buf[start + 1 : end]
                self.buf = self.buf[end + 2 :]
                return content
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the listener")
            self.buf += chunk

    def expect_no_data(self, wait_s: float = 0.5) -> None:
        self.sock.settimeout(wait_s)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(10.0)
        raise AssertionError(f"unexpected data from listener: {chunk!r}")

    def is_closed_by_peer(self, wait_s: float = 5.0) -> bool:
        self.sock.settimeout(wait_s)
        try:
            return self.sock.recv(65536) == b""
        except (TimeoutError, ssl.SSLError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ack_fields(ack: bytes, codec: str = "latin-1") -> dict[str, list[str]]:
    """ACK segments by name (first occurrence) split on ``|``."""
    out: dict[str, list[str]] = {}
    for seg in ack.decode(codec).split("\r"):
        if seg:
            out.setdefault(seg[:3], seg.split("|"))
    return out


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


StartFn = Callable[..., "ListenerThread"]


@pytest.fixture
def mllp(redis_url: str) -> Iterator[StartFn]:
    """Start listeners in threads (``mllp.<name>=value`` keyword arguments, ``url=`` for
    another Redis); all are stopped after the test. Import it into a test module."""
    started: list[ListenerThread] = []

    def start_listener(url: str | None = None, **mllp_settings: Any) -> ListenerThread:
        lt = ListenerThread(listener_settings(url or redis_url, **mllp_settings))
        started.append(lt)
        return lt

    yield start_listener
    for lt in started:
        lt.stop()


def msg(control_id: str = "C1", version: str = "2.3", msh_tail: str = "", body: str = "") -> bytes:
    """A small ORM^O01; ``msh_tail`` is appended after MSH-12 (e.g. ``|||AL|NE``)."""
    return (
        f"MSH|^~\\&|RIS|RAD|MWL|HOSP|20260705101500||ORM^O01|{control_id}|P|{version}{msh_tail}\r"
        f"PID|1||P1^^^H^MR||DOE^JANE\rORC|NW|PL{control_id}\rOBR|1|PL{control_id}||CT^CT|{body}\r"
    ).encode()
