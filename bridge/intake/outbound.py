"""Outbound HL7 messages (procedure status back to the RIS): the record a stage writes
and the rq job that delivers it, named by string (no stage imports ``outbound``).

The worker writes, in the same fenced Lua script as the status change that causes it,
for each outbound message (``msg_id`` a fresh uuid hex, ``order`` the order key):

* ``HSET keys.outbound(msg_id)`` with the fields of :class:`OutboundRecord`: ``raw`` (the
  complete message, segments joined by CR, rendered and encoded; its MSH-10 is fixed
  here, so every resend carries the same control id), ``order``, ``control_id``
  (MSH-10), ``type`` (MSH-9, e.g. ``ORM^O01``), ``created_at`` (epoch seconds),
  ``state`` = ``pending``, ``attempts`` = ``0``;
* ``RPUSH keys.outbound_queue(order) msg_id`` (messages of one order leave in this order);
* ``SADD keys.outbound_pending order``;

then, after the script, :func:`enqueue_delivery` (``order``, ``msg_id``). Losing that
enqueue (a crash in between) delays the message, never loses it: the delivery process's
sweep finds the order in ``outbound_pending``. :func:`add` makes the same three writes
in one MULTI/EXEC for callers outside a script (``deadletter replay``, tests).

The delivery (``bridge.outbound.delivery``) adds ``last_attempt_at``, ``last_error``,
``next_attempt_at``, ``swept_at``, ``settled_at`` and ``reply`` and sets ``state`` to
``delivered`` or ``dead_lettered``.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from rq import Queue

from bridge.core.errors import StoreUnavailable
from bridge.core.settings import OutboundSettings
from bridge.store.keys import Keys

#: The rq job function, resolved by name in the delivery process.
DELIVER_FUNC = "bridge.outbound.delivery.deliver_order"
#: ``state`` of a record.
PENDING, DELIVERED, DEAD_LETTERED = "pending", "delivered", "dead_lettered"
#: How long a delivery job keeps starting new messages of its order before it hands
#: the rest to a new job (so one order with a long line cannot hold the process).
JOB_BUDGET_S = 60.0
RESULT_TTL_S = 600
FAILURE_TTL_S = 7 * 86400


@dataclass(frozen=True)
class OutboundRecord:
    """One outbound message as stored in ``keys.outbound(msg_id)``."""

    raw: bytes
    order: str
    control_id: str
    message_type: str
    created_at: float = field(default_factory=time.time)
    msg_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = PENDING
    attempts: int = 0
    #: Epoch seconds before which the delivery does not send it again (backoff); 0 = now.
    next_attempt_at: float = 0.0
    swept_at: float = 0.0
    last_error: str = ""
    #: The dead letter this record was replayed from (``deadletter replay``).
    replay_of: str = ""

    def to_hash(self) -> dict[str, bytes | str]:
        """The fields the workers' script writes (the delivery's own are added later)."""
        return {
            "raw": self.raw,
            "order": self.order,
            "control_id": self.control_id,
            "type": self.message_type,
            "created_at": f"{self.created_at:.6f}",
            "state": self.state,
            "attempts": str(self.attempts),
        } | ({"replay_of": self.replay_of} if self.replay_of else {})

    @classmethod
    def from_hash(cls, msg_id: str, data: dict[bytes, bytes]) -> OutboundRecord:
        text = {k.decode(): v for k, v in data.items()}

        def s(name: str) -> str:
            return text.get(name, b"").decode("utf-8", "replace")

        def f(name: str) -> float:
            try:
                return float(s(name) or 0)
            except ValueError:
                return 0.0

        return cls(
            raw=text.get("raw", b""),
            order=s("order"),
            control_id=s("control_id"),
            message_type=s("type"),
            created_at=f("created_at"),
            msg_id=msg_id,
            state=s("state") or PENDING,
            attempts=int(f("attempts")),
            next_attempt_at=f("next_attempt_at"),
            swept_at=f("swept_at"),
            last_error=s("last_error"),
            replay_of=s("replay_of"),
        )


def add(client: redis.Redis, keys: Keys, record: OutboundRecord) -> str:
    """Write ``record`` at the tail of its order's line, as the workers' script does, in
    one MULTI/EXEC; returns its id. Call :func:`enqueue_delivery` afterwards."""
    try:
        pipe = client.pipeline(transaction=True)
        pipe.hset(keys.outbound(record.msg_id), mapping=record.to_hash())  # type: ignore[arg-type]
        pipe.rpush(keys.outbound_queue(record.order), record.msg_id)
        pipe.sadd(keys.outbound_pending, record.order)
        pipe.execute()
    except redis.RedisError as exc:
        raise StoreUnavailable(f"outbound write failed: {exc}") from exc
    return record.msg_id


def job_id(order: str, tag: str) -> str:
    """An rq job id for a delivery of ``order``. rq allows only ``[A-Za-z0-9_-]`` in job
    ids and order keys hold ``|`` and ``^``, so the order is named by a digest; ``tag``
    (the message id, ``<msg id>-a<attempt>`` for a retry, ``s<epoch>`` for the sweep)
    keeps ids unique: a job id reused while that job runs would let rq's success
    bookkeeping overwrite the newly scheduled job."""
    digest = hashlib.sha1(order.encode("utf-8")).hexdigest()[:16]
    return f"out-{digest}-{tag}"


def job_timeout_s(out: OutboundSettings) -> int:
    """rq's timeout of a delivery job: its budget plus one message's worst case (connect
    and TLS handshake, send, reply), with a margin."""
    return int(JOB_BUDGET_S + 2 * out.connect_timeout_s + out.ack_timeout_s + 60)


def enqueue_delivery(
    client: redis.Redis,
    keys: Keys,
    out: OutboundSettings,
    order: str,
    tag: str,
    at: float | None = None,
) -> str:
    """Queue ``deliver_order(order)`` on ``keys.outbound_queue_name()`` now, or at epoch
    ``at`` (rq's scheduler, run by the delivery process, moves it to the queue then);
    returns the job id. Several jobs for one order are safe: the delivery takes the
    order's lock, and a job that finds it busy or finds nothing due just ends."""
    queue = Queue(keys.outbound_queue_name(), connection=client)
    jid = job_id(order, tag)
    options = {
        "job_id": jid,
        "job_timeout": job_timeout_s(out),
        "result_ttl": RESULT_TTL_S,
        "failure_ttl": FAILURE_TTL_S,
        # rq logs a job's description at INFO: the order number stays out of it.
        "description": f"outbound delivery {jid}",
    }
    try:
        if at is None:
            queue.enqueue(DELIVER_FUNC, order, **options)  # type: ignore[arg-type]
        else:
            # rq schedules in whole seconds (rounded down): round up, so the job never
            # runs before the message is due.
            when = datetime.fromtimestamp(math.ceil(at), UTC)
            queue.enqueue_at(when, DELIVER_FUNC, order, **options)  # type: ignore[arg-type]
    except redis.RedisError as exc:
        raise StoreUnavailable(f"outbound enqueue failed: {exc}") from exc
    return jid
