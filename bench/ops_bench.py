"""Operations figures: /metrics scrape latency vs store size, embedded Redis start, and
`mwl-bridge run` start (to /healthz) and stop (SIGTERM to exit, nothing left).

    python bench/ops_bench.py [--items 50000] [--scrapes 30] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent.parent))

import redis
from bridge_process import Run, gone, wait_for
from redis_server import RedisServer

from bridge.core.settings import RedisSettings
from bridge.ops import redis_metrics
from bridge.store.embedded_redis import EmbeddedRedis
from bridge.store.item import SPS, WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


def scrape_ms(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            r.read()
        out.append(time.perf_counter() - t0)
    return out


def items(n: int):
    statuses = ["SCHEDULED"] * 8 + ["COMPLETED", "CANCELED"]
    for i in range(n):
        yield WorklistItem(
            item_id=f"b{i}",
            order_key=f"o{i}",
            attrs={
                "PatientID": f"P{i % 5000}",
                "AccessionNumber": f"A{i}",
                SPS: [
                    {
                        "ScheduledStationAETitle": f"CT{i % 20}",
                        "ScheduledProcedureStepStartDate": f"202607{1 + i % 28:02d}",
                        "ScheduledProcedureStepStartTime": "101500",
                        "Modality": "CT",
                        "ScheduledProcedureStepID": f"S{i}",
                        "ScheduledProcedureStepStatus": statuses[i % 10],
                    }
                ],
            },
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--scrapes", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()

    server = RedisServer(binary="/usr/bin/redis-server")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        keys = Keys("mwl")
        srv = redis_metrics.serve("127.0.0.1", 0, client, keys)
        empty = scrape_ms(srv.port, a.scrapes)
        store = WorklistStore(client, keys)
        batch: list[WorklistItem] = []
        for it in items(a.items):
            batch.append(it)
            if len(batch) == 500:
                store.apply(upserts=batch)
                batch = []
        store.apply(upserts=batch)
        full = scrape_ms(srv.port, a.scrapes)
        print(f"dbsize {client.dbsize()} keys")
        print(f"/metrics scrape, empty store: {ms(empty)}")
        print(f"/metrics scrape, {a.items} items: {ms(full)}")
        srv.close()
    finally:
        server.cleanup()

    starts = []
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as d:
            e = EmbeddedRedis(RedisSettings(data_dir=d))
            t0 = time.perf_counter()
            e.start()
            starts.append(time.perf_counter() - t0)
            e.stop()
    print(f"embedded redis-server start to PING ({e.version()}): {ms(starts)}")

    up, down = [], []
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as d:
            run = Run(Path(d), "--workers", "2")
            t0 = time.perf_counter()
            assert wait_for(lambda: run.get("/healthz") == 200, 60, 0.01)  # noqa: B023
            up.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            assert run.terminate() == 0
            down.append(time.perf_counter() - t1)
            assert all(gone(p) for p in run.pids())
    print(f"mwl-bridge run, exec to /healthz 200: {ms(up)}")
    print(f"mwl-bridge run, SIGTERM to exit (children + redis stopped): {ms(down)}")


if __name__ == "__main__":
    main()
