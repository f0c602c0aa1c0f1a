"""Each library adapter runs its fast path and its stock public-API path with identical
results (stored items, wire bytes, parse trees), an unverified library version switches
to the stock path with one WARNING, and the paths from before the layout by stage (the
rq job name, the health check module) keep working."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from intake_helpers import submit
from mwl_items import make_item
from orm_builder import orm
from pynetdicom import evt
from rq import Queue
from scp_support import StartScp, find, mwl_query
from test_hl7apy_speedups import MESSAGES, parsed

from bridge.core import library_guard
from bridge.core.settings import Settings
from bridge.hl7 import hl7apy_compat
from bridge.scp import pynetdicom_compat
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker import rq_compat
from bridge.worker import rq_worker as workers

# -- the version guard ------------------------------------------------------------------


def test_unverified_version_takes_the_stock_path_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(library_guard, "installed_version", lambda dist: "99.0.0")
    monkeypatch.delenv(library_guard.STOCK_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="bridge.core.library_guard"):
        assert library_guard.fast_path_allowed("rq", rq_compat.VERIFIED_VERSIONS) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].getMessage() == "library.unverified_version"
    assert warnings[0].fields["installed"] == "99.0.0"  # type: ignore[attr-defined]


def test_verified_version_takes_the_fast_path_unless_forced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(library_guard.STOCK_ENV, raising=False)
    for adapter, dist in ((rq_compat, "rq"), (pynetdicom_compat, "pynetdicom"),
                          (hl7apy_compat, "hl7apy")):  # fmt: skip
        installed = library_guard.installed_version(dist)
        assert installed in adapter.VERIFIED_VERSIONS, (dist, installed)
        assert library_guard.fast_path_allowed(dist, adapter.VERIFIED_VERSIONS)
    monkeypatch.setenv(library_guard.STOCK_ENV, "1")
    with caplog.at_level(logging.WARNING):
        assert not library_guard.fast_path_allowed("rq", rq_compat.VERIFIED_VERSIONS)
    assert not caplog.records  # forced on purpose: no warning


def test_the_adapters_decide_at_import(tmp_path: Any) -> None:
    """A fresh interpreter with the stock path forced: every adapter says so."""
    code = (
        "from bridge.hl7 import hl7apy_compat as h; from bridge.worker import rq_compat as r;"
        "from bridge.scp import pynetdicom_compat as p; print(h.FAST, r.FAST, p.FAST)"
    )
    env = {**os.environ, library_guard.STOCK_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, check=True)  # fmt: skip
    assert out.stdout.split() == ["False", "False", "False"]


# -- rq ---------------------------------------------------------------------------------


def _feed(client: redis.Redis, settings: Settings) -> list[str]:
    msgs = []
    for i in range(6):
        msgs.append(orm(placer=f"P{i}", filler=f"F{i}", obrs=[{}, {}] if i % 2 else None))
    msgs.append(orm(control="XO", status="SC", placer="P1", filler="F1", modality="MR"))
    msgs.append(orm(control="CA", status="CA", placer="P2", filler="F2"))
    msgs.append(orm(control="SC", status="IP", placer="P3", filler="F3"))
    return [submit(client, settings, m.encode()) for m in msgs]


def _stored(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Every item as stored, but for the wall-clock time; ``seq`` becomes its rank
    (ingest sequence numbers have gaps where a run was cut short, so only their order
    is part of the contract)."""
    store = WorklistStore(client, keys)
    ids = sorted(m.decode() for m in client.zrange(keys.index_start, 0, -1))
    out = {}
    for item in store.load(ids):
        doc = json.loads(item.to_json())
        doc.pop("updated_at")
        doc["extra"].pop("created_at")  # wall-clock time too
        out[item.item_id] = doc
    ranks = {s: n for n, s in enumerate(sorted({d["seq"] for d in out.values()}))}
    for doc in out.values():
        doc["seq"] = ranks[doc["seq"]]
    return out


def _run_worker(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    _feed(client, settings)
    ctx = workers.install(settings, client)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    try:
        assert workers.work(ctx, burst=True) == 0
    finally:
        gc.unfreeze()  # work() freezes the worker's long-lived objects
    assert client.llen(ctx.keys.ingest_order) == 0
    return _stored(client, ctx.keys)


def test_rq_fast_and_stock_paths_store_the_same_items(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rq_compat.FAST
    fast = _run_worker(redis_client, settings)
    redis_client.flushall()
    monkeypatch.setattr(rq_compat, "FAST", False)
    ctx = workers.install(settings, redis_client)
    assert ctx.sequencer.rq_keys is None  # no batch claims: rq's key layout unused
    worker = workers.make_worker(ctx)
    assert type(worker).__module__.startswith("rq.")  # rq's own class, as shipped
    assert not rq_compat.maintained_by_rq(worker)
    stock = _run_worker(redis_client, settings)
    assert len(fast) == 9  # 3 orders of one procedure, 3 of two
    assert stock == fast


def test_stock_path_runs_the_maintenance_step_in_a_thread() -> None:
    calls: list[float] = []
    thread = rq_compat.MaintenanceThread(lambda: calls.append(1.0), 0.05).start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        thread.stop()
    settled = len(calls)
    time.sleep(0.15)
    assert len(calls) == settled  # stopped means stopped


def test_jobs_queued_under_the_old_path_still_run(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """A job an older release queued names ``bridge.jobs.process_message``."""
    mid = submit(redis_client, settings, orm(placer="OLD1", filler="OLDF1").encode())
    keys = Keys(settings.redis.key_prefix)
    queue = Queue(keys.queue_name(), connection=redis_client)
    queue.empty()  # replace the new-style job by the one an older release queued
    queue.enqueue_call("bridge.jobs.process_message", args=(mid,), job_id=f"msg-{mid}")
    ctx = workers.install(settings, redis_client)
    workers.make_worker(ctx).work(burst=True, logging_level="WARNING")
    assert redis_client.llen(keys.ingest_order) == 0
    [item] = _stored(redis_client, keys).values()
    assert item["attrs"]["PlacerOrderNumberImagingServiceRequest"] == "OLD1"


# -- pynetdicom -------------------------------------------------------------------------


def _pdus(start_scp: StartScp) -> tuple[list[bytes], list[int], list[Any]]:
    scp = start_scp()
    sent: list[bytes] = []

    def pdu_sent(event: Any) -> None:
        if event.data[:1] == b"\x04":  # P-DATA-TF
            sent.append(bytes(event.data))

    scp._server.bind(evt.EVT_DATA_SENT, pdu_sent)
    result = find(scp.port, mwl_query(Modality="CT"))
    return sent, result.statuses, [ds.PatientName for ds in result.identifiers]


def test_pynetdicom_fast_and_stock_paths_send_the_same_bytes(
    store: WorklistStore, start_scp: StartScp, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.apply([make_item(n) for n in range(1, 8)])
    installed: list[Any] = []
    real_install = pynetdicom_compat.install
    monkeypatch.setattr(pynetdicom_compat, "install", lambda a: installed.append(real_install(a)))
    fast = _pdus(start_scp)
    assert installed  # the fast Pending path was used
    installed.clear()
    monkeypatch.setattr(pynetdicom_compat, "FAST", False)
    stock = _pdus(start_scp)
    assert not installed
    assert stock == fast
    assert fast[1] == [0xFF00] * 7 + [0x0000]


# -- hl7apy -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", MESSAGES, ids=range(len(MESSAGES)))
def test_hl7apy_stock_path_parses_the_same_trees(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    was = hl7apy_compat.installed()
    hl7apy_compat.uninstall()
    try:
        stock = parsed(text)
        monkeypatch.setattr(hl7apy_compat, "FAST", False)
        hl7apy_compat.install()
        assert not hl7apy_compat.installed()  # the stock path leaves hl7apy alone
        assert parsed(text) == stock
        monkeypatch.setattr(hl7apy_compat, "FAST", True)
        hl7apy_compat.install()
        assert hl7apy_compat.installed()
        assert parsed(text) == stock
    finally:
        hl7apy_compat.uninstall()
        if was:
            hl7apy_compat.install()


# -- the health check's old module path -------------------------------------------------


def test_old_healthcheck_module_path_still_works(tmp_path: Any) -> None:
    from bridge.core import metrics

    srv = metrics.MetricsServer("127.0.0.1", 0, metrics.REGISTRY).start()
    try:
        env = {**os.environ, "MWL_BRIDGE_OBS_METRICS_PORT": str(srv.port)}
        for module in ("bridge.healthcheck", "bridge.ops.healthcheck"):
            done = subprocess.run([sys.executable, "-m", module], env=env, cwd=tmp_path,
                                  timeout=30, check=False)  # fmt: skip
            assert done.returncode == 0, module
    finally:
        srv.close()
    done = subprocess.run([sys.executable, "-m", "bridge.healthcheck"], env=env, cwd=tmp_path,
                          timeout=30, check=False)  # fmt: skip
    assert done.returncode == 1  # nothing answers any more
