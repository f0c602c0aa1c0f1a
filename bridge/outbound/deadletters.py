"""Dead letters of outbound messages (stage ``outbound``) and their replay.

A message the RIS refused (AE/CE), or that got no positive reply in
``outbound.max_attempts`` sends, becomes a dead letter under its message id (a re-run
overwrites it instead of adding one): the raw bytes as sent, the HL7 error code and
field from the reply's ERR (207 when there is none), a reason naming codes and counts
only, and ``meta`` with ``message_id``, ``order``, ``control_id``, ``message_type``,
``outbound`` = ``1``, ``attempts``, ``destination`` and what the reply said
(``reply_code``, ``reply_type``, ``reply_text`` = MSA-3, ``reply_errors``), for the
operator's ``deadletter show``; never for logs.

``mwl-bridge deadletter replay`` puts the raw bytes back at the tail of the order's line
as a new record (same MSH-10, so a RIS that saw the first copy can tell) and queues a
delivery, instead of feeding them to the intake.
"""

from __future__ import annotations

import redis

from bridge.core.codes import Hl7Error
from bridge.core.errors import PermanentError
from bridge.core.settings import OutboundSettings
from bridge.intake import outbound as records
from bridge.intake.deadletter import DeadLetter
from bridge.mllp.client import Ack
from bridge.store.keys import Keys

STAGE = "outbound"


def letter(
    record: records.OutboundRecord,
    reason: str,
    attempts: int,
    destination: str,
    reply: Ack | None = None,
) -> DeadLetter:
    """The dead letter of ``record``; code and location from the reply's first ERR."""
    code = Hl7Error.INTERNAL_ERROR.value
    location = ""
    meta = {
        "message_id": record.msg_id,
        "order": record.order,
        "control_id": record.control_id,
        "message_type": record.message_type,
        "outbound": "1",
        "attempts": str(attempts),
        "destination": destination,
        "created_at": f"{record.created_at:.6f}",
        "last_error": record.last_error,
    }
    if reply is not None:
        if reply.error_code.isdigit():
            code = int(reply.error_code)
        location = reply.error_location
        meta.update(
            reply_code=reply.code,
            reply_type=reply.message_type,
            reply_text=reply.text,
            reply_errors="\r".join(reply.errors),
        )
    return DeadLetter(
        raw=record.raw,
        reason=reason,
        stage=STAGE,
        code=code,
        location=location,
        meta=meta,
        dead_id=record.msg_id,
    )


def requeue(
    client: redis.Redis, keys: Keys, out: OutboundSettings, dead: DeadLetter
) -> str:
    """Put an outbound dead letter's message back at the tail of its order's line and
    queue its delivery; returns the new message id. PermanentError when the letter
    lacks what a delivery needs (a record that was lost has no raw bytes)."""
    order = dead.meta.get("order", "")
    control_id = dead.meta.get("control_id", "")
    if not dead.raw or not order or not control_id:
        raise PermanentError(
            "the dead letter has no raw message, order or control id to send again"
        )
    record = records.OutboundRecord(
        raw=dead.raw,
        order=order,
        control_id=control_id,
        message_type=dead.meta.get("message_type", ""),
        replay_of=dead.dead_id,
    )
    msg_id = records.add(client, keys, record)
    records.enqueue_delivery(client, keys, out, order, msg_id)
    return msg_id
