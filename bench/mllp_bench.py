"""MLLP listener benchmark (not a test): throughput and ACK latency against a baseline.

Both servers run in this process on one event loop thread, against a private
redis-server with ``appendonly yes`` + ``appendfsync always`` on loopback. The client is
one separate process per connection; each sends a ~1 KB ORM^O01 (unique MSH-10 each
time), waits for the ACK frame, checks MSA-2, and records the round trip.

* ``baseline``: a bare asyncio server (``readuntil(FS CR)``) doing the *same single
  durable Redis write per message* — :func:`bridge.intake.submit` in the loop's thread
  pool, with metadata fixed up front — and answering a fixed, pre-built ACK.
* ``listener``: :class:`bridge.listener.Listener` (framing, MSH read, gate, decode
  check, the same write, the ACK built per message, per-message logging call).

Usage: ``python bench/mllp_bench.py [--seconds 5] [--rounds 2] [--connections 1 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from bridge.core.settings import Settings, load_settings  # noqa: E402
from bridge.intake.submit import IntakeRecord, submit  # noqa: E402
from bridge.mllp.listener import Listener  # noqa: E402
from bridge.store.connections import sync_client  # noqa: E402
from bridge.store.keys import Keys  # noqa: E402

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
SAMPLE = ROOT / "tests" / "samples" / "mllp_orm_v251_utf8.hl7"


def bench_message() -> bytes:
    """The v2.5.1 UTF-8 sample padded with NTE segments to about 1 KB, CR-separated;
    ``{CID}`` marks MSH-10."""
    text = SAMPLE.read_bytes().replace(b"\n", b"\r").replace(b"|MSG00002|", b"|{CID}|")
    n = 2
    while len(text) < 1000:
        text += f"NTE|{n}||Synthetic comment line for benchmark padding {n}\r".encode()
        n += 1
    return text


# -- client process ---------------------------------------------------------------------------


def client_main(
    port: int, conn_no: int, start_at: float, seconds: float, warmup: float, check_echo: bool
) -> None:
    template = bench_message()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while time.time() < start_at:
        time.sleep(0.001)
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + seconds
    lat: list[float] = []
    buf = b""
    i = 0
    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        cid = f"B{conn_no}-{os.getpid()}-{i}".encode()
        i += 1
        t0 = time.perf_counter()
        sock.sendall(VT + template.replace(b"{CID}", cid) + FS + CR)
        while True:
            end = buf.find(FS + CR)
            if end >= 0:
                ack, buf = buf[: end + 2], buf[end + 2 :]
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("listener closed the connection")
            buf += chunk
        t1 = time.perf_counter()
        if check_echo and b"|" + cid + b"|" not in ack and b"|" + cid + b"\r" not in ack:
            raise SystemExit(f"ACK does not echo {cid!r}: {ack!r}")
        if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
            raise SystemExit(f"not accepted: {ack!r}")
        if t0 >= t_measure:
            lat.append(t1 - t0)
    sock.close()
    print(json.dumps({"count": len(lat), "seconds": seconds, "lat": lat}))


def run_clients(
    port: int, connections: int, seconds: float, warmup: float, check_echo: bool
) -> dict[str, Any]:
    start_at = time.time() + 0.5
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                str(port),
                str(n),
                repr(start_at),
                repr(seconds),
                repr(warmup),
                str(int(check_echo)),
            ],
            stdout=subprocess.PIPE,
        )
        for n in range(connections)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + warmup + 60)
        if p.returncode != 0:
            raise SystemExit(f"client failed with {p.returncode}")
        results.append(json.loads(out))
    lat = sorted(x for r in results for x in r["lat"])
    total = sum(r["count"] for r in results)
    return {
        "msgs_per_s": total / seconds,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "count": total,
    }


# -- baseline server ------------------------------------------------------------------------------


class Baseline:
    """Bare asyncio loop: same durable write per message, fixed ACK."""

    ACK = (
        VT
        + b"MSH|^~\\&|MWL|HOSP|RIS|RAD|20260101000000||ACK^O01^ACK|1|P|2.5.1\rMSA|AA|X\r"
        + FS
        + CR
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = sync_client(settings.redis)
        self.keys = Keys(settings.redis.key_prefix)
        self.n = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.readuntil(FS + CR)
                self.n += 1
                record = IntakeRecord(
                    raw=data[1:-2], received_at=time.time(), peer="bench", sending_app="RIS",
                    sending_facility="RAD", receiving_app="MWL", receiving_facility="HOSP",
                    control_id=str(self.n), message_type="ORM^O01", version="2.5.1",
                )  # fmt: skip
                await loop.run_in_executor(
                    None,
                    lambda r=record: submit(
                        self.client, self.keys, r, dedupe_ttl_s=86400, max_retries=5
                    ),
                )
                writer.write(self.ACK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.client.close()


# -- driver ---------------------------------------------------------------------------------------


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def measure(kind: str, settings: Settings, conns: int, seconds: float, warmup: float) -> dict:
    lt = LoopThread()
    server: Any = Baseline(settings) if kind == "baseline" else Listener(settings)
    lt.call(server.start())
    try:
        return run_clients(server.port, conns, seconds, warmup, kind != "baseline")
    finally:
        lt.call(server.stop())
        lt.close()


def fresh_aof(r: redis.Redis) -> None:
    """Empty Redis and compact its AOF before a run, so no automatic AOF rewrite (which
    starts once the file passes 64 MB) lands inside a measured run of either server."""
    r.flushall()
    r.bgrewriteaof()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.05)
    raise SystemExit("AOF rewrite did not finish")


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"nproc={os.cpu_count()}, CPU {cpu}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    ap.add_argument(
        "--appendfsync", default="always", help="diagnostics only; the target is for always"
    )
    ap.add_argument("--log-info", action="store_true", help="listener logs INFO to /dev/null")
    ap.add_argument("--client", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        port, n, start_at, seconds, warmup, echo = args.client
        client_main(int(port), int(n), float(start_at), float(seconds), float(warmup), echo == "1")
        return
    if args.log_info:
        handler = logging.FileHandler(os.devnull)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)

    server = RedisServer(appendfsync=args.appendfsync)
    server.start()
    try:
        settings = load_settings(
            {"redis.url": server.url, "mllp.host": "127.0.0.1", "mllp.port": 0}, env={}
        )
        r = redis.Redis.from_url(server.url)
        print(f"machine: {machine()}; redis-server appendonly=yes appendfsync={args.appendfsync}")
        print(
            f"message: {len(bench_message())} bytes; {args.seconds}s per run; rounds {args.rounds}"
        )
        results: dict[tuple[str, int], list[dict]] = {}
        for _round in range(args.rounds):
            for conns in args.connections:
                # alternate who goes first, so a drift in conditions does not favour one
                order = ("baseline", "listener") if _round % 2 == 0 else ("listener", "baseline")
                for kind in order:
                    fresh_aof(r)
                    load = os.getloadavg()[0]
                    res = measure(kind, settings, conns, args.seconds, args.warmup)
                    results.setdefault((kind, conns), []).append(res)
                    print(
                        f"  {kind:8} conns={conns} {res['msgs_per_s']:8.0f} msg/s "
                        f"p50 {res['p50_ms']:.3f} ms p99 {res['p99_ms']:.3f} ms "
                        f"(load before run {load:.2f})",
                        flush=True,
                    )
        print()
        print("| connections | listener msg/s | baseline msg/s | ratio (median of rounds) "
              "| listener p50 / p99 ms | baseline p50 / p99 ms |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for conns in args.connections:

            def med(kind: str, key: str, c: int = conns) -> float:
                return statistics.median(x[key] for x in results[(kind, c)])

            # Median of the per-round ratios: a baseline and a listener run back to back
            # share the machine's conditions (other load, disk fsync latency).
            ratio = statistics.median(
                lis["msgs_per_s"] / base["msgs_per_s"]
                for lis, base in zip(
                    results[("listener", conns)], results[("baseline", conns)], strict=True
                )
            )
            print(
                f"| {conns} | {med('listener', 'msgs_per_s'):.0f} | "
                f"{med('baseline', 'msgs_per_s'):.0f} | {ratio:.2f} | "
                f"{med('listener', 'p50_ms'):.3f} / {med('listener', 'p99_ms'):.3f} | "
                f"{med('baseline', 'p50_ms'):.3f} / {med('baseline', 'p99_ms'):.3f} |"
            )
        r.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
