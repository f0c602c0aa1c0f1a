"""Deliver an order's outbound messages to the RIS, in order, one at a time.

rq calls :func:`deliver_order` by name (``bridge.intake.outbound.DELIVER_FUNC``) with
the order key only. The delivery process (``mwl-bridge outbound``) installs a
:class:`DeliveryContext` before rq starts (settings, Redis client, TLS context); a
process without one builds it from ``MWL_BRIDGE_*`` and ``$MWL_BRIDGE_CONFIG`` with
``load_settings()``, as the ingest workers do.

One job, one order (:class:`OrderDelivery`):

1. It takes the order's lock (``SET keys.outbound_lock(order) <token> NX PX``); if
   another job holds it, it ends: the holder reads the line until it is empty.
2. It reads the head of ``keys.outbound_queue(order)``. Not due yet (in backoff): it lets
   the lock go and ends; the job queued for that time (or the sweep) comes back.
3. ``lua/begin.lua`` counts the attempt (fenced by the token, renewing the lock), then
   the message goes over a new MLLP connection and the reply is read (MSA-1 and MSA-2 of
   an ACK, ORR, ORG, ...; a reply whose MSA-2 is not our MSH-10 is no reply).
4. AA/CA: ``lua/settle.lua`` marks it delivered and pops it; AE/CE: dead letter, then
   pop; AR/CR, a timeout, a refused or dropped connection: ``lua/defer.lua`` notes the
   failure and the next attempt time (backoff doubling from ``outbound.retry_initial_s``
   to ``retry_max_s``), keeps the message at the head and lets the lock go, and a job is
   scheduled for then; after ``outbound.max_attempts`` sends: dead letter, then pop.
5. Next head, until the line is empty: ``lua/release.lua`` lets the lock go and takes the
   order off ``keys.outbound_pending`` in the same step (no lost wake-up). After
   ``JOB_BUDGET_S`` a job hands the rest of its line to a new job, so a long line does
   not keep other orders waiting.

At least once: a message whose reply was lost (the process died, the RIS closed the
connection) is sent again with the same bytes, hence the same MSH-10, which a RIS
dedupes on. A job that stalls past its lock TTL and loses the lock writes nothing more
(every write is fenced by the token). Nothing here logs message content: ids, control
ids, order keys (placer numbers), codes and timings only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.commands.core import Script

from bridge.core import metrics
from bridge.core.errors import ConfigError, StoreUnavailable
from bridge.core.logs import fields
from bridge.core.settings import OutboundSettings, Settings, load_settings
from bridge.intake import deadletter
from bridge.intake import outbound as records
from bridge.mllp.client import Ack, MllpConnection, parse_ack, tls_context
from bridge.outbound import deadletters
from bridge.store import lua
from bridge.store.connections import sync_client
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

#: MSA-1 codes (HL7 table 0008) and what they mean for the message.
DELIVERED_CODES = frozenset({"AA", "CA"})
REJECTED_CODES = frozenset({"AE", "CE"})  # an error in the message: resending cannot help
RETRY_CODES = frozenset({"AR", "CR"})  # refused for now: resend later
#: The lock outlives one send's worst case by this much (it is renewed per message).
LOCK_MARGIN_S = 30.0


class LockLost(Exception):
    """Another job holds the order's lock now: this one stalled past the lock's TTL."""


@dataclass(frozen=True)
class SendResult:
    """What one send came to: ``kind`` is ``delivered``, ``rejected`` or a failure kind
    (``connect``, ``timeout``, ``dropped``, ``reject``, ``invalid_reply``); ``detail``
    an exception type or a code, never content."""

    kind: str
    ack: Ack | None = None
    detail: str = ""
    elapsed_s: float = 0.0

    @property
    def error(self) -> str:
        return f"{self.kind}:{self.detail}" if self.detail else self.kind


@dataclass
class DeliveryContext:
    settings: Settings
    client: redis.Redis
    keys: Keys
    tls: ssl.SSLContext | None
    #: Epoch seconds now (tests inject one).
    clock: Callable[[], float] = field(default=time.time)
    _scripts: dict[str, Script] = field(default_factory=dict)

    @property
    def out(self) -> OutboundSettings:
        return self.settings.outbound

    @property
    def destination(self) -> str:
        return f"{self.out.host}:{self.out.port}"

    def script(self, name: str) -> Script:
        if name not in self._scripts:
            self._scripts[name] = lua.register(self.client, "outbound", name)
        return self._scripts[name]


def tls_for(out: OutboundSettings) -> ssl.SSLContext | None:
    """The client TLS context of ``outbound.tls``; ConfigError naming the file that
    cannot be loaded (exit 2 before anything starts)."""
    if not out.tls:
        return None
    try:
        ctx = tls_context(out.tls_ca_file, None)
    except (OSError, ValueError) as exc:
        raise ConfigError("outbound.tls_ca_file", f"cannot be loaded: {exc}") from None
    if out.tls_cert_file:
        try:
            ctx.load_cert_chain(out.tls_cert_file, out.tls_key_file or None)
        except (OSError, ValueError) as exc:
            raise ConfigError("outbound.tls_cert_file", f"cannot be loaded: {exc}") from None
    return ctx


_CONTEXT: DeliveryContext | None = None


def install(
    settings: Settings, client: redis.Redis | None = None, clock: Callable[[], float] = time.time
) -> DeliveryContext:
    """Build the process-wide context (once per delivery process, before rq starts)."""
    global _CONTEXT
    if not settings.redis.url and client is None:
        raise ConfigError("redis.url", "the delivery needs a Redis URL (or run mwl-bridge run)")
    tls = tls_for(settings.outbound)
    client = client or sync_client(settings.redis)
    _CONTEXT = DeliveryContext(settings, client, Keys(settings.redis.key_prefix), tls, clock)
    return _CONTEXT


def context() -> DeliveryContext:
    return _CONTEXT or install(load_settings())


def deliver_order(order: str) -> str:
    """rq entry point: deliver what is due in ``order``'s line; returns what happened
    (``done``, ``busy``, ``waiting``, ``retry``, ``continued``, ``disabled``,
    ``lock_lost``). Redis failures raise (the job fails; the sweep queues the order
    again once its lock has expired)."""
    return OrderDelivery(context(), order).run()


def backoff_s(out: OutboundSettings, attempt: int) -> float:
    """Wait after the ``attempt``-th failed send: doubling from ``retry_initial_s``."""
    return float(min(out.retry_initial_s * 2 ** max(0, attempt - 1), out.retry_max_s))


def report_destination(ctx: DeliveryContext, instance: str) -> None:
    """Note where this delivery process sends, for ``mwl-bridge status`` (which may run
    with another configuration)."""
    ctx.client.hset(
        ctx.keys.outbound_stats,
        mapping={
            "destination": ctx.destination,
            "tls": "1" if ctx.out.tls else "0",
            "reported_by": instance,
            "reported_at": f"{ctx.clock():.3f}",
        },
    )


class OrderDelivery:
    """One job's work on one order (see the module docstring)."""

    def __init__(self, ctx: DeliveryContext, order: str) -> None:
        self.ctx = ctx
        self.r = ctx.client
        self.keys = ctx.keys
        self.out = ctx.out
        self.order = order
        self.token = uuid.uuid4().hex
        self.lock_key = ctx.keys.outbound_lock(order)
        self.queue_key = ctx.keys.outbound_queue(order)
        self.lock_ttl_ms = int(
            (2 * self.out.connect_timeout_s + self.out.ack_timeout_s + LOCK_MARGIN_S) * 1000
        )
        self.sent = 0

    def run(self) -> str:
        if not self.out.host:
            # Jobs queued while outbound was on, run by a process where it is off: the
            # messages stay in line (status shows them) until a delivery process runs.
            log.warning("outbound.disabled", extra=fields(order=self.order))
            return "disabled"
        try:
            if not self.r.set(self.lock_key, self.token, nx=True, px=self.lock_ttl_ms):
                return "busy"
            return self._drain()
        except LockLost:
            log.warning("outbound.lock_lost", extra=fields(order=self.order, sent=self.sent))
            return "lock_lost"
        except StoreUnavailable:  # a dead letter or an enqueue that failed
            self._release_quietly()
            raise
        except redis.RedisError as exc:
            self._release_quietly()
            raise StoreUnavailable(f"redis failed while delivering: {exc}") from exc

    # -- the loop ----------------------------------------------------------------------
    def _drain(self) -> str:
        started = time.monotonic()
        while True:
            head = self.r.lindex(self.queue_key, 0)
            if head is None:
                if self._release("if_empty"):
                    return "done"
                continue  # a message arrived after our look: the lock is still ours
            msg_id = head.decode()
            data = self.r.hgetall(self.keys.outbound(msg_id))
            if not data:
                self._lost(msg_id)
                continue
            record = records.OutboundRecord.from_hash(msg_id, data)
            if record.state != records.PENDING:
                # Settled before (state and pop are one script, so only a hand-made
                # change gets here): take it off the line, count nothing.
                self._settle(record, record.state, "")
                continue
            now = self.ctx.clock()
            if record.next_attempt_at > now:
                self._release("always")  # in backoff: its scheduled job comes back
                return "waiting"
            if time.monotonic() - started > records.JOB_BUDGET_S:
                self._release("always")
                records.enqueue_delivery(
                    self.r, self.keys, self.out, self.order, f"{msg_id}-c{int(now)}"
                )
                return "continued"
            attempt = self._begin(record, now)
            if attempt is None:
                continue
            result = self._send(record)
            if result.kind == "delivered":
                self._delivered(record, attempt, result)
            elif result.kind == "rejected":
                self._dead_letter(record, attempt, result, "rejected")
            else:
                metrics.OUTBOUND_FAILURES.labels(kind=result.kind).inc()
                if attempt >= self.out.max_attempts:
                    self._dead_letter(record, attempt, result, "dead_lettered")
                else:
                    self._defer(record, attempt, result)
                    return "retry"

    def _send(self, record: records.OutboundRecord) -> SendResult:
        """One exchange on a new connection: a RIS that closes after each message (many
        do) costs nothing, and a failed exchange never leaves a stream out of step."""
        out = self.out
        t0 = time.monotonic()
        try:
            conn = MllpConnection(
                out.host, out.port, out.ack_timeout_s, self.ctx.tls, out.connect_timeout_s
            )
        except OSError as exc:  # refused, unreachable, DNS, connect timeout, TLS handshake
            return SendResult("connect", detail=type(exc).__name__)
        try:
            reply = conn.exchange(record.raw)
        except TimeoutError:
            return SendResult("timeout", elapsed_s=time.monotonic() - t0)
        except OSError as exc:  # closed or reset before the reply
            return SendResult("dropped", detail=type(exc).__name__)
        finally:
            conn.close()
        elapsed = time.monotonic() - t0
        ack = parse_ack(reply)
        if not ack.code:
            return SendResult("invalid_reply", ack, "no_msa", elapsed)
        if ack.control_id != record.control_id:
            return SendResult("invalid_reply", ack, "msa2_mismatch", elapsed)
        if ack.code in DELIVERED_CODES:
            return SendResult("delivered", ack, ack.code, elapsed)
        if ack.code in REJECTED_CODES:
            return SendResult("rejected", ack, ack.code, elapsed)
        if ack.code in RETRY_CODES:
            return SendResult("reject", ack, ack.code, elapsed)
        return SendResult("invalid_reply", ack, "unknown_msa1", elapsed)

    # -- outcomes ----------------------------------------------------------------------
    def _delivered(self, record: records.OutboundRecord, attempt: int, res: SendResult) -> None:
        assert res.ack is not None
        self._settle(record, records.DELIVERED, "delivered", reply=res.ack.code)
        self.sent += 1
        metrics.OUTBOUND_MESSAGES.labels(result="delivered").inc()
        log.info(
            "outbound.delivered",
            extra=fields(
                message_id=record.msg_id, control_id=record.control_id, order=self.order,
                type=record.message_type, reply=res.ack.code, reply_type=res.ack.message_type,
                attempts=attempt, latency_ms=round(res.elapsed_s * 1000, 1),
                age_s=round(self.ctx.clock() - record.created_at, 1),
            ),
        )  # fmt: skip

    def _dead_letter(
        self, record: records.OutboundRecord, attempt: int, res: SendResult, result: str
    ) -> None:
        if result == "rejected":
            assert res.ack is not None
            reason = f"the RIS answered {res.ack.code}" + (
                f" with ERR code {res.ack.error_code}" if res.ack.error_code else " (no ERR)"
            )
        else:
            reason = (
                f"no positive reply from the RIS after {attempt} sends "
                f"(outbound.max_attempts); last: {res.error}"
            )
        record = dataclasses.replace(record, last_error=res.error)
        dead = deadletters.letter(record, reason, attempt, self.ctx.destination, res.ack)
        # The dead letter first, under the message id: a crash before the pop sends the
        # message again and overwrites this letter, never leaves a popped message without
        # one.
        deadletter.put(self.r, self.keys, dead)
        self._settle(
            record, records.DEAD_LETTERED, result,
            reply=res.ack.code if res.ack else "", dead_id=dead.dead_id,
        )  # fmt: skip
        metrics.OUTBOUND_MESSAGES.labels(result=result).inc()
        log.error(
            "outbound.dead_lettered",
            extra=fields(
                message_id=record.msg_id, control_id=record.control_id, order=self.order,
                result=result, error=res.error, code=dead.code, location=dead.location,
                attempts=attempt,
            ),
        )  # fmt: skip

    def _defer(self, record: records.OutboundRecord, attempt: int, res: SendResult) -> None:
        now = self.ctx.clock()
        delay = backoff_s(self.out, attempt)
        ok = self.ctx.script("defer")(
            keys=[self.lock_key, self.keys.outbound(record.msg_id), self.keys.outbound_stats],
            args=[self.token, f"{now:.6f}", f"{now + delay:.6f}", res.error],
        )
        if ok == -1:
            raise LockLost()
        metrics.OUTBOUND_MESSAGES.labels(result="retried").inc()
        log.warning(
            "outbound.send_failed",
            extra=fields(
                message_id=record.msg_id, control_id=record.control_id, order=self.order,
                error=res.error, attempt=attempt, max_attempts=self.out.max_attempts,
                retry_in_s=delay,
            ),
        )  # fmt: skip
        # After the lock is gone, so the job finds it free. Lost if we die right here:
        # the sweep queues the order once it is overdue by outbound.sweep_after_s.
        records.enqueue_delivery(
            self.r, self.keys, self.out, self.order, f"{record.msg_id}-a{attempt}", at=now + delay
        )

    def _lost(self, msg_id: str) -> None:
        """The head's record is gone (expired or deleted by hand): nothing can be sent.
        A dead letter under its id says so, and the line moves on."""
        empty = records.OutboundRecord(raw=b"", order=self.order, control_id="",
                                       message_type="", msg_id=msg_id)  # fmt: skip
        dead = deadletters.letter(
            empty,
            f"outbound record {msg_id} was gone when its turn came (expired or deleted): "
            "the status was not sent",
            0,
            self.ctx.destination,
        )
        deadletter.put(self.r, self.keys, dead)
        self._settle(empty, records.DEAD_LETTERED, "lost", dead_id=dead.dead_id)
        metrics.OUTBOUND_MESSAGES.labels(result="lost").inc()
        log.error("outbound.record_missing", extra=fields(message_id=msg_id, order=self.order))

    # -- fenced writes -----------------------------------------------------------------
    def _begin(self, record: records.OutboundRecord, now: float) -> int | None:
        n = self.ctx.script("begin")(
            keys=[self.lock_key, self.queue_key, self.keys.outbound(record.msg_id)],
            args=[self.token, self.lock_ttl_ms, record.msg_id, f"{now:.6f}"],
        )
        if n == -1:
            raise LockLost()
        return None if n == -2 else int(n)

    def _settle(
        self,
        record: records.OutboundRecord,
        state: str,
        counter: str,
        reply: str = "",
        dead_id: str = "",
    ) -> None:
        ok = self.ctx.script("settle")(
            keys=[
                self.lock_key, self.queue_key, self.keys.outbound(record.msg_id),
                self.keys.outbound_stats,
            ],
            args=[
                self.token, record.msg_id, state, f"{self.ctx.clock():.6f}",
                self.out.delivered_retention_s, counter, reply, dead_id,
            ],
        )  # fmt: skip
        if ok == -1:
            raise LockLost()

    def _release(self, mode: str) -> bool:
        """Let the lock go (``if_empty``: only when the line is empty, and then the order
        leaves the pending set); False when the line is not empty."""
        n = self.ctx.script("release")(
            keys=[self.lock_key, self.queue_key, self.keys.outbound_pending],
            args=[self.token, self.order, mode],
        )
        if n == -1:
            raise LockLost()
        return bool(n)

    def _release_quietly(self) -> None:
        # On failure the lock expires on its own and the sweep queues the order again.
        with contextlib.suppress(redis.RedisError, LockLost):
            self._release("always")
