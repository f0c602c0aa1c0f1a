"""Dead letters: rejected or failed messages, kept with the reason so nothing is lost.

A dead letter is a Redis hash (``keys.deadletter(id)``) holding the raw bytes exactly as
received, the stage that gave up (``listener`` for frames that got a NAK, ``worker`` for
messages that could not be parsed or mapped), the HL7 error code (table 0357), a
reason for humans, and MSH metadata. Its id is listed in a time-scored sorted set that
is trimmed to ``max_entries`` (oldest first), so a flood of garbage cannot fill Redis.
The reason text must not contain patient data: it names fields, not their values.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from bridge.core.errors import StoreUnavailable
from bridge.store.keys import Keys

DEFAULT_MAX_ENTRIES = 10_000


@dataclass
class DeadLetter:
    raw: bytes
    reason: str
    stage: str  # "listener" or "worker"
    code: int = 207  # HL7 table 0357
    location: str = ""  # HL7 field to blame, e.g. "PID-3"
    meta: dict[str, str] = field(default_factory=dict)  # control id, sender, peer, type, ...
    dead_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    def to_hash(self) -> dict[str, bytes | str]:
        out: dict[str, bytes | str] = {
            "raw": self.raw,
            "reason": self.reason,
            "stage": self.stage,
            "code": str(self.code),
            "location": self.location,
            "created_at": f"{self.created_at:.6f}",
        }
        out.update({f"meta.{k}": v for k, v in self.meta.items()})
        return out

    @classmethod
    def from_hash(cls, dead_id: str, data: Mapping[bytes, bytes]) -> DeadLetter:
        text = {k.decode(): v for k, v in data.items()}
        return cls(
            raw=text.get("raw", b""),
            reason=text.get("reason", b"").decode("utf-8", "replace"),
            stage=text.get("stage", b"").decode(),
            code=int(text.get("code", b"207")),
            location=text.get("location", b"").decode(),
            meta={k[5:]: v.decode("utf-8", "replace") for k, v in text.items() if k[:5] == "meta."},
            dead_id=dead_id,
            created_at=float(text.get("created_at", b"0")),
        )


def put(
    client: redis.Redis, keys: Keys, letter: DeadLetter, max_entries: int = DEFAULT_MAX_ENTRIES
) -> str:
    """Store ``letter`` and trim the oldest beyond ``max_entries``; returns its id."""
    try:
        pipe = client.pipeline(transaction=True)
        pipe.hset(keys.deadletter(letter.dead_id), mapping=letter.to_hash())  # type: ignore[arg-type]
        pipe.zadd(keys.deadletter_index, {letter.dead_id: letter.created_at})
        pipe.execute()
        excess = client.zcard(keys.deadletter_index) - max_entries
        if excess > 0:
            old = client.zrange(keys.deadletter_index, 0, excess - 1)
            pipe = client.pipeline(transaction=True)
            for dead_id in old:
                pipe.delete(keys.deadletter(dead_id.decode()))
            pipe.zrem(keys.deadletter_index, *old)
            pipe.execute()
    except redis.RedisError as exc:
        raise StoreUnavailable(f"dead-letter write failed: {exc}") from exc
    return letter.dead_id


def get(client: redis.Redis, keys: Keys, dead_id: str) -> DeadLetter | None:
    data = client.hgetall(keys.deadletter(dead_id))
    return DeadLetter.from_hash(dead_id, data) if data else None


def list_ids(client: redis.Redis, keys: Keys, limit: int = 1000) -> list[str]:
    """Newest first."""
    return [i.decode() for i in client.zrevrange(keys.deadletter_index, 0, limit - 1)]


def drop(client: redis.Redis, keys: Keys, dead_id: str) -> bool:
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.deadletter(dead_id))
    pipe.zrem(keys.deadletter_index, dead_id)
    deleted, _ = pipe.execute()
    return bool(deleted)


def count(client: redis.Redis, keys: Keys) -> int:
    return int(client.zcard(keys.deadletter_index))
