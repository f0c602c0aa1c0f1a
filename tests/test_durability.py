"""An ACKed order survives redis-server being SIGKILLed mid-stream.

A sender streams orders to the real listener and resends on AR, timeout or connection
error, as real senders do. Mid-stream ``redis-server`` (``appendonly yes``,
``appendfsync always``) gets SIGKILL — no shutdown, no final flush — and is started
again on the same port and data directory, so it replays its append-only file. Then
real workers drain the line. Every control id the sender saw AA for must be in the
worklist exactly once: that tests the write before the ACK (an ACK sent before EXEC
returned would be lost with the server) and the AOF replay (a server that kept it in
memory only would come back empty); the messages answered AR during the outage were
resent and applied once (the dedupe key and the one MULTI/EXEC make a resend of a
write whose reply was lost an AA, not a second order).

What this cannot show: a missing fsync. A process kill leaves the kernel's page cache
intact, so whatever Redis wrote survives it even without fsync; only a power loss or a
kernel crash loses unsynced pages. That window is documented (docs/listener.md,
"Durability") and checked at start (bridge/store/redis_checks.py), not tested here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from mllp_harness import ListenerThread, listener_settings
from orm_builder import orm
from redis_server import RedisServer

from bridge.core.settings import load_settings
from bridge.intake import deadletter
from bridge.mllp.client import MllpConnection, control_id, parse_ack
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_worker as workers

N_ORDERS = 60
KILL_AFTER = 20  # AA'd orders before the SIGKILL
SEND_DEADLINE_S = 60.0


class ResendingSender(threading.Thread):
    """Sends each message until it gets AA: on AR/AE, a timeout or a broken connection it
    reconnects if needed and resends the same bytes (same MSH-10), like an interface
    engine. Records every answer per control id."""

    def __init__(self, port: int, messages: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.messages = messages
        self.answers: dict[str, list[str]] = {control_id(m): [] for m in messages}
        self.accepted: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._send_all()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _send_all(self) -> None:
        deadline = time.monotonic() + SEND_DEADLINE_S
        conn: MllpConnection | None = None
        for message in self.messages:
            cid = control_id(message)
            while True:
                assert time.monotonic() < deadline, f"{cid} never got AA"
                try:
                    if conn is None:
                        conn = MllpConnection("127.0.0.1", self.port, timeout_s=5.0)
                    ack = parse_ack(conn.exchange(message))
                except (OSError, ConnectionError, TimeoutError) as exc:
                    self.answers[cid].append(type(exc).__name__)
                    if conn is not None:
                        conn.sock.close()
                        conn = None
                    time.sleep(0.05)
                    continue
                assert ack.control_id == cid
                self.answers[cid].append(ack.code)
                if ack.code == "AA":
                    self.accepted.append(cid)
                    break
                time.sleep(0.05)  # "please resend later"
        if conn is not None:
            conn.sock.close()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer(appendfsync="always")  # private: this test kills it
    s.start()
    yield s
    s.cleanup()


@pytest.mark.slow
def test_acked_orders_survive_sigkill_of_redis_mid_stream(server: RedisServer) -> None:
    messages = [
        orm(control_id=f"DUR{n:03d}", placer=f"DUR{n:03d}", filler="").encode()
        for n in range(N_ORDERS)
    ]
    lt = ListenerThread(listener_settings(server.url))
    sender = ResendingSender(lt.port, messages)
    try:
        sender.start()
        deadline = time.monotonic() + 30
        while len(sender.accepted) < KILL_AFTER:
            assert sender.is_alive() and time.monotonic() < deadline, sender.error
            time.sleep(0.001)
        server.kill()  # SIGKILL mid-stream: no shutdown, no final AOF flush
        killed_at = len(sender.accepted)
        time.sleep(0.5)  # the sender meanwhile gets AR 207 and keeps resending
        server.start()  # same port, same data dir: replays appendonly.aof
        sender.join(SEND_DEADLINE_S)
        assert not sender.is_alive() and sender.error is None, sender.error
    finally:
        lt.stop()
    assert killed_at < N_ORDERS  # the kill really was mid-stream

    # Every message eventually got AA (the sender resends until it does).
    assert sorted(sender.accepted) == sorted(control_id(m) for m in messages)

    # Drain with real workers, then: each AA'd order once, nothing else, nothing twice.
    client = redis.Redis.from_url(server.url)
    try:
        settings = load_settings(
            {"redis.url": server.url, "worker.local_timezone": "UTC"}, env={}
        )
        keys = Keys(settings.redis.key_prefix)
        ctx = workers.install(settings, client)
        workers.make_worker(ctx).work(burst=True, logging_level="WARNING")
        assert client.llen(keys.ingest_order) == 0
        assert deadletter.count(client, keys) == 0
        store = WorklistStore(client, keys)
        ids = sorted(m.decode() for m in client.zrange(keys.index_start, 0, -1))
        placers = Counter(
            it.attrs["PlacerOrderNumberImagingServiceRequest"] for it in store.load(ids)
        )
        assert placers == Counter(sender.accepted)  # every AA'd order exactly once
        # ... and queued once: one applied message hash per control id, resends included.
        queued = Counter(
            client.hget(name, "control_id").decode()  # type: ignore[union-attr]
            for name in client.scan_iter(match=keys.message("*"))
        )
        assert queued == Counter(sender.accepted)
    finally:
        client.close()
    # The outage was hit: some messages got AR (or no answer) first, were resent, and
    # are in the worklist once like the rest (checked above).
    rejected_first = {cid for cid, codes in sender.answers.items() if codes[0] != "AA"}
    assert rejected_first, "no message was sent during the outage"
    assert all(sender.answers[cid][-1] == "AA" for cid in rejected_first)
