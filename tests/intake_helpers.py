"""Feed workers exactly as the MLLP listener does: the real intake write.

:func:`submit` reads the MSH with the listener's reader (and its charset decision,
recorded for the worker) and calls
:func:`bridge.intake.submit` (one MULTI/EXEC: message hash, ingest order, dedupe key,
rq job), so worker tests exercise the same contract the listener writes.
"""

from __future__ import annotations

import time

import redis

from bridge.core.settings import Settings
from bridge.hl7.msh import read_msh
from bridge.intake import submit as intake
from bridge.store.keys import Keys


def submit(
    client: redis.Redis,
    settings: Settings,
    raw: bytes,
    ack_mode: str = "commit",
    peer: str = "127.0.0.1:5000",
) -> str:
    """Store and queue ``raw``; returns the message id (a resend returns the stored id)."""
    h = read_msh(raw, settings.mllp.default_charset, settings.mllp.sender_charsets)
    record = intake.IntakeRecord.from_msh(
        raw, h, received_at=time.time(), peer=peer, ack_mode=ack_mode
    )
    result = intake.submit(
        client,
        Keys(settings.redis.key_prefix),
        record,
        dedupe_ttl_s=settings.mllp.dedupe_retention_s,
        max_retries=settings.worker.max_retries,
    )
    return result.message_id
