"""Redis clients built from settings, one place for timeouts and decoding choices.

Sync clients serve rq workers, the SCP's association threads and the admin CLI; the
async client serves the MLLP listener only. Raw HL7 bytes are stored as bytes, so
clients do not decode responses.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from bridge.core.settings import RedisSettings


def sync_client(settings: RedisSettings, url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(
        url or settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )


def async_client(settings: RedisSettings, url: str | None = None) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url or settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )
