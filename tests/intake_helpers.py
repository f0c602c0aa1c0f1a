"""What the MLLP listener writes per accepted message (the intake contract), sync.

Tests use :func:`submit` to feed workers exactly as the listener would: one MULTI/EXEC
holding the message hash, the RPUSH to the ingest order and the rq job.
"""

from __future__ import annotations

import time
import uuid

import redis
from rq import Queue, Retry

from bridge.hl7in import read_msh
from bridge.keys import Keys
from bridge.settings import Settings


def submit(
    client: redis.Redis,
    settings: Settings,
    raw: bytes,
    ack_mode: str = "commit",
    peer: str = "127.0.0.1:5000",
) -> str:
    keys = Keys(settings.redis.key_prefix)
    msh = read_msh(raw)
    line = raw.replace(b"\n", b"\r").split(b"\r", 1)[0]
    sep = line[3:4]
    f = line.split(sep)

    def msh_field(n: int) -> str:
        return f[n - 1].decode("latin-1") if len(f) > n - 1 else ""

    version = msh.version
    if version.count(".") == 2 and version.endswith(".0"):
        version = version[:-2]
    message_id = uuid.uuid4().hex
    queue = Queue(keys.queue_name(), connection=client)
    pipe = client.pipeline(transaction=True)
    # rq's enqueue_call(pipeline=...) calls pipe.multi() itself unless the pipeline is
    # already in explicit MULTI mode, which fails once commands are queued: start it here.
    pipe.multi()
    pipe.hset(
        keys.message(message_id),
        mapping={
            "raw": raw,
            "received_at": f"{time.time():.6f}",
            "peer": peer,
            "sending_app": msh_field(3),
            "sending_facility": msh_field(4),
            "receiving_app": msh_field(5),
            "receiving_facility": msh_field(6),
            "control_id": msh_field(10),
            "message_type": msh_field(9),
            "version": version,
            "charset": msh.charset,
            "processing_id": msh_field(11),
            "ack_mode": ack_mode,
        },
    )
    pipe.rpush(keys.ingest_order, message_id)
    queue.enqueue_call(
        "bridge.jobs.process_message",
        args=(message_id,),
        job_id=f"msg-{message_id}",
        retry=Retry(max=settings.worker.max_retries, interval=[1, 5, 15, 30, 60]),
        pipeline=pipe,
    )
    pipe.execute()
    return message_id
