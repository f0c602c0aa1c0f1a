"""A RIS for the outbound tests: python-hl7's asyncio MLLP server in a background thread.

It keeps every message it receives (raw bytes, MSH-10, ORC-2 placer number, ORC-5
status, when), applies each MSH-10 once as a RIS does (a resend of a control id it has
seen is answered again, not applied again) and answers each try of a control id as its
script says, by default AA:

* ``AA``, ``AE`` (with ERR 204 at ORC-2, v2.5 layout), ``AR``: an ACK with that MSA-1;
* ``ORR`` / ``ORG``: AA inside an ORR^O02 / ORG^O20 (MSA between MSH and the order
  segments);
* ``mismatch``: AA whose MSA-2 is another control id;
* ``silent``: no reply, the connection stays open until the sender gives up;
* ``drop``: apply it, then close the connection before any reply (the ACK is lost).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass

import hl7
from hl7.mllp import start_hl7_server


@dataclass(frozen=True)
class Received:
    raw: bytes
    control_id: str
    placer: str
    status: str
    at: float  # time.monotonic()


class FakeRis:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.applied: list[str] = []
        self.script: dict[str, list[str]] = {}
        #: How to answer the tries of a control id with no script of its own.
        self.default: list[str] = []
        self.tries: Counter[str] = Counter()
        self.connections = 0
        self.server = asyncio.run_coroutine_threadsafe(self._start(tls), self.loop).result(10)
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _start(self, tls: ssl.SSLContext | None) -> asyncio.Server:
        return await start_hl7_server(
            self._client, "127.0.0.1", 0, encoding="latin-1", ssl=tls
        )

    def control_ids(self) -> list[str]:
        with self._lock:
            return [r.control_id for r in self.received]

    def statuses(self, placer: str) -> list[str]:
        with self._lock:
            return [r.status for r in self.received if r.placer == placer]

    def times(self, control_id: str) -> list[float]:
        with self._lock:
            return [r.at for r in self.received if r.control_id == control_id]

    def answer(self, control_id: str, *replies: str) -> None:
        """How to answer the tries of ``control_id``, in turn (then AA)."""
        self.script[control_id] = list(replies)

    async def _client(self, reader, writer) -> None:  # hl7.mllp stream types
        self.connections += 1
        try:
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    return
                if not block:
                    return
                msg = hl7.parse(block.decode("latin-1"))
                ctl = str(msg["MSH.F10"])
                with self._lock:
                    self.received.append(Received(
                        block, ctl, str(msg["ORC.F2.R1.C1"]), str(msg["ORC.F5"]),
                        time.monotonic(),
                    ))  # fmt: skip
                    try_no = self.tries[ctl]
                    self.tries[ctl] += 1
                    plan = self.script.get(ctl, self.default)
                    reply = plan[try_no] if try_no < len(plan) else "AA"
                    if reply in ("AA", "ORR", "ORG", "drop") and ctl not in self.applied:
                        self.applied.append(ctl)  # a RIS applies each MSH-10 once
                if reply == "drop":
                    return
                if reply == "silent":
                    await reader.read()  # until the sender closes
                    return
                writer.writeblock(self._reply(msg, ctl, reply))
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    def _reply(msg: hl7.Message, ctl: str, reply: str) -> bytes:
        if reply in ("ORR", "ORG"):
            kind = "ORR^O02^ORR_O02" if reply == "ORR" else "ORG^O20^ORG_O20"
            segs = [
                f"MSH|^~\\&|RIS|HOSP|MWL_BRIDGE|RAD|20260705101501||{kind}|R{ctl}|P|2.5.1",
                f"MSA|AA|{ctl}",
                "PID|1||PAT001^^^HOSP^MR",
                f"ORC|OK|{msg['ORC.F2']}|{msg['ORC.F3']}",
            ]
            return "\r".join(segs).encode()
        code = "AA" if reply == "mismatch" else reply
        ack = str(msg.create_ack(code)).rstrip("\r")
        if reply == "mismatch":
            ack = ack.replace(f"MSA|AA|{ctl}", "MSA|AA|SOMEONE-ELSE")
        if reply == "AE":
            ack += "\rERR||ORC^1^2|204^Unknown key identifier^HL70357|E"
        return ack.encode()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
