"""Admin commands for the people on call: worklist, dead letters, status.

Tables for humans, ``--json`` for scripts. Every command talks to Redis only (never to
the listener or the SCP), so it works while the service runs or is stopped. Without
``--redis-url`` the commands use the embedded Redis of ``mwl-bridge run`` if one is
running on ``redis.data_dir``.

The output is for an operator's terminal, not for logs: ``worklist list`` shows patient
ids and accession numbers and ``deadletter show`` the raw message, because that is what
the person on call needs to find an order. Nothing here logs patient data.

``worklist delete`` and ``purge`` write under the workers' apply lock
(:mod:`bridge.ops.worklist_edit`); ``deadletter replay`` queues through the listener's
own header gate and intake write (:mod:`bridge.intake.submit`), or, for an outbound
message (stage ``outbound``), back onto its order's line to the RIS
(:mod:`bridge.outbound.deadletters`).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from bridge.core.errors import ConfigError, PermanentError, StoreUnavailable
from bridge.core.settings import Settings, mask_url
from bridge.hl7.msh import MshError, read_msh
from bridge.intake import deadletter
from bridge.intake.submit import IntakeRecord, submit
from bridge.mllp.gate import check_decodable, check_header
from bridge.ops import worklist_edit
from bridge.outbound import deadletters as outbound_letters
from bridge.outbound import report as outbound_report
from bridge.store import embedded_redis
from bridge.store.connections import sync_client
from bridge.store.item import WorklistItem, to_dataset
from bridge.store.keys import Keys
from bridge.store.worklist_store import CandidateQuery, FenceLost, WorklistStore, status_counts
from bridge.worker import hygiene

EXIT_NOT_FOUND = 1
EXIT_UNAVAILABLE = 1
EXIT_REFUSED = 1


# -- plumbing ---------------------------------------------------------------------------
def redis_url(settings: Settings) -> str:
    """The configured URL, else the running embedded server's; ConfigError if neither."""
    if settings.redis.url:
        return settings.redis.url
    url = embedded_redis.running_url(settings.redis)
    if url is None:
        raise ConfigError(
            "redis.url",
            "empty and no embedded Redis is running on "
            f"{embedded_redis.data_dir(settings.redis)} (give --redis-url or start mwl-bridge run)",
        )
    return url


def _open(settings: Settings) -> tuple[redis.Redis, Keys]:
    return sync_client(settings.redis, redis_url(settings)), Keys(settings.redis.key_prefix)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A left-aligned text table; columns are dict keys shown upper-cased."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    heads = [c.upper().replace("_", " ") for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _emit(data: Any, as_json: bool, human: str) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2) if as_json else human)


def _fail(message: str, code: int = EXIT_UNAVAILABLE) -> int:
    print(f"mwl-bridge: {message}", file=sys.stderr)
    return code


def _first(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(str(v) for v in value if isinstance(v, str))
    return "" if value is None else str(value)


# -- worklist ---------------------------------------------------------------------------
def date_range(text: str) -> tuple[int, int]:
    """``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD`` (either side may be open) as inclusive
    bounds on the store's ``YYYYMMDDHHMMSS`` start score."""
    lo, sep, hi = text.partition("-")
    if not sep:
        hi = lo
    for part in (lo, hi):
        if part and (len(part) != 8 or not part.isdigit()):
            raise ConfigError("--date", f"{text!r} is not YYYYMMDD or YYYYMMDD-YYYYMMDD")
    return (int(lo + "000000") if lo else 0, int(hi + "235959") if hi else 99999999999999)


def _query(args: argparse.Namespace) -> CandidateQuery:
    equals: dict[str, tuple[str, ...]] = {}
    for fld, value in (
        ("modality", args.modality),
        ("station", args.station),
        ("status", args.status),
    ):
        if value:
            equals[fld] = (value,)
    lo, hi = date_range(args.date) if args.date else (None, None)
    return CandidateQuery(equals=equals, start_min=lo, start_max=hi)


def _status_note(item: WorklistItem) -> str:
    """Why an item is not what a modality sees: the idle timeout acted on it (hidden,
    discontinued or only flagged), or the RIS holds it (HD)."""
    if item.idle is not None:
        return " (idle)"
    return " (held)" if item.hidden else ""


def item_row(item: WorklistItem) -> dict[str, Any]:
    sps = item.sps
    return {
        "id": item.item_id,
        "date": sps.get("ScheduledProcedureStepStartDate", ""),
        "time": sps.get("ScheduledProcedureStepStartTime", ""),
        "modality": _first(sps.get("Modality")),
        "station": _first(sps.get("ScheduledStationAETitle")),
        "status": item.status + _status_note(item),
        "accession": _first(item.attrs.get("AccessionNumber")),
        "patient_id": _first(item.attrs.get("PatientID")),
        "sps_id": _first(sps.get("ScheduledProcedureStepID")),
    }


def worklist_list(settings: Settings, args: argparse.Namespace) -> int:
    client, keys = _open(settings)
    store = WorklistStore(client, keys)
    try:
        items = sorted(store.find(_query(args)), key=lambda i: (i.start_key, i.item_id))
    except StoreUnavailable as exc:
        return _fail(str(exc))
    if args.json:
        _emit([json.loads(i.to_json()) for i in items], True, "")
        return 0
    rows = [item_row(i) for i in items]
    cols = ("id", "date", "time", "modality", "station", "status", "accession", "patient_id")
    print(table(rows, cols))
    print(f"{len(rows)} item(s)")
    return 0


def worklist_show(settings: Settings, args: argparse.Namespace) -> int:
    client, keys = _open(settings)
    try:
        item = WorklistStore(client, keys).get(args.item_id)
    except StoreUnavailable as exc:
        return _fail(str(exc))
    if item is None:
        return _fail(f"no worklist item {args.item_id}", EXIT_NOT_FOUND)
    if args.json:
        _emit(json.loads(item.to_json()), True, "")
        return 0
    updated = _iso(item.updated_at) if item.updated_at else "-"
    print(f"# item {item.item_id}  order={item.order_key or '-'}  worklist={item.worklist or '-'}")
    print(f"# status={item.status}  held={item.hidden}  seq={item.seq}  updated={updated}")
    if item.idle is not None:
        idle = item.idle
        print(
            f"# idle timeout: {idle.get('action')} at {_iso(float(idle.get('at') or 0))}"
            f" (was {idle.get('status')}{', held' if idle.get('hidden') else ''})"
        )
    ds = to_dataset(item.attrs)
    ds.SpecificCharacterSet = "ISO_IR 192"  # the dump is Unicode; say so in the header
    print(ds)
    return 0


def _locked_delete(
    settings: Settings, args: argparse.Namespace, select: Callable[[WorklistStore], list[str]]
) -> tuple[list[str], worklist_edit.Deleted] | int:
    """Under the workers' apply lock: the ids ``select`` picks, deleted with the order
    states they leave behind (:mod:`bridge.ops.worklist_edit`); an exit code on failure."""
    client, keys = _open(settings)
    store = WorklistStore(client, keys)
    wait_s = float(args.lock_wait)
    try:
        with worklist_edit.apply_lock(
            client, keys, settings.worker.apply_lock_ttl_s, wait_s
        ) as token:
            ids = select(store)
            items = list(store.load(ids))
            return ids, worklist_edit.delete_items(
                store, items, token, settings.worker.final_order_retention_s
            )
    except worklist_edit.LockBusy as exc:
        return _fail(str(exc))
    except FenceLost:
        return _fail(
            "the apply lock expired during the delete and a worker took over; "
            "what was not written is left as it was: run the command again"
        )
    except StoreUnavailable as exc:
        return _fail(str(exc))


def _order_note(deleted: worklist_edit.Deleted) -> str:
    if not deleted.order_states:
        return ""
    return f"\nremoved {deleted.order_states} order state record(s) left without items"


def worklist_delete(settings: Settings, args: argparse.Namespace) -> int:
    """Delete one item, under the workers' apply lock; an order left without items loses
    its state records too (:mod:`bridge.ops.worklist_edit`)."""

    def select(store: WorklistStore) -> list[str]:
        return [args.item_id] if store.get(args.item_id) is not None else []

    result = _locked_delete(settings, args, select)
    if isinstance(result, int):
        return result
    ids, deleted = result
    if not ids:
        return _fail(f"no worklist item {args.item_id}", EXIT_NOT_FOUND)
    print(f"deleted {args.item_id}{_order_note(deleted)}")
    return 0


def worklist_purge(settings: Settings, args: argparse.Namespace) -> int:
    """Delete every item whose SPS start date is before ``--before`` (items without a
    valid date are kept: they need a human, not a sweep), under the workers' apply lock
    like ``delete``; ``--dry-run`` only counts (no lock)."""
    before = args.before
    if len(before) != 8 or not before.isdigit():
        raise ConfigError("--before", f"{before!r} is not a date YYYYMMDD")
    query = CandidateQuery(start_min=10000101000000, start_max=int(before + "000000") - 1)
    orders = 0
    if args.dry_run:
        client, keys = _open(settings)
        try:
            ids = WorklistStore(client, keys).candidate_ids(query)
        except StoreUnavailable as exc:
            return _fail(str(exc))
        deleted = 0
    else:
        result = _locked_delete(settings, args, lambda store: store.candidate_ids(query))
        if isinstance(result, int):
            return result
        ids, done = result
        deleted, orders = done.items, done.order_states
    verb = "would delete" if args.dry_run else "deleted"
    note = f"; removed {orders} order state record(s) left without items" if orders else ""
    _emit(
        {"before": before, "dry_run": args.dry_run, "matched": len(ids), "deleted": deleted,
         "order_states_removed": orders},
        args.json,
        f"{verb} {len(ids)} item(s) scheduled before {before}{note}",
    )  # fmt: skip
    return 0


# -- dead letters -----------------------------------------------------------------------
def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def letter_summary(letter: deadletter.DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.dead_id,
        "created": _iso(letter.created_at),
        "stage": letter.stage,
        "code": letter.code,
        "location": letter.location,
        "reason": letter.reason,
        "control_id": letter.meta.get("control_id", ""),
        "sender": "|".join(
            filter(None, (letter.meta.get("sending_app"), letter.meta.get("sending_facility")))
        ),
        "bytes": len(letter.raw),
    }


def deadletter_list(settings: Settings, args: argparse.Namespace) -> int:
    client, keys = _open(settings)
    try:
        letters = [deadletter.get(client, keys, i) for i in deadletter.list_ids(client, keys)]
    except redis.RedisError as exc:
        return _fail(f"Redis unavailable: {exc}")
    rows = [letter_summary(d) for d in letters if d is not None]
    if args.json:
        _emit(rows, True, "")
        return 0
    cols = ("id", "created", "stage", "code", "location", "control_id", "sender", "reason")
    print(table(rows, cols))
    print(f"{len(rows)} dead letter(s)")
    return 0


def deadletter_show(settings: Settings, args: argparse.Namespace) -> int:
    client, keys = _open(settings)
    try:
        letter = deadletter.get(client, keys, args.dead_id)
    except redis.RedisError as exc:
        return _fail(f"Redis unavailable: {exc}")
    if letter is None:
        return _fail(f"no dead letter {args.dead_id}", EXIT_NOT_FOUND)
    summary = letter_summary(letter)
    if args.json:
        summary["meta"] = letter.meta
        summary["raw_base64"] = base64.b64encode(letter.raw).decode()
        _emit(summary, True, "")
        return 0
    for key, value in summary.items():
        print(f"{key:>10}: {value}")
    for key, value in sorted(letter.meta.items()):
        print(f"{'meta.' + key:>10}: {value}")
    print("-" * 40)
    # HL7 segments end in CR; a terminal wants newlines. Bytes shown as received
    # (undecodable bytes replaced), since the charset may be what went wrong.
    text = letter.raw.decode("utf-8", "replace")
    print(text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n"))
    return 0


def deadletter_drop(settings: Settings, args: argparse.Namespace) -> int:
    client, keys = _open(settings)
    try:
        dropped = deadletter.drop(client, keys, args.dead_id)
    except redis.RedisError as exc:
        return _fail(f"Redis unavailable: {exc}")
    if not dropped:
        return _fail(f"no dead letter {args.dead_id}", EXIT_NOT_FOUND)
    print(f"dropped {args.dead_id}")
    return 0


def deadletter_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Queue a dead letter's raw message again, through the listener's own header gate.

    For after the cause is fixed (a mapping file corrected, a sender's charset set). The
    message is applied as if it had just arrived, i.e. after everything already applied:
    replaying an old NW after a later CA of the same order would bring the order back,
    so look at the order's history first. The dead letter is dropped once queued.
    """
    client, keys = _open(settings)
    try:
        letter = deadletter.get(client, keys, args.dead_id)
    except redis.RedisError as exc:
        return _fail(f"Redis unavailable: {exc}")
    if letter is None:
        return _fail(f"no dead letter {args.dead_id}", EXIT_NOT_FOUND)
    if letter.stage == outbound_letters.STAGE:
        return _replay_outbound(client, keys, settings, letter, args)
    m = settings.mllp
    try:
        # The listener's charset decision too: the record carries it for the worker.
        h = read_msh(letter.raw, m.default_charset, m.sender_charsets)
    except MshError as exc:
        return _fail(f"not replayed: the MSH is still unreadable: {exc.reason}", EXIT_REFUSED)
    refusal = check_header(h, m) or check_decodable(letter.raw, h, m)
    if refusal is not None:
        return _fail(
            f"not replayed: {refusal.reason} ({refusal.location or 'message'}, "
            f"HL7 error {int(refusal.error)})",
            EXIT_REFUSED,
        )
    # Nobody waits on a replay's application ACK: commit mode.
    record = IntakeRecord.from_msh(
        letter.raw, h, received_at=time.time(), peer=f"replay:{letter.dead_id}", ack_mode="commit"
    )
    try:
        result = submit(
            client,
            keys,
            record,
            dedupe_ttl_s=m.dedupe_retention_s,
            max_retries=settings.worker.max_retries,
            replay=True,
        )
        deadletter.drop(client, keys, letter.dead_id)
    except (StoreUnavailable, redis.RedisError) as exc:
        return _fail(f"Redis unavailable: {exc}")
    if args.json:
        _emit({"dead_id": letter.dead_id, "message_id": result.message_id}, True, "")
    else:
        print(f"replayed {letter.dead_id} as message {result.message_id}")
    return 0


def _replay_outbound(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    letter: deadletter.DeadLetter,
    args: argparse.Namespace,
) -> int:
    """An outbound message goes back to the RIS, not to the intake: a new record with the
    same bytes (same MSH-10) at the tail of its order's line, and a delivery job. It is
    sent after whatever the order sent since, so look at the order's history first."""
    try:
        message_id = outbound_letters.requeue(client, keys, settings.outbound, letter)
        deadletter.drop(client, keys, letter.dead_id)
    except PermanentError as exc:
        return _fail(f"not replayed: {exc}", EXIT_REFUSED)
    except (StoreUnavailable, redis.RedisError) as exc:
        return _fail(f"Redis unavailable: {exc}")
    if args.json:
        _emit(
            {"dead_id": letter.dead_id, "message_id": message_id, "stage": letter.stage},
            True,
            "",
        )
    else:
        print(
            f"replayed {letter.dead_id} as outbound message {message_id} "
            f"(order {letter.meta.get('order', '')}, MSH-10 {letter.meta.get('control_id', '')})"
        )
    return 0


# -- status -----------------------------------------------------------------------------
_INFO_FIELDS = {
    "server": ("redis_version", "redis_mode", "uptime_in_seconds", "tcp_port"),
    "memory": ("used_memory_human", "used_memory_peak_human", "maxmemory_human",
               "maxmemory_policy"),
    "persistence": ("aof_enabled", "aof_last_write_status", "aof_rewrite_in_progress",
                    "aof_last_bgrewrite_status", "rdb_last_bgsave_status", "loading"),
    "replication": ("role", "connected_slaves"),
}  # fmt: skip


def collect_status(
    client: redis.Redis, keys: Keys, settings: Settings | None = None
) -> dict[str, Any]:
    """Everything ``status`` shows, from Redis. The hygiene settings are the ones the
    workers reported (they may run with another configuration than this command);
    before any worker has, those of ``settings`` (``hygiene.settings_source``)."""
    from rq import Queue, Worker
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    queue = Queue(keys.queue_name(), connection=client)
    workers = Worker.all(connection=client, queue=queue)
    info: dict[str, Any] = {}
    for section, names in _INFO_FIELDS.items():
        data = client.info(section)
        info.update({n: data[n] for n in names if n in data})
    try:
        info["appendfsync"] = client.config_get("appendfsync").get("appendfsync", "")
    except redis.ResponseError:  # managed Redis services often disable CONFIG
        info["appendfsync"] = "unknown"
    hb_prefix = keys.heartbeat("", "")[:-1]  # "<prefix>:hb:" → entries "role:instance"
    instances = sorted(
        k.decode()[len(hb_prefix) :]
        for k in client.scan_iter(match=keys.heartbeat("*", "*"), count=1000)
    )
    return {
        "queue": {
            "name": queue.name,
            "depth": queue.count,
            "backlog": client.llen(keys.ingest_order),
            "started": StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
            "failed": FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
        },
        "workers": [
            {"name": w.name, "state": str(w.get_state()), "pid": w.pid, "hostname": w.hostname}
            for w in workers
        ],
        "instances": instances,
        "items": {
            "total": WorklistStore(client, keys).count(),
            "by_status": {s: n for s, n in status_counts(client, keys).items() if n},
        },
        "deadletters": deadletter.count(client, keys),
        "hygiene": _hygiene_status(client, keys, settings),
        "outbound": _outbound_status(client, keys, settings),
        "redis": info,
    }


def _outbound_status(
    client: redis.Redis, keys: Keys, settings: Settings | None
) -> dict[str, Any]:
    """Procedure status to the RIS: the backlog, what the delivery did, who delivers.
    ``destination`` is the one the delivery process reported (it may run with another
    configuration than this command), else this command's own."""
    from rq import Queue, Worker
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry

    now = time.time()
    waiting = outbound_report.backlog(client, keys)
    counts = outbound_report.stats(client, keys)
    out = settings.outbound if settings is not None else None
    destination, source = counts.pop("destination"), "delivery process"
    tls = counts.pop("tls")
    if destination is None and out is not None and out.host:
        destination, source, tls = f"{out.host}:{out.port}", "this command", out.tls
    queue = Queue(keys.outbound_queue_name(), connection=client)
    return {
        "enabled": bool(out.host) if out is not None else destination is not None,
        "destination": destination,
        "destination_source": source if destination else None,
        "tls": tls,
        "backlog": waiting.messages,
        "orders": waiting.orders,
        "oldest_age_s": round(waiting.oldest_age_s(now), 1),
        "backlog_truncated": waiting.truncated,
        **{k: counts[k] for k in outbound_report.COUNTERS},
        "last_error": counts["last_error"],
        "last_error_at": _iso(counts["last_error_at"]) if counts["last_error_at"] else None,
        "last_delivered_at": (
            _iso(counts["last_delivered_at"]) if counts["last_delivered_at"] else None
        ),
        "queue": {
            "name": queue.name,
            "depth": queue.count,
            "scheduled": ScheduledJobRegistry(queue=queue).get_job_count(cleanup=False),
            "failed": FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
        },
        "workers": Worker.count(connection=client, queue=queue),
    }


def _outbound_text(o: dict[str, Any]) -> list[str]:
    pad = " " * 13
    if not o["destination"] and not o["backlog"] and not o["orders"]:
        return ["Outbound     off (outbound.host is empty)"]
    where = (o["destination"] or "no destination") + (" (TLS)" if o["tls"] else "")
    state = "on" if o["enabled"] else "off in this command's settings"
    lines = [
        f"Outbound     to {where}, {state}: {o['backlog']} waiting in {o['orders']} order(s)"
        + (f", oldest {_age(o['oldest_age_s'])}" if o["backlog"] else "")
        + (" (first orders only)" if o["backlog_truncated"] else ""),
        f"{pad}delivered {o['delivered']}, rejected {o['rejected']}, dead-lettered "
        f"{o['dead_lettered']}, retried {o['retried']}, lost {o['lost']}; "
        f"{o['workers']} delivery worker(s), {o['queue']['scheduled']} retries scheduled",
    ]
    if o["last_error"]:
        lines.append(f"{pad}last failure {o['last_error']} at {o['last_error_at']}")
    return lines


def _hygiene_status(client: redis.Redis, keys: Keys, settings: Settings | None) -> dict[str, Any]:
    report = hygiene.report(client, keys, time.time())
    report["settings_source"] = "workers"
    if report["settings"] is None:
        local = settings.worker if settings is not None else None
        report["settings"] = hygiene.settings_doc(local) if local is not None else None
        report["settings_source"] = "this command" if local is not None else "unknown"
    return report


def _span(seconds: float) -> str:
    """A duration for people: 600 → 10m, 86400 → 1d, 129600 → 36h."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _age(seconds: float) -> str:
    """An age for people: 42 → 42s, 312 → 5m12s, 11100 → 3h05m, 190000 → 2d04h."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _counts(by_status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()) if v)


def _hygiene_text(h: dict[str, Any]) -> list[str]:
    pad = " " * 13
    lines: list[str] = []
    cfg = h["settings"]
    if cfg is not None:
        retention = ", ".join(f"{st} {_span(v)}" for st, v in sorted(cfg["retention_s"].items()))
        idle = ", ".join(
            f"{st} {_span(cfg[key] * 3600) if cfg[key] > 0 else 'off'}"
            for st, key in (("SCHEDULED", "idle_scheduled_after_h"),
                            ("STARTED", "idle_started_after_h"))
        )  # fmt: skip
        lines.append(f"Hygiene      retention after the last update: {retention}")
        lines.append(
            f"{pad}idle timeout: {idle}; action {cfg['idle_action']} "
            f"(hidden items kept {_span(cfg['idle_hidden_retention_s'])})"
        )
        source = h["settings_source"]
        if source == "workers":
            lines.append(
                f"{pad}settings reported by worker {h['settings_by']} at {h['settings_at']}"
            )
        else:
            lines.append(f"{pad}settings of {source}: no worker has reported its own yet")
    else:
        lines.append("Hygiene      settings unknown: no worker has reported yet")
    done = "; ".join(f"{action} {_counts(by)}" for action, by in h["done"].items() if _counts(by))
    lines.append(f"{pad}done since {h['since'] or '-'}: {done or 'nothing'}")
    w = h["waiting"]
    parts = [_counts(w["by_status"])]
    if w["idle_hidden"]:
        parts.append(f"idle-hidden {w['idle_hidden']}")
    detail = ", ".join(p for p in parts if p)
    lines.append(
        f"{pad}waiting for purge {w['total']}"
        + (f" ({detail})" if detail else "")
        + f", overdue {w['overdue']}"
        + (f", next at {w['next_at']}" if w["next_at"] else "")
    )
    return lines


def _status_text(url: str, st: dict[str, Any]) -> str:
    q = st["queue"]
    lines = [
        f"Redis        {mask_url(url)}",
        f"Queue        {q['name']}: {q['depth']} waiting, {q['started']} running, "
        f"{q['failed']} failed; {q['backlog']} messages not yet applied",
        f"Workers      {len(st['workers'])} alive"
        + "".join(f"\n             {w['name']} ({w['state']})" for w in st["workers"]),
    ]
    if st["instances"]:
        lines.append("Instances    " + ", ".join(st["instances"]))
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(st["items"]["by_status"].items()))
    lines.append(f"Items        {st['items']['total']} ({by_status or 'none'})")
    lines.append(f"Dead letters {st['deadletters']}")
    lines.extend(_hygiene_text(st["hygiene"]))
    lines.extend(_outbound_text(st["outbound"]))
    lines.append("")
    lines.append(table([{"key": k, "value": v} for k, v in st["redis"].items()], ("key", "value")))
    return "\n".join(lines)


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    url = redis_url(settings)
    client, keys = _open(settings)
    try:
        st = collect_status(client, keys, settings)
    except (redis.RedisError, StoreUnavailable) as exc:
        return _fail(f"Redis {mask_url(url)} unavailable: {exc}")
    _emit(st, args.json, _status_text(url, st))
    return 0
