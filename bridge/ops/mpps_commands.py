"""``mwl-bridge mpps list`` and ``mpps show UID``: the MPPS instances modalities reported,
for the people on call.

Read-only, straight from Redis (works while the service runs or is stopped). ``list``
shows the newest first with what the workers made of each (applied status, linked
items, flags); ``show`` one instance: its status, the Scheduled Step Attributes the
modality referred to, the worklist items the workers linked it to, the flags, and its
attributes as a DICOM dump. Like ``worklist show`` this prints patient data to the
operator's terminal; nothing here logs it.

The SCP writes ``status``, ``dataset``, ``refs``, ``created_at``, ... (see
:mod:`bridge.scp.mpps_store`); the workers add ``items``, ``unscheduled``,
``patient_mismatch``, ``applied_status`` and ``applied_at`` when they apply the status
change. Until they have, ``show`` says "not applied yet".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bridge.core.errors import StoreUnavailable
from bridge.core.settings import Settings
from bridge.ops.admin import redis_url, table
from bridge.scp.mpps_store import MppsStore, StoredInstance
from bridge.store.connections import sync_client
from bridge.store.item import to_dataset
from bridge.store.keys import Keys

EXIT_NOT_FOUND = 1
EXIT_UNAVAILABLE = 1
NOT_APPLIED = "not applied yet"


def _store(settings: Settings) -> MppsStore:
    client = sync_client(settings.redis, redis_url(settings))
    return MppsStore(
        client,
        Keys(settings.redis.key_prefix),
        retention_s=settings.scp.mpps_retention_s,
        max_retries=settings.worker.max_retries,
    )


def _fail(message: str, code: int) -> int:
    print(f"mwl-bridge: {message}", file=sys.stderr)
    return code


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def _json_field(instance: StoredInstance, name: str) -> Any:
    """A JSON field the workers wrote, None when absent (or unreadable)."""
    text = instance.fields.get(name)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def links(instance: StoredInstance) -> dict[str, Any]:
    """What the workers made of the instance: None values = not applied yet."""
    items = _json_field(instance, "items")
    mismatch = _json_field(instance, "patient_mismatch")
    applied_at = instance.fields.get("applied_at")
    return {
        "applied_status": instance.fields.get("applied_status") or None,
        "applied_at": float(applied_at) if applied_at else None,
        "items": items if isinstance(items, list) else None,
        "unscheduled": instance.fields.get("unscheduled") == "1",
        "patient_mismatch": mismatch if isinstance(mismatch, list) else [],
    }


def _flags(link: dict[str, Any]) -> str:
    flags = []
    if link["unscheduled"]:
        flags.append("unscheduled")
    if link["patient_mismatch"]:
        flags.append("patient-mismatch")
    return ",".join(flags)


def summary(instance: StoredInstance) -> dict[str, Any]:
    link = links(instance)
    return {
        "uid": instance.uid,
        "created": _iso(instance.created_at),
        "calling_ae": instance.calling_ae,
        "status": instance.status,
        "applied": link["applied_status"] or "-",
        "items": "-" if link["items"] is None else len(link["items"]),
        "flags": _flags(link),
    }


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mpps list [--status S] [--limit N] [--json]``: newest first."""
    try:
        instances, total = _store(settings).recent(0 if args.status else args.limit)
    except StoreUnavailable as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    if args.status:
        wanted = args.status.strip().upper()
        instances = [i for i in instances if i.status == wanted]
        if args.limit:
            instances = instances[: args.limit]
    if args.json:
        out = []
        for instance in instances:
            row = summary(instance)
            row.update(links(instance), created_at=instance.created_at, refs=instance.refs)
            out.append(row)
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    rows = [summary(i) for i in instances]
    print(table(rows, ("uid", "created", "calling_ae", "status", "applied", "items", "flags")))
    print(f"{len(rows)} instance(s) shown, {total} in the index")
    return 0


def show_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mpps show UID [--json]``."""
    try:
        instance = _store(settings).get(args.uid)
    except StoreUnavailable as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    except ValueError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    if instance is None:
        return _fail(f"no MPPS instance {args.uid} (unknown or expired)", EXIT_NOT_FOUND)
    link = links(instance)
    if args.json:
        doc = {
            "uid": instance.uid,
            "status": instance.status,
            "created_at": instance.created_at,
            "updated_at": instance.updated_at,
            "calling_ae": instance.calling_ae,
            "patient_id": instance.patient_id,
            "issuer": instance.issuer,
            "refs": instance.refs,
            **link,
            "dataset": instance.attrs,
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    print(f"# mpps {instance.uid}")
    print(
        f"# status={instance.status}  calling_ae={instance.calling_ae or '-'}"
        f"  created={_iso(instance.created_at)}  updated={_iso(instance.updated_at)}"
    )
    if link["applied_status"] is None:
        print(f"# applied: {NOT_APPLIED}")
    else:
        print(f"# applied: {link['applied_status']} at {_iso(link['applied_at'] or 0)}")
    if link["items"] is not None:
        print(f"# linked items: {', '.join(link['items']) or 'none'}")
    if link["unscheduled"]:
        print("# flag: unscheduled (no reference names a Requested Procedure or SPS)")
    if link["patient_mismatch"]:
        print(
            "# flag: patient mismatch: Patient ID differs from that of item(s) "
            + ", ".join(link["patient_mismatch"])
        )
    print("# scheduled step references:")
    refs = [
        {
            "n": n,
            "study_instance_uid": ref.get("StudyInstanceUID", ""),
            "rp_id": ref.get("RequestedProcedureID", ""),
            "sps_id": ref.get("ScheduledProcedureStepID", ""),
            "accession": ref.get("AccessionNumber", ""),
        }
        for n, ref in enumerate(instance.refs, start=1)
    ]
    cols = ("n", "study_instance_uid", "rp_id", "sps_id", "accession")
    print("\n".join(f"  {line}" for line in table(refs, cols).splitlines()))
    ds = to_dataset(instance.attrs)
    ds.SpecificCharacterSet = "ISO_IR 192"  # the dump is Unicode; say so in the header
    print(ds)
    return 0
