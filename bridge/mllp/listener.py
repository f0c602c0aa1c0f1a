"""The MLLP listener: the bridge's front door and its only asyncio module.

One task per connection; the frames of a connection are handled strictly one after the
other (read MSH → gate → durable write → ACK), because ORM order/cancel sequences depend
on order and MLLP senders wait for each ACK anyway. The durable write is synchronous
(:mod:`bridge.intake.submit`, rq's enqueue is sync) and runs in a bounded thread pool so the
event loop keeps serving other connections meanwhile.

Nothing is dropped silently: every complete frame gets an answer (AA/CA after the
durable write, a NAK built from whatever MSH could be read otherwise), and every frame
that is not queued — garbage, undecodable, rejected by the gate, oversize, incomplete —
goes to the dead-letter store with the reason (stage ``listener``).

Logs carry control id, sender, type, size, code and latency; never message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from bridge.core import metrics
from bridge.core.codes import Hl7Error
from bridge.core.errors import ConfigError, StoreUnavailable
from bridge.core.logs import fields
from bridge.core.settings import Settings
from bridge.hl7.ack import AckPolicy, Outcome, build_ack
from bridge.hl7.charsets import check_settings as check_charsets
from bridge.hl7.msh import Msh, MshError, read_msh
from bridge.intake import deadletter
from bridge.intake.submit import AppResult, IntakeRecord, SubmitKind, submit
from bridge.mllp import framing
from bridge.mllp.gate import check_decodable, check_header
from bridge.store.connections import async_client, sync_client
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

T = TypeVar("T")

#: After FS, how long to wait for the final CR before treating the frame as ended
#: without it (then accepted or rejected per ``mllp.accept_missing_final_cr``).
MISSING_CR_WAIT_S = 0.2
READ_CHUNK_BYTES = 64 * 1024
#: How long ``stop()`` lets a connection finish the message it is handling.
DRAIN_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 5
TLS_HANDSHAKE_TIMEOUT_S = 30.0


@dataclass
class Verdict:
    """What to answer for one frame."""

    outcome: Outcome
    msh: Msh | None
    error: Hl7Error | None = None
    text: str = ""
    location: str = ""
    message_id: str = ""
    note: str = ""  # "new", "duplicate", ... for the log line
    dead_reason: str = ""  # non-empty: keep the frame as a dead letter
    reject: str = ""  # metrics.FRAMES_REJECTED reason label (closed set), "" = not rejected


@dataclass
class _Connection:
    peer: str
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    busy: bool = False
    messages: int = 0


class _TlsAcceptProtocol(asyncio.Protocol):
    """First protocol of a TLS connection: stops reading at once (the ClientHello must
    reach the TLS layer, not a stream buffer) and hands the transport to the listener."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self.listener._tls_accept(transport))
        self.listener._accepting.add(task)
        task.add_done_callback(self.listener._accepting.discard)


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server TLS context from ``mllp.tls_*``; a client CA file turns on mutual TLS."""
    m = settings.mllp
    if not m.tls_cert_file:
        if m.tls_key_file or m.tls_client_ca_file:
            raise ConfigError("mllp.tls_cert_file", "required when a TLS key or client CA is set")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(m.tls_cert_file, m.tls_key_file or None)
        if m.tls_client_ca_file:
            ctx.load_verify_locations(cafile=m.tls_client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("mllp.tls_cert_file", f"cannot load TLS files: {exc}") from None
    return ctx


class Listener:
    """An MLLP server bound to ``mllp.host``/``mllp.port`` (0 = any free port)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        m = settings.mllp
        self.keys = Keys(settings.redis.key_prefix)
        self.policy = AckPolicy(
            reject_code=m.reject_code,
            error_code=m.error_code,
            enhanced_mode=m.enhanced_mode,
            default_charset=m.default_charset,
        )
        self._ack_texts = dict(m.ack_texts)
        self._accepted_types = frozenset(m.accepted_message_types)
        self.client: redis.Redis = sync_client(settings.redis)
        # BLPOP for application ACKs blocks up to application_ack_timeout_s: the socket
        # timeout must be longer than that, or the wait itself would fail.
        wait_redis = dataclasses.replace(
            settings.redis,
            socket_timeout_s=settings.redis.socket_timeout_s + m.application_ack_timeout_s,
        )
        self.aclient: aioredis.Redis = async_client(wait_redis)
        # One thread per concurrently writing connection at most; rq's enqueue is sync.
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, min(32, m.max_connections)), thread_name_prefix="intake"
        )
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _Connection] = {}
        self._stopping = False
        self._tls: ssl.SSLContext | None = None
        self._accepting: set[asyncio.Task[None]] = set()  # TLS handshakes in progress

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def is_serving(self) -> bool:
        """Readiness: the socket is bound and accepting."""
        return self._server is not None and self._server.is_serving() and not self._stopping

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def connection_sockets(self) -> list[socket.socket]:
        """Sockets of open connections (for tests of socket options)."""
        out = []
        for conn in self._conns.values():
            sock = conn.writer.get_extra_info("socket")
            if sock is not None:
                out.append(sock)
        return out

    async def start(self) -> None:
        m = self.settings.mllp
        ctx = self._tls = tls_context(self.settings)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                if ctx is None:
                    self._server = await asyncio.start_server(
                        self._on_connection,
                        host=m.host,
                        port=m.port,
                        reuse_address=True,
                        limit=READ_CHUNK_BYTES,
                    )
                else:
                    loop = asyncio.get_running_loop()
                    self._server = await loop.create_server(
                        lambda: _TlsAcceptProtocol(self), host=m.host, port=m.port,
                        reuse_address=True,
                    )  # fmt: skip
                break
            except OSError as exc:
                if attempt == BIND_ATTEMPTS:
                    # exit code 2: `run` stops instead of restarting the child forever
                    raise ConfigError(
                        "mllp.port", f"cannot listen on {m.host}:{m.port}: {exc}"
                    ) from None
                log.warning(
                    "mllp.bind.retry", extra=fields(host=m.host, port=m.port, error=str(exc))
                )
                await asyncio.sleep(1.0)
        log.info(
            "mllp.listening",
            extra=fields(
                host=m.host,
                port=self.port,
                tls=bool(ctx),
                mutual_tls=bool(ctx and m.tls_client_ca_file),
                ack_mode=m.ack_mode,
                max_connections=m.max_connections,
            ),
        )

    async def stop(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop accepting, let busy connections finish their current message, close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._accepting):
            if task not in self._conns:
                task.cancel()
        for task, conn in list(self._conns.items()):
            if not conn.busy:
                task.cancel()
        tasks = list(self._conns)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        # Drained connections have their writes done; never block the loop on a stuck call.
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.aclient.aclose()
        self.client.close()
        log.info("mllp.stopped")

    async def _run_sync(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(func, *args, **kwargs))

    # -- connections -------------------------------------------------------------------
    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer(writer)
        m = self.settings.mllp
        if self._stopping or len(self._conns) >= m.max_connections:
            # Senders see this as an unexplained drop: say so loudly on our side.
            log.warning(
                "mllp.connection.refused",
                extra=fields(
                    peer=peer,
                    active=len(self._conns),
                    max_connections=m.max_connections,
                    stopping=self._stopping,
                ),
            )
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(peer=peer, writer=writer, task=task)
        self._conns[task] = conn
        log.info("mllp.connection.open", extra=fields(peer=peer, active=len(self._conns)))
        reason = "closed"
        try:
            reason = await self._serve(conn, reader)
        except asyncio.CancelledError:
            reason = "shutdown"
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            reason = f"error: {type(exc).__name__}"
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            log.info(
                "mllp.connection.closed",
                extra=fields(peer=peer, reason=reason, messages=conn.messages),
            )

    async def _tls_accept(self, transport: asyncio.BaseTransport) -> None:
        """TLS handshake in our hands, not the server's, so that a failure is logged with
        the peer (asyncio logs failed handshakes only in debug mode; a sender with a bad
        certificate would see unexplained drops and we would see nothing)."""
        assert self._tls is not None and isinstance(transport, asyncio.Transport)
        info = transport.get_extra_info("peername")
        peer = f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            tls_transport = await asyncio.wait_for(
                loop.start_tls(transport, protocol, self._tls, server_side=True),
                TLS_HANDSHAKE_TIMEOUT_S,
            )
        except (ssl.SSLError, OSError, TimeoutError, RuntimeError) as exc:
            log.warning(
                "mllp.tls.handshake_failed",
                extra=fields(peer=peer, error=f"{type(exc).__name__}: {exc}"),
            )
            transport.abort()
            return
        if tls_transport is None:  # peer went away during the handshake
            transport.abort()
            return
        writer = asyncio.StreamWriter(tls_transport, protocol, reader, loop)
        cert = writer.get_extra_info("peercert") or {}
        subject = ",".join("=".join(kv) for rdn in cert.get("subject", ()) for kv in rdn)
        log.info("mllp.tls.established", extra=fields(peer=peer, client_cert=subject or "-"))
        await self._on_connection(reader, writer)

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> str:
        m = self.settings.mllp
        framer = framing.Framer(m.max_frame_bytes)
        while not self._stopping:
            if framer.state is framing.State.AWAIT_CR:
                timeout: float | None = MISSING_CR_WAIT_S
            elif framer.in_frame:
                timeout = m.frame_timeout_s or None
            else:
                timeout = m.idle_timeout_s or None
            conn.busy = False
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                conn.busy = True
                if framer.state is framing.State.AWAIT_CR:
                    events = framer.end_without_cr()
                elif framer.in_frame:
                    partial = framer.close()
                    await self._frame_timeout(conn, partial)
                    return "frame timeout"
                else:
                    return "idle timeout"
            else:
                conn.busy = True
                if not data:
                    await self._handle_events(conn, framer.close())
                    return "peer closed"
                events = framer.feed(data)
            if not await self._handle_events(conn, events):
                return "oversize frame"
        return "shutdown"

    async def _handle_events(self, conn: _Connection, events: list[framing.Event]) -> bool:
        """Handle events in order; False = close the connection."""
        for event in events:
            if isinstance(event, framing.Frame):
                await self._on_frame(conn, event)
                if self._stopping:
                    return True  # in-flight message answered; later frames are resent
            elif isinstance(event, framing.JunkSkipped):
                if not event.whitespace_only:
                    metrics.FRAMES_REJECTED.labels(reason="junk").inc()
                level = logging.DEBUG if event.whitespace_only else logging.WARNING
                log.log(
                    level,
                    "mllp.junk_skipped",
                    extra=fields(
                        peer=conn.peer, bytes=event.count, whitespace=event.whitespace_only
                    ),
                )
            elif isinstance(event, framing.Abandoned):
                metrics.FRAMES_REJECTED.labels(reason="incomplete").inc()
                log.warning(
                    "mllp.frame.abandoned", extra=fields(peer=conn.peer, size=len(event.content))
                )
                await self._dead_letter(
                    conn, event.content, None, "incomplete frame (no end block)", 100
                )
            elif isinstance(event, framing.Oversize):
                await self._oversize(conn, event)
                return False
        return True

    # -- one frame -----------------------------------------------------------------------
    async def _on_frame(self, conn: _Connection, frame: framing.Frame) -> None:
        t0 = time.perf_counter()
        verdict = await self._decide(conn, frame)
        conn.messages += 1
        if verdict.dead_reason:
            code = verdict.error or Hl7Error.INTERNAL_ERROR
            await self._dead_letter(conn, frame.content, verdict.msh, verdict.dead_reason, code)
        text = verdict.text
        if self._ack_texts:
            key = "0" if verdict.outcome is Outcome.ACCEPTED else str(int(verdict.error or 207))
            text = self._ack_texts.get(key, text)
        ack = build_ack(
            verdict.msh,
            verdict.outcome,
            self.policy,
            error=verdict.error,
            text=text,
            location=verdict.location,
        )
        h = verdict.msh
        # Counted before the ACK goes out: whoever reads the metrics after the sender got
        # its answer sees it counted (a scrape racing the write is no better off).
        metrics.MESSAGES_RECEIVED.labels(message_type=self._type_label(h)).inc()
        if verdict.reject:
            metrics.FRAMES_REJECTED.labels(reason=verdict.reject).inc()
        if ack.send:
            metrics.ACKS.labels(code=ack.code.value).inc()
            conn.writer.write(framing.frame(ack.content))
            await conn.writer.drain()
        level = logging.INFO if ack.code.is_positive else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "mllp.message",
                extra=fields(
                    peer=conn.peer,
                    control_id=h.control_id if h else "",
                    sender=f"{h.sending_app}|{h.sending_facility}" if h else "",
                    type=h.message_type if h else "",
                    version=h.version_raw if h else "",
                    size=len(frame.content),
                    code=ack.code.value,
                    error=int(verdict.error) if verdict.error is not None else "",
                    sent=ack.send,
                    result=verdict.note,
                    message_id=verdict.message_id,
                    latency_ms=round((time.perf_counter() - t0) * 1000, 3),
                ),
            )

    def _type_label(self, h: Msh | None) -> str:
        """Metric label for MSH-9: an accepted type, "other" or "unknown" (closed set)."""
        if h is None or not h.message_type:
            return "unknown"
        return h.message_type if h.message_type in self._accepted_types else "other"

    async def _decide(self, conn: _Connection, frame: framing.Frame) -> Verdict:
        m = self.settings.mllp
        content = frame.content
        received_at = time.time()
        try:
            h = read_msh(content, m.default_charset, m.sender_charsets)
        except MshError as exc:
            # A charset refusal is decided here, at ACK time, never by a worker later:
            # unknown/refused name → 103 at MSH-18/MSH-20, undecodable MSH → 102.
            outcome, error, label = {
                MshError.UNKNOWN_CHARSET: (
                    Outcome.ERROR, Hl7Error.TABLE_VALUE_NOT_FOUND, "charset"
                ),
                MshError.UNDECODABLE: (Outcome.ERROR, Hl7Error.DATA_TYPE, "charset"),
            }.get(exc.kind, (Outcome.REJECTED, Hl7Error.SEGMENT_SEQUENCE, "bad_msh"))  # fmt: skip
            return Verdict(
                outcome,
                exc.partial,
                error,
                text=exc.reason,
                location=exc.location,
                note="unreadable",
                dead_reason=exc.reason,
                reject=label,
            )
        if frame.missing_final_cr and not m.accept_missing_final_cr:
            reason = "frame ended without the final CR (mllp.accept_missing_final_cr is off)"
            return Verdict(
                Outcome.REJECTED,
                h,
                Hl7Error.SEGMENT_SEQUENCE,
                reason,
                dead_reason=reason,
                reject="missing_final_cr",
            )
        gate = self._gate(h, content)
        if gate is not None:
            return gate

        record = IntakeRecord.from_msh(
            content, h, received_at=received_at, peer=conn.peer, ack_mode=m.ack_mode
        )
        try:
            result = await self._run_sync(
                submit,
                self.client,
                self.keys,
                record,
                dedupe_ttl_s=m.dedupe_retention_s,
                max_retries=self.settings.worker.max_retries,
            )
        except StoreUnavailable as exc:
            log.error(
                "mllp.store_unavailable",
                extra=fields(peer=conn.peer, control_id=h.control_id, error=str(exc)),
            )
            return Verdict(
                Outcome.REJECTED,
                h,
                Hl7Error.INTERNAL_ERROR,
                "Message not stored, please resend",
                note="store unavailable",
                reject="store_unavailable",
            )
        if result.kind is SubmitKind.CONFLICT:
            reason = "control id already used for a different message"
            return Verdict(
                Outcome.ERROR,
                h,
                Hl7Error.DUPLICATE_KEY,
                reason,
                location="MSH-10",
                message_id=result.message_id,
                note="conflict",
                dead_reason=reason,
                reject="duplicate_control_id",
            )
        app_mode = m.ack_mode == "application" and not (
            self.policy.enhanced_mode and h.enhanced_mode
        )
        if result.kind is SubmitKind.DUPLICATE:
            if app_mode:
                return await self._duplicate_verdict(h, result.message_id)
            return Verdict(
                Outcome.ACCEPTED, h, message_id=result.message_id, note="duplicate (not queued)"
            )
        if app_mode:
            return await self._application_verdict(h, result.message_id)
        return Verdict(Outcome.ACCEPTED, h, message_id=result.message_id, note="queued")

    def _gate(self, h: Msh, content: bytes) -> Verdict | None:
        """HL7 v2 2.9.2: the receiver checks MSH-9, MSH-11 and MSH-12 before anything."""
        m = self.settings.mllp
        refusal = check_header(h, m) or check_decodable(content, h, m)
        if refusal is None:
            return None
        return Verdict(
            Outcome.REJECTED if refusal.reject else Outcome.ERROR,
            h,
            refusal.error,
            refusal.reason,
            refusal.location,
            dead_reason=refusal.reason,
            reject=refusal.label,
        )

    async def _application_verdict(self, h: Msh, message_id: str) -> Verdict:
        """``--ack-mode application``: wait for the worker's verdict, which it gives once
        the message is applied (its items are in the worklist) or rejected. The message
        is durable already; without a verdict in time the answer asks for a resend, which
        is then answered from the stored outcome (:meth:`_duplicate_verdict`)."""
        result = await self._await_result(h, message_id)
        if result is None:
            return self._not_yet_applied(h, message_id, "queued (no verdict)")
        return self._result_verdict(h, message_id, result, "processed", "processing failed")

    def _not_yet_applied(self, h: Msh, message_id: str, note: str) -> Verdict:
        """AR (CR) 207: stored, not applied within mllp.application_ack_timeout_s. AA
        would tell the RIS the order is on the worklist, which it is not yet."""
        return Verdict(
            Outcome.REJECTED,
            h,
            Hl7Error.INTERNAL_ERROR,
            "Message stored but not yet applied, please resend",
            message_id=message_id,
            note=note,
            reject="not_yet_applied",
        )

    async def _duplicate_verdict(self, h: Msh, message_id: str) -> Verdict:
        """``--ack-mode application``, resend of the stored message ``message_id``: answer
        with its fate, not a blind AA. The usual reason for a resend is a lost AE, and an
        AA then would tell the RIS that an order sitting in the dead-letter store is on the
        worklist."""
        try:
            fate = await self._run_sync(self._stored_fate, message_id)
        except redis.RedisError as exc:
            log.error(
                "mllp.duplicate.fate_unavailable",
                extra=fields(control_id=h.control_id, message_id=message_id, error=str(exc)),
            )
            return Verdict(
                Outcome.REJECTED,
                h,
                Hl7Error.INTERNAL_ERROR,
                "Message status unknown, please resend",
                message_id=message_id,
                note="duplicate (status unknown)",
                reject="store_unavailable",
            )
        if fate is None:  # still in line: wait for the verdict as for a new message
            fate = await self._await_result(h, message_id)
            if fate is None:
                # The first send's connection may still be waiting and have taken the
                # verdict: a rejection leaves its dead letter, so look once more.
                with contextlib.suppress(redis.RedisError):
                    fate = await self._run_sync(self._stored_fate, message_id)
            if fate is None:
                return self._not_yet_applied(h, message_id, "duplicate (no verdict)")
        return self._result_verdict(
            h, message_id, fate, "duplicate (processed)", "duplicate (processing failed)"
        )

    def _stored_fate(self, message_id: str) -> AppResult | None:
        """What became of the stored message ``message_id`` (sync, in the thread pool):
        its verdict, or None while the workers have not decided yet.

        The worker dead-letters a rejected message under its message id; when a message
        is applied (or popped as rejected) its verdict is written to its hash and, in
        application mode, pushed to ``keys.result(id)`` (popped by whichever connection
        waited for it)."""
        k = self.keys
        letter = deadletter.get(self.client, k, message_id)
        if letter is not None:
            return AppResult(
                ok=False, code=letter.code, text=letter.reason, location=letter.location
            )
        pipe = self.client.pipeline(transaction=False)
        pipe.lindex(k.result(message_id), -1)
        pipe.hmget(k.message(message_id), "state", "verdict")
        pipe.lpos(k.ingest_order, message_id)
        pipe.exists(k.message(message_id))
        pushed, (state, stored_verdict), position, stored = pipe.execute()
        for verdict in (pushed, stored_verdict):
            if verdict is not None:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    return AppResult.from_json(verdict)
        if position is not None or (stored and state != b"applied"):
            return None  # still in line: not applied yet
        # Applied by a release that kept no verdict, or expired from Redis: as in commit
        # mode, the durable copy was applied.
        return AppResult(ok=True)

    async def _await_result(self, h: Msh, message_id: str) -> AppResult | None:
        """Pop the worker's verdict for ``message_id``; None (logged) when none came within
        ``mllp.application_ack_timeout_s``, Redis failed or the verdict was unreadable."""
        m = self.settings.mllp
        try:
            popped = await self.aclient.blpop(
                [self.keys.result(message_id)], timeout=m.application_ack_timeout_s
            )
        except redis.RedisError as exc:
            popped = None
            log.warning(
                "mllp.application_ack.unavailable",
                extra=fields(control_id=h.control_id, message_id=message_id, error=str(exc)),
            )
        if popped is None:
            log.warning(
                "mllp.application_ack.timeout",
                extra=fields(
                    control_id=h.control_id,
                    message_id=message_id,
                    timeout_s=m.application_ack_timeout_s,
                ),
            )
            return None
        try:
            return AppResult.from_json(popped[1])
        except (ValueError, TypeError, AttributeError) as exc:
            log.error(
                "mllp.application_ack.invalid",
                extra=fields(message_id=message_id, error=type(exc).__name__),
            )
            return None

    @staticmethod
    def _result_verdict(
        h: Msh, message_id: str, result: AppResult, ok_note: str, error_note: str
    ) -> Verdict:
        if result.ok:
            return Verdict(Outcome.ACCEPTED, h, message_id=message_id, note=ok_note)
        try:
            error = Hl7Error(result.code) if result.code else Hl7Error.INTERNAL_ERROR
        except ValueError:
            error = Hl7Error.INTERNAL_ERROR
        return Verdict(
            Outcome.ERROR,
            h,
            error,
            result.text or error.text,
            result.location,
            message_id=message_id,
            note=error_note,
        )

    # -- failures ------------------------------------------------------------------------
    async def _oversize(self, conn: _Connection, event: framing.Oversize) -> None:
        try:
            m = self.settings.mllp
            h: Msh | None = read_msh(event.head, m.default_charset, m.sender_charsets)
        except MshError as exc:
            h = exc.partial
        reason = f"frame larger than {event.limit} bytes (first {event.limit} bytes kept)"
        log.warning("mllp.frame.oversize", extra=fields(peer=conn.peer, limit=event.limit))
        metrics.FRAMES_REJECTED.labels(reason="too_large").inc()
        await self._dead_letter(conn, event.head, h, reason, Hl7Error.INTERNAL_ERROR)
        await self._send_nak(conn, h, Hl7Error.INTERNAL_ERROR, f"frame larger than {event.limit}")

    async def _frame_timeout(self, conn: _Connection, events: list[framing.Event]) -> None:
        m = self.settings.mllp
        for event in events:
            if not isinstance(event, framing.Abandoned):
                continue
            try:
                h: Msh | None = read_msh(event.content, m.default_charset, m.sender_charsets)
            except MshError as exc:
                h = exc.partial
            reason = f"incomplete frame: no end block within {m.frame_timeout_s} s"
            log.warning("mllp.frame.timeout", extra=fields(peer=conn.peer, size=len(event.content)))
            metrics.FRAMES_REJECTED.labels(reason="timeout").inc()
            await self._dead_letter(conn, event.content, h, reason, Hl7Error.INTERNAL_ERROR)
            if h is not None:
                await self._send_nak(conn, h, Hl7Error.INTERNAL_ERROR, "incomplete frame")

    async def _send_nak(self, conn: _Connection, h: Msh | None, error: Hl7Error, text: str) -> None:
        ack = build_ack(h, Outcome.REJECTED, self.policy, error=error, text=text)
        if ack.send:
            with contextlib.suppress(ConnectionError, OSError):
                conn.writer.write(framing.frame(ack.content))
                await asyncio.wait_for(conn.writer.drain(), 5.0)

    async def _dead_letter(
        self, conn: _Connection, raw: bytes, h: Msh | None, reason: str, code: int
    ) -> None:
        meta = {k: v for k, v in (h.meta() if h else {}).items() if v}
        meta["peer"] = conn.peer
        letter = deadletter.DeadLetter(
            raw=raw, reason=reason, stage="listener", code=int(code), meta=meta
        )
        try:
            await self._run_sync(deadletter.put, self.client, self.keys, letter)
        except StoreUnavailable as exc:
            log.error(
                "mllp.deadletter.failed",
                extra=fields(peer=conn.peer, size=len(raw), reason=reason, error=str(exc)),
            )


async def start(settings: Settings) -> Listener:
    """Start a listener (tests: ``mllp.port=0`` and read ``listener.port``)."""
    listener = Listener(settings)
    await listener.start()
    return listener


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run a listener until ``stop`` is set, then drain and close; ``/readyz`` includes
    "mllp" while the socket accepts connections."""
    listener = await start(settings)
    metrics.register_readiness("mllp", listener.is_serving)
    try:
        await stop.wait()
        log.info("mllp.stopping", extra=fields(active=listener.active_connections))
    finally:
        metrics.unregister_readiness("mllp")
        await listener.stop()


async def serve_until_signal(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM, then drain and return 0 (the ``listen`` role)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)
    return 0


def check_settings(settings: Settings) -> None:
    """Fail fast (ConfigError, exit code 2) before the role starts anything."""
    if not settings.redis.url:
        raise ConfigError(
            "redis.url", "listen needs --redis-url (mwl-bridge run starts an embedded Redis)"
        )
    tls_context(settings)  # unreadable TLS files
    check_charsets(settings.mllp)  # a default charset the table does not know
