"""Worker throughput: orders/s into the worklist store for 1 and 2 worker processes,
beside the bare hl7apy parse rate of the same messages measured in the same run.

    python bench/worker_bench.py [--messages 600] [--rounds 3] [--worker-class fork|simple]

Starts its own redis-server (AOF, appendfsync always) on a free loopback port, submits
the messages exactly as the listener does (tests/intake_helpers.submit), starts real
``mwl-bridge worker --burst`` processes and times the steady state, from 10 % of the
orders applied to 90 % (process start-up, hl7apy model loading and the tail excluded,
as for the bare parse rate, which is measured after a warm-up parse). With
``--rounds N`` the bare parse, 1-worker and 2-worker measurements are interleaved N
times (the machine's load drifts), each round printed with the 1-minute load average,
the CPU time the workers (start-up included) and redis-server spent per order and how
busy the machine's CPUs were; the summary uses the per-round ratios' medians.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from intake_helpers import submit  # noqa: E402
from orm_builder import orm  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from bridge.core.settings import load_settings  # noqa: E402
from bridge.hl7 import hl7apy_compat as hl7apy_speedups  # noqa: E402
from bridge.hl7.parse import _hl7apy_parse, normalise, warm_up  # noqa: E402
from bridge.store.keys import Keys  # noqa: E402


def messages(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        text = orm(placer=f"B{i}", filler=f"F{i}", control_id=f"C{i}", charset="UNICODE UTF-8",
                   version="2.5.1", nte=["Patient anxious \\T\\ claustrophobic"],
                   patient_name=f"MÜLLER{i}^JÖRG^^^DR")  # fmt: skip
        out.append(text.encode("utf-8"))
    return out


def bare_parse_rate(raws: list[bytes], speedups: bool = False) -> float:
    """hl7apy alone on the same texts: as shipped (the issue's baseline), or with
    bridge.hl7.hl7apy_compat installed as the worker has it."""
    if speedups:
        hl7apy_speedups.install()
    else:
        hl7apy_speedups.uninstall()
    warm_up()
    # As the worker does after its warm-up (bridge.workers.command): same GC conditions.
    gc.collect()
    gc.freeze()
    texts = [normalise(r.decode("utf-8")) for r in raws]
    t0 = time.perf_counter()
    for t in texts:
        _hl7apy_parse(t)
    return len(texts) / (time.perf_counter() - t0)


def rq_noop_rate(url: str, n: int) -> float:
    """rq's own cost: no-op jobs/s through one in-process SimpleWorker (same Redis)."""
    from rq import Queue, SimpleWorker

    client = redis.Redis.from_url(url)
    client.flushall()
    queue = Queue("noop", connection=client)
    for i in range(n):
        queue.enqueue_call("os.getpid", job_id=f"noop-{i}")
    worker = SimpleWorker([queue], connection=client)
    t0 = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    return n / (time.perf_counter() - t0)


def sequencer_rate(url: str, raws: list[bytes]) -> float:
    """Our path without rq: parse + map + in-order apply, called in-process."""
    from bridge.worker import rq_worker as workers

    client = redis.Redis.from_url(url)
    client.flushall()
    settings = load_settings({"redis.url": url}, env={})
    for raw in raws:
        submit(client, settings, raw)
    ids = [m.decode() for m in client.lrange(Keys().ingest_order, 0, -1)]
    ctx = workers.install(settings, client)
    t0 = time.perf_counter()
    for mid in ids:
        ctx.sequencer.process(mid)
    rate = len(ids) / (time.perf_counter() - t0)
    assert client.zcard(Keys().index_start) == len(ids)
    return rate


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (iowait counted as idle)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


#: worker.batch_size for the worker processes (0: the default).
BATCH_SIZE = 0


def run_workers(
    url: str, raws: list[bytes], n_workers: int, worker_class: str, redis_pid: int = 0
) -> tuple[float, float, float, float]:
    """(orders/s, worker CPU ms per order, redis-server CPU ms per order, share of the
    machine's CPUs busy while the orders were applied)."""
    client = redis.Redis.from_url(url)
    client.flushall()
    settings = load_settings({"redis.url": url}, env={})
    for raw in raws:
        submit(client, settings, raw)
    keys = Keys()
    total = len(raws)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_BRIDGE_")}
    env.update(PYTHONPATH=str(ROOT), MWL_BRIDGE_WORKER_WORKER_CLASS=worker_class)
    if BATCH_SIZE:
        env["MWL_BRIDGE_WORKER_BATCH_SIZE"] = str(BATCH_SIZE)
    cpu0 = _children_cpu_s()
    redis0 = _proc_cpu_s(redis_pid) if redis_pid else 0.0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge",
                "worker",
                "--burst",
                "--redis-url",
                url,
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
        )
        for _ in range(n_workers)
    ]
    t_first: float | None = None
    t_last: float | None = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            left = client.llen(keys.ingest_order)
            now = time.perf_counter()
            # Steady state only: from 10 % applied to 90 % applied, so neither the
            # workers' start-up (imports, model warm-up; two workers never start at
            # exactly the same instant) nor the tail counts.
            if t_first is None and left <= total * 0.9:
                t_first, first_left = now, left
                busy0 = _machine_busy()
            if t_last is None and left <= total * 0.1:
                t_last, last_left = now, left
                busy1 = _machine_busy()
            if left == 0:
                break
            time.sleep(0.02)  # light polling: the box has 2 cores for all of this
    finally:
        redis1 = _proc_cpu_s(redis_pid) if redis_pid else 0.0
        for p in procs:
            p.wait(timeout=60)
    worker_cpu = (_children_cpu_s() - cpu0) * 1000 / total  # includes start-up
    redis_cpu = (redis1 - redis0) * 1000 / total
    assert t_first is not None and t_last is not None, "workers did not finish"
    items = client.zcard(keys.index_start)
    assert items == total, f"{items} items for {total} orders"
    # Rate over the messages applied after the first one was seen applied.
    rate = (first_left - last_left) / (t_last - t_first) if t_last > t_first else float("nan")
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return rate, worker_cpu, redis_cpu, busy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    ap.add_argument("--worker-class", default="simple", choices=["fork", "simple"])
    ap.add_argument(
        "--appendfsync", default="always", choices=["always", "everysec"],
        help="Redis AOF fsync policy (production: always; everysec isolates disk contention)",
    )  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=0, help="worker.batch_size (0: default)")
    args = ap.parse_args()
    global BATCH_SIZE
    BATCH_SIZE = args.batch_size
    raws = messages(args.messages)
    server = RedisServer(appendfsync=args.appendfsync)
    server.start()
    size = sum(len(r) for r in raws) // len(raws)
    print(
        f"messages: {len(raws)} ORM^O01 v2.5.1, {size} bytes each; "
        f"worker class {args.worker_class}; appendfsync {args.appendfsync}; "
        f"batch size {args.batch_size or 'default'}; "
        f"nproc {os.cpu_count()}"
    )
    ratios1: list[float] = []
    ratios2: list[float] = []
    ratios_fast: list[float] = []
    try:
        pid = server.proc.pid if server.proc else 0
        noop = rq_noop_rate(server.url, len(raws))
        inproc = sequencer_rate(server.url, raws)
        bare0 = bare_parse_rate(raws)
        print(f"rq no-op jobs (stock SimpleWorker): {noop:8.1f} jobs/s")
        share = f"({inproc / bare0:.0%} of bare parse {bare0:.1f}/s)"
        print(f"parse+map+apply, no rq (1 proc):    {inproc:8.1f} orders/s  {share}")
        for rnd in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            bare = bare_parse_rate(raws)
            one, cpu1, rcpu1, busy1 = run_workers(server.url, raws, 1, args.worker_class, pid)
            two, cpu2, rcpu2, busy2 = run_workers(server.url, raws, 2, args.worker_class, pid)
            bare_after = bare_parse_rate(raws)
            fast = bare_parse_rate(raws, speedups=True)
            base = (bare + bare_after) / 2  # the baseline drifts with the load too
            ratios1.append(one / base)
            ratios2.append(two / one)
            ratios_fast.append(one / fast)
            print(
                f"round {rnd} (load {load:.2f}→{os.getloadavg()[0]:.2f}): "
                f"bare parse {bare:.1f}/{bare_after:.1f} msg/s "
                f"(with the worker's hl7apy speed-ups {fast:.1f} msg/s); "
                f"1 worker {one:.1f} orders/s ({one / base:.0%} of bare, "
                f"{one / fast:.0%} of bare with speed-ups), "
                f"CPU/order worker {cpu1:.1f} ms redis {rcpu1:.2f} ms, machine {busy1:.0%} busy; "
                f"2 workers {two:.1f} orders/s ({two / one:.2f}x one), "
                f"CPU/order workers {cpu2:.1f} ms redis {rcpu2:.2f} ms, machine {busy2:.0%} busy"
            )
    finally:
        server.cleanup()
    print(
        f"median over {len(ratios1)} round(s): 1 worker {statistics.median(ratios1):.0%} of "
        f"bare parse (target >= 90%; {statistics.median(ratios_fast):.0%} of the parse "
        f"with the worker's hl7apy speed-ups); 2 workers {statistics.median(ratios2):.2f}x "
        f"one (target >= 1.8x)"
    )


if __name__ == "__main__":
    main()
