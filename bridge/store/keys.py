"""Every Redis key the bridge uses, in one place.

All keys live under one configurable prefix (``RedisSettings.key_prefix``, default
``mwl``) so several bridges can share a Redis and an operator can find everything
with one ``SCAN MATCH prefix:*``. rq's own keys (``rq:*``) are outside the prefix;
the rq queue *name* is derived from the prefix instead (:meth:`Keys.queue_name`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key templates bound to one prefix."""

    prefix: str = "mwl"

    # -- intake (listener → workers) -------------------------------------------------
    def message(self, message_id: str) -> str:
        """Hash: raw HL7 bytes (``raw``) and MSH metadata of one received message."""
        return f"{self.prefix}:msg:{message_id}"

    def dedupe(self, sender: str, control_id: str) -> str:
        """String ``<sha256>|<message_id>`` for MSH-3+MSH-4 (``sender``) + MSH-10, with TTL."""
        return f"{self.prefix}:dedupe:{sender}:{control_id}"

    @property
    def ingest_order(self) -> str:
        """List of message ids in ACK order; the workers' sequencer applies its head first."""
        return f"{self.prefix}:ingest"

    def parsed(self, message_id: str) -> str:
        """String (JSON): the mapped operations of a parsed message awaiting its turn."""
        return f"{self.prefix}:parsed:{message_id}"

    def batch(self, leader_id: str) -> str:
        """List: the message ids a job took from behind its own (``worker.batch_size``);
        kept until their outcomes are stored, so a re-run or the recovery finds them."""
        return f"{self.prefix}:batch:{leader_id}"

    def result(self, message_id: str) -> str:
        """List: the worker pushes the application outcome here (``--ack-mode application``)."""
        return f"{self.prefix}:result:{message_id}"

    @property
    def apply_lock(self) -> str:
        """String lock held by the worker currently applying parsed messages in order."""
        return f"{self.prefix}:lock:apply"

    @property
    def head_watch(self) -> str:
        """String ``<message_id> <epoch>``: since when the ingest head waits unparsed
        (the maintenance step re-processes a head stuck longer than worker.stuck_head_s)."""
        return f"{self.prefix}:headwatch"

    @property
    def sequence(self) -> str:
        """Counter: ingest sequence numbers (monotonic, one per accepted message)."""
        return f"{self.prefix}:seq"

    def queue_name(self) -> str:
        """rq queue name for parse/map jobs."""
        return f"{self.prefix}-ingest"

    # -- dead letters -----------------------------------------------------------------
    @property
    def deadletter_index(self) -> str:
        """Sorted set of dead-letter ids scored by time (bounded; oldest trimmed)."""
        return f"{self.prefix}:deadletters"

    def deadletter(self, dead_id: str) -> str:
        """Hash: raw bytes, reason, HL7 error code, stage and metadata of one rejected message."""
        return f"{self.prefix}:dl:{dead_id}"

    # -- worklist store ----------------------------------------------------------------
    def item(self, item_id: str) -> str:
        """String (JSON): one worklist item (one Scheduled Procedure Step)."""
        return f"{self.prefix}:item:{item_id}"

    def item_indexes(self, item_id: str) -> str:
        """String (JSON list): the index set keys an item is a member of (for clean removal)."""
        return f"{self.prefix}:itemidx:{item_id}"

    @property
    def index_start(self) -> str:
        """Sorted set: item id scored by SPS start as the number YYYYMMDDHHMMSS."""
        return f"{self.prefix}:idx:start"

    def index(self, field: str, value: str) -> str:
        """Set of item ids whose ``field`` (see ``store.INDEXED_FIELDS``) equals ``value``."""
        return f"{self.prefix}:idx:{field}:{value}"

    def order(self, order_key: str) -> str:
        """Hash: lifecycle state of one order (placer/filler numbers), e.g. last status;
        an alias name holds only ``canonical`` (and ``legacy``/``ambiguous`` marks left by
        the upgrade of an earlier release's store)."""
        return f"{self.prefix}:order:{order_key}"

    def patient(self, patient_key: str) -> str:
        """Hash: ``survivor`` = the ``<issuer>|<id>`` a patient ``<issuer>|<id>`` was merged
        into (ADT A40/A34/A36) or renamed to (A47), with the event and when."""
        return f"{self.prefix}:patient:{patient_key}"

    @property
    def schema(self) -> str:
        """String: the version of the store's layout, set by the workers' upgrade step
        (``bridge.worker.migrations``)."""
        return f"{self.prefix}:schema"

    @property
    def expiry(self) -> str:
        """Sorted set: item id scored by the epoch second at which it is purged."""
        return f"{self.prefix}:expiry"

    @property
    def hygiene(self) -> str:
        """Hash: what the workers' worklist hygiene did (``<action>:<status>`` counters,
        ``since``, ``last_at``) and the settings it runs with (``settings``, ``settings_by``),
        for ``mwl-bridge status`` in another process (``bridge.worker.hygiene``)."""
        return f"{self.prefix}:hygiene"

    # -- MPPS (Modality Performed Procedure Step, PS3.4 Annex F) -----------------------
    def mpps(self, sop_instance_uid: str) -> str:
        """Hash: one MPPS instance (its attributes as JSON, status, links to items)."""
        return f"{self.prefix}:mpps:{sop_instance_uid}"

    @property
    def mpps_index(self) -> str:
        """Sorted set: MPPS SOP Instance UIDs scored by creation time (``mpps list``)."""
        return f"{self.prefix}:mppsidx"

    # -- outbound HL7 (procedure status back to the RIS) -------------------------------
    def outbound(self, message_id: str) -> str:
        """Hash: one outbound HL7 message (``raw`` bytes, order, control id, attempts)."""
        return f"{self.prefix}:out:{message_id}"

    def outbound_queue(self, order_key: str) -> str:
        """List: outbound message ids of one order, oldest first (delivered in order)."""
        return f"{self.prefix}:outq:{order_key}"

    @property
    def outbound_pending(self) -> str:
        """Set: orders whose outbound queue is not empty."""
        return f"{self.prefix}:outpending"

    def outbound_queue_name(self) -> str:
        """rq queue name for outbound deliveries."""
        return f"{self.prefix}-outbound"

    def outbound_lock(self, order_key: str) -> str:
        """String lock (``SET NX PX`` with a random token): the delivery job sending this
        order's messages, so one order has one message in flight at a time."""
        return f"{self.prefix}:outlock:{order_key}"

    @property
    def outbound_stats(self) -> str:
        """Hash: delivery counts (``delivered``, ``rejected``, ``dead_lettered``,
        ``retried``), the last failure's kind and time, and the destination the delivery
        process reported, for ``mwl-bridge status`` in another process."""
        return f"{self.prefix}:outstats"

    @property
    def outbound_sweep_cursor(self) -> str:
        """String: where the delivery sweep's ``SSCAN`` of ``outbound_pending`` continues."""
        return f"{self.prefix}:outsweep"

    # -- liveness ----------------------------------------------------------------------
    def heartbeat(self, role: str, instance: str) -> str:
        """String with TTL: a running listener/worker/scp instance announces itself."""
        return f"{self.prefix}:hb:{role}:{instance}"
