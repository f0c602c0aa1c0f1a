"""Procedure status back to the RIS: durable, ordered delivery of outbound HL7 messages
over MLLP. The rq job (``delivery.deliver_order``), the sweep that re-queues orders
whose job was lost (``sweep``), dead letters of refused or undeliverable messages and
their replay (``deadletters``), and the backlog and counts for ``status`` and
``/metrics`` (``report``); the Lua writes are in ``lua/``.

Takes in: outbound records the workers write with the status change
(``bridge.intake.outbound``: ``keys.outbound(id)``, one line per order, the pending
set) and jobs queued by name on ``keys.outbound_queue_name()``. Hands on: the messages
to the RIS over MLLP (``mllp.client``), in order per order, at least once with the same
MSH-10; dead letters through ``intake``. May import: ``core``, ``hl7``, ``store``,
``intake``, ``mllp``; only ``ops`` imports it (the workers name the job by string).
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core", "hl7", "store", "intake", "mllp")
