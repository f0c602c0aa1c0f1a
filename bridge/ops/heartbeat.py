"""Role heartbeats: each running listener, worker or SCP announces itself in Redis.

``mwl-bridge status`` lists the live ones (``keys.heartbeat(role, instance)``), so the
person on call sees which processes on which hosts are up without access to those hosts.
A heartbeat is a key with a TTL refreshed from a daemon thread; a process that dies
disappears from the list within ``ttl_s``. Failures to refresh are logged, never raised:
a Redis outage is reported by the role's own readiness check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time

import redis

from bridge import __version__
from bridge.core.logs import fields
from bridge.store.keys import Keys

log = logging.getLogger(__name__)


def instance_id() -> str:
    """``<hostname>-<pid>``: unique per process on a host, readable in ``status``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    """Refreshes ``keys.heartbeat(role, instance)`` every ``interval_s`` with a TTL."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        role: str,
        interval_s: float = 5.0,
        ttl_s: float = 15.0,
        instance: str | None = None,
    ) -> None:
        self._r = client
        self.key = keys.heartbeat(role, instance or instance_id())
        self.interval_s = interval_s
        self.ttl_ms = int(ttl_s * 1000)
        self._value = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "version": __version__,
             "started_at": round(time.time(), 3)}
        )  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{role}", daemon=True)

    def beat(self) -> bool:
        try:
            self._r.set(self.key, self._value, px=self.ttl_ms)
            return True
        except redis.RedisError as exc:
            log.warning("heartbeat.failed", extra=fields(key=self.key, error=type(exc).__name__))
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing and remove the key, so ``status`` drops the instance at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 1)
        with contextlib.suppress(redis.RedisError):  # if Redis is away, the TTL removes it
            self._r.delete(self.key)
