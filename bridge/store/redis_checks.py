"""Start-up checks of the Redis server: will it keep what the listener ACKs?

An AA promises the sender that the order will reach the worklist, so the sender never
sends it again. Two server settings can break that promise without any error:

* **Eviction.** With ``maxmemory`` above 0 and a ``maxmemory-policy`` other than
  ``noeviction``, Redis deletes keys when memory is full: a queued message, its ingest
  entry, an order state, a dedupe key. The ACKed order is then gone, or comes back as a
  duplicate. A role refuses to start (:class:`ConfigError`, exit code 2) unless
  ``redis.allow_eviction = true`` says the operator accepts that.
* **Persistence.** Without the append-only file every order ACKed since the last RDB
  snapshot is lost when redis-server stops or crashes; with ``appendfsync everysec``
  about the last second of them on a power loss or kernel crash (``no``: whatever the
  kernel has not written back). The role starts with one WARNING naming that window.

``INFO memory`` and ``INFO persistence`` show ``maxmemory``, ``maxmemory_policy`` and
``aof_enabled`` even on managed services that disable ``CONFIG``; ``appendfsync`` is
only in ``CONFIG GET``, so a server that refuses it gets a WARNING saying it could not
be checked. Every role (``listen``, ``worker``, ``scp``) and ``mwl-bridge run`` call
:func:`check_at_start` before they start anything.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from bridge.core.errors import ConfigError
from bridge.core.logs import fields
from bridge.core.settings import RedisSettings, mask_url
from bridge.store.connections import sync_client

log = logging.getLogger(__name__)

#: Back-off while Redis does not answer at start: first retry, then doubling up to this.
WAIT_FIRST_S = 0.2
WAIT_MAX_S = 5.0

#: What each persistence setting can lose of orders that were already ACKed. Redis
#: fsyncs ``everysec`` in a background thread and delays writes by up to 2 s when that
#: fsync is slow; ``no`` leaves it to the kernel's writeback (Linux: dirty pages older
#: than 30 s by default).
_AT_RISK = {
    "aof_off": "every order ACKed since the last RDB snapshot, when redis-server stops "
    "or crashes",
    "everysec": "up to ~1 s of ACKed orders (2 s when the disk stalls), on a power loss "
    "or kernel crash",
    "no": "ACKed orders the kernel has not written back yet (typically up to ~30 s), on "
    "a power loss or kernel crash",
}
_FIX_DURABILITY = "CONFIG SET appendonly yes; CONFIG SET appendfsync always (and in redis.conf)"


@dataclass(frozen=True)
class RedisFacts:
    """What the server says about eviction and persistence."""

    #: ``maxmemory`` in bytes; 0 = no limit (nothing is ever evicted).
    maxmemory: int
    maxmemory_policy: str
    aof_enabled: bool
    #: ``appendfsync``; None when ``CONFIG GET`` was refused (managed Redis).
    appendfsync: str | None

    @property
    def evicts(self) -> bool:
        """True when a full memory makes Redis delete keys instead of refusing writes."""
        return self.maxmemory > 0 and self.maxmemory_policy != "noeviction"

    @property
    def durable(self) -> bool:
        """True when an EXEC returns only after its write is fsynced (the ACK contract)."""
        return self.aof_enabled and self.appendfsync == "always"


def read_facts(client: redis.Redis) -> RedisFacts:
    """``INFO memory``, ``INFO persistence`` and ``CONFIG GET appendfsync``; raises
    ``redis.RedisError`` when Redis cannot be reached or refuses ``INFO``."""
    memory = client.info("memory")
    persistence = client.info("persistence")
    appendfsync: str | None
    try:
        value = client.config_get("appendfsync").get("appendfsync")
    except redis.ResponseError:  # CONFIG renamed or disabled (managed services)
        value = None
    if isinstance(value, bytes):
        value = value.decode()
    appendfsync = str(value) if value else None
    return RedisFacts(
        maxmemory=int(memory.get("maxmemory", 0)),
        maxmemory_policy=str(memory.get("maxmemory_policy", "")),
        aof_enabled=int(persistence.get("aof_enabled", 0)) == 1,
        appendfsync=appendfsync,
    )


def check(facts: RedisFacts, settings: RedisSettings, url: str) -> None:
    """Refuse eviction (ConfigError) unless allowed; log at most one WARNING about
    eviction and one about durability, then the facts at INFO."""
    where = mask_url(url)
    if facts.evicts:
        if not settings.allow_eviction:
            raise ConfigError(
                "redis.allow_eviction",
                f"Redis {where} has maxmemory {facts.maxmemory} with maxmemory-policy "
                f"{facts.maxmemory_policy}: it may evict ACKed orders when memory is full. "
                "Fix: CONFIG SET maxmemory-policy noeviction (and in redis.conf), or set "
                "redis.allow_eviction = true to accept the risk",
            )
        log.warning(
            "redis.eviction_allowed",
            extra=fields(
                redis=where,
                maxmemory=facts.maxmemory,
                maxmemory_policy=facts.maxmemory_policy,
                at_risk="any ACKed order still queued or in the worklist when memory fills",
            ),
        )
    if not facts.aof_enabled:
        _not_durable(where, facts, _AT_RISK["aof_off"])
    elif facts.appendfsync is None:
        log.warning(
            "redis.durability_unchecked",
            extra=fields(
                redis=where,
                aof_enabled=1,
                reason="CONFIG GET appendfsync refused (CONFIG renamed or disabled)",
                fix="make sure appendfsync is always in the server's or provider's settings; "
                "with everysec up to ~1 s of ACKed orders can be lost on a power loss",
            ),
        )
    elif facts.appendfsync != "always":
        at_risk = _AT_RISK.get(facts.appendfsync, _AT_RISK["everysec"])
        _not_durable(where, facts, at_risk)
    log.info(
        "redis.checked",
        extra=fields(
            redis=where,
            maxmemory=facts.maxmemory,
            maxmemory_policy=facts.maxmemory_policy,
            aof_enabled=int(facts.aof_enabled),
            appendfsync=facts.appendfsync or "unknown",
        ),
    )


def _not_durable(where: str, facts: RedisFacts, at_risk: str) -> None:
    log.warning(
        "redis.not_durable",
        extra=fields(
            redis=where,
            aof_enabled=int(facts.aof_enabled),
            appendfsync=facts.appendfsync or "unknown",
            at_risk=at_risk,
            fix=_FIX_DURABILITY,
        ),
    )


def check_at_start(
    settings: RedisSettings, url: str | None = None, stop: threading.Event | None = None
) -> RedisFacts | None:
    """Read the facts of the server at ``url`` (default ``settings.url``) and
    :func:`check` them. While Redis does not answer, wait and retry (a role can do
    nothing without it, and must not ACK before the server was checked): one WARNING
    ``redis.check.waiting``, then a back-off up to ``WAIT_MAX_S``. Returns None when
    ``stop`` was set meanwhile, or when the server refuses ``INFO`` (an ACL without it:
    WARNING ``redis.unchecked``, nothing could be checked). Credentials Redis refuses
    are a ConfigError: no retry cures them."""
    url = url or settings.url
    where = mask_url(url)
    client = sync_client(settings, url)
    delay = WAIT_FIRST_S
    waited = False
    try:
        while True:
            try:
                facts = read_facts(client)
                break
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
                raise ConfigError(
                    "redis.url", f"Redis {where} refused the credentials: {exc}"
                ) from None
            except redis.ResponseError as exc:
                # INFO itself refused (an ACL without +info): nothing can be checked.
                log.warning(
                    "redis.unchecked",
                    extra=fields(redis=where, reason=f"INFO refused: {type(exc).__name__}"),
                )
                return None
            except redis.RedisError as exc:
                if not waited:
                    log.warning(
                        "redis.check.waiting",
                        extra=fields(redis=where, error=type(exc).__name__),
                    )
                    waited = True
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    return None
                delay = min(delay * 2, WAIT_MAX_S)
        if waited:
            log.info("redis.check.reachable", extra=fields(redis=where))
        check(facts, settings, url)
        return facts
    finally:
        client.close()
