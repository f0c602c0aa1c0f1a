"""``mwl-bridge worklist import PATH...``: the worklist files of the server a site
replaces (DCMTK wlmscpfs, Orthanc, ``.dcm`` exports) into the store.

Reading and validation are in :mod:`bridge.ops.worklist_files`; this module decides per
file what happens to its items and writes them.

**Per file**, one of:

* *imported* — its items are written, with their order's state;
* *skipped* — every SPS of it is already stored (an item with the same Study Instance
  UID and SPS ID exists): a re-import changes nothing;
* *rejected* — a check failed (:mod:`~bridge.ops.worklist_files`), or its order cannot
  take it (below). Nothing of the file is written.

**Order keys.** An item belongs to the order its Placer Order Number (0040,2016) names,
``P|<number>^<namespace>`` (namespace: Local Namespace Entity ID of the Order Placer
Identifier Sequence (0040,0026)), with the Filler Order Number (0040,2017) as the alias
``F|<number>^<namespace>`` ((0040,0027)): exactly the names an HL7 order with the same
ORC-2/ORC-3 gets (:func:`bridge.worker.mapping.apply.order_aliases`), so a later XO or CA
from the RIS finds the imported items (workers.md, "Order identity"). A number the store
knows already joins its order, as the planner resolves it (an alias names its
canonical order; a namespace-less name marked ``legacy`` also answers for the number
with a namespace). A name the import creates without a namespace is marked ``legacy``
too: a worklist file seldom records the namespace the RIS puts in ORC-2, and the XO
must still find the order. Item ids are
:func:`bridge.worker.lifecycle.item_id` (order, Requested Procedure ID, SPS ID), as the
planner makes them. The order's state hash gets ``canonical``, each alias hash
``{"canonical": ...}``, both without a TTL while the order has items. A file is
rejected when its numbers name two different orders, an order marked ``ambiguous`` by the
store upgrade, or an order that is finished (``final``: CA/DC/CM applied, so the file is
stale), or when an item of its order with the same Requested Procedure ID and SPS ID has
another Study Instance UID. A file without either number gets the order key
``import|<Study Instance UID>|<SPS ID>`` (no state hash): its items are found by C-FIND
but no HL7 message can update or cancel them (said in the report).

**Atomicity and order.** Each file is planned and written while the import holds the
workers' apply lock (``keys.apply_lock``, a token of its own, ``SET NX PX`` with
``worker.apply_lock_ttl_s``, waited for up to ``--lock-wait`` seconds with a back-off
from 10 to 200 ms), so a file lands between two of the workers' runs, never inside one
(a worker plans a run on what it read: an item written in between could be missed or
overwritten). The lock is taken per file, so HL7 orders are applied between files of a
long import. The items and order state hashes of one file are one Lua script
(:meth:`~bridge.store.worklist_store.WorklistStore.insert_new`): fenced by the token,
and it writes nothing if an item with the same id or Study Instance UID + SPS ID exists
by then, so the duplicate check and the write are atomic. The reads that decide the
order (its state, its items) happen under the same lock and are not repeated inside the
script: what protects them is that every writer of order state (workers, the store
upgrade, the admin deletes) holds that lock. The lock is released only while it is
still ours (compare and delete); a worker that found it busy meanwhile left its parsed
message for the next maintenance step (``worker.maintenance_interval_s``) or the next
message's job.

The lock helper is :func:`bridge.ops.worklist_edit.apply_lock`, the one ``worklist
delete``/``purge`` use. A store still in an earlier release's layout is upgraded first
(:func:`bridge.worker.migrations.upgrade`, as a worker does before it applies), since the
order names written here are this release's.

``--dry-run`` reads the store without the lock and writes nothing; it reports what a
real run would do (files of one run see each other's items in both modes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from bridge.core.codes import FINAL_SPS_STATUSES, SpsStatus
from bridge.core.errors import ConfigError, StoreUnavailable
from bridge.core.logs import fields
from bridge.core.settings import Settings
from bridge.ops.admin import redis_url, table
from bridge.ops.worklist_edit import LOCK_WAIT_S, LockBusy, apply_lock
from bridge.ops.worklist_files import (
    Discovery,
    FileContent,
    Rejected,
    Rules,
    Source,
    discover,
    label_problem,
    read_file,
)
from bridge.store.connections import sync_client
from bridge.store.item import SPS, WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import AlreadyStored, FenceLost, WorklistStore
from bridge.worker import migrations
from bridge.worker.lifecycle import item_id, retention_s
from bridge.worker.mapping.apply import MappedGroup, order_aliases
from bridge.worker.mapping.load import load_mapping

log = logging.getLogger(__name__)

EXIT_OK = 0
#: A file was rejected, or Redis / the apply lock failed.
EXIT_FAILED = 1

IMPORTED, SKIPPED, REJECTED = "imported", "skipped", "rejected"
#: The attributes an order conflict is about (reasons name attributes, never values).
_NUMBERS = "PlacerOrderNumberImagingServiceRequest / FillerOrderNumberImagingServiceRequest"


@dataclass
class FileResult:
    """What happened to one file (a row of the report)."""

    file: str
    result: str
    worklist: str = ""
    order: str = ""
    #: Item ids written (or that a dry run would write).
    items: list[str] = field(default_factory=list)
    #: Why the file was skipped or rejected: attribute and rule, never a value.
    reason: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    dry_run: bool
    files: list[FileResult] = field(default_factory=list)
    #: Folders and files found but not read, and why.
    not_read: list[str] = field(default_factory=list)
    #: Notes about the whole import.
    notes: list[str] = field(default_factory=list)
    #: Set when the import stopped early (Redis, the apply lock): files after it were
    #: not looked at.
    stopped: str = ""

    def summary(self) -> dict[str, int]:
        count = {r: sum(1 for f in self.files if f.result == r) for r in (IMPORTED, SKIPPED)}
        return {
            "files": len(self.files),
            **count,
            REJECTED: sum(1 for f in self.files if f.result == REJECTED),
            "items": sum(len(f.items) for f in self.files if f.result == IMPORTED),
        }

    @property
    def failed(self) -> bool:
        return bool(self.stopped) or any(f.result == REJECTED for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "files": [asdict(f) for f in self.files],
            "not_read": self.not_read,
            "notes": self.notes,
            "summary": self.summary(),
            "stopped": self.stopped,
        }

    def text(self) -> str:
        rows = [
            {
                "file": f.file,
                "result": f.result,
                "items": len(f.items) if f.result == IMPORTED else "",
                "worklist": f.worklist,
                "order": f.order,
                "detail": "; ".join(filter(None, [f.reason, *f.notes])),
            }
            for f in self.files
        ]
        lines = [table(rows, ("file", "result", "items", "worklist", "order", "detail"))]
        lines += [f"not read: {n}" for n in self.not_read]
        lines += [f"note: {n}" for n in self.notes]
        s = self.summary()
        verb = "would be imported" if self.dry_run else "imported"
        lines.append(
            f"{s['files']} file(s): {s[IMPORTED]} {verb} ({s['items']} item(s)), "
            f"{s[SKIPPED]} skipped (already present), {s[REJECTED]} rejected"
            + (" (dry run: nothing written)" if self.dry_run else "")
        )
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join(lines)


@dataclass
class _Plan:
    items: list[WorklistItem]
    order_states: dict[str, dict[str, str]]
    expire_at: dict[str, float]
    skipped_sps: int


class Importer:
    """Runs one import over a store: :meth:`run` takes what :func:`discover` found."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: Settings,
        rules: Rules,
        dry_run: bool = False,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self.r = client
        self.keys = keys
        self.store = WorklistStore(client, keys)
        self.settings = settings
        self.rules = rules
        self.dry_run = dry_run
        self.lock_wait_s = lock_wait_s
        # What earlier files of this run wrote (or, in a dry run, would have written), so
        # a dry run reports what the real run does.
        self._staged_steps: set[tuple[str, str]] = set()
        self._staged_ids: set[str] = set()
        self._staged_orders: dict[str, str] = {}

    def run(self, found: Discovery) -> ImportReport:
        report = ImportReport(self.dry_run, not_read=list(found.not_read))
        try:
            self._layout(report)
        except (StoreUnavailable, redis.RedisError) as exc:
            report.stopped = f"store layout upgrade: {exc}"
            return report
        for source in found.sources:
            try:
                report.files.append(self._one(source))
            except LockBusy:
                report.stopped = (
                    f"{source.path}: the workers kept the apply lock for {self.lock_wait_s:g} s "
                    "(a backlog is being applied); the files before it are imported: run the "
                    "import again (they are skipped) or give a longer --lock-wait"
                )
                break
            except (StoreUnavailable, FenceLost) as exc:
                report.stopped = f"{source.path}: {exc}"
                break
        s = report.summary()
        log.info(
            "worklist.import",
            extra=fields(dry_run=self.dry_run, stopped=bool(report.stopped), **s),
        )
        return report

    def _layout(self, report: ImportReport) -> None:
        """Order names are written in this release's layout, so the store must be in it:
        upgraded as a worker does before it applies anything (idempotent, under the apply
        lock; an empty store just gets its version). A dry run only says so."""
        if not self.dry_run:
            migrations.upgrade(self.r, self.keys, wait_s=self.lock_wait_s)
        elif migrations.current(self.r, self.keys) < migrations.SCHEMA_VERSION and (
            self.store.count() or next(self.r.scan_iter(self.keys.order("*"), 1000), None)
        ):
            report.notes.append(
                "the store is in an earlier release's layout: the import (like a worker) "
                "upgrades it first; orders named the old way are not found by this dry run"
            )

    def _one(self, source: Source) -> FileResult:
        out = FileResult(str(source.path), REJECTED, worklist=source.worklist)
        if source.label_error:
            out.reason = source.label_error
            return out
        if self.settings.scp.per_called_ae_worklists and not source.worklist:
            out.reason = (
                "no worklist label while scp.per_called_ae_worklists is on (no called AE "
                "would serve the items): give --worklist or use a per-AE folder"
            )
            return out
        try:
            content = read_file(source.path, self.rules)
        except Rejected as exc:
            out.reason = str(exc)
            return out
        out.notes = content.notes
        aliases = _aliases(content)
        if not aliases:
            out.notes.append(
                "no placer or filler order number: found by C-FIND, not updatable by the RIS"
            )
        try:
            if self.dry_run:
                plan = self._plan(source, content, aliases, out)
            else:
                with apply_lock(
                    self.r, self.keys, self.settings.worker.apply_lock_ttl_s, self.lock_wait_s
                ) as token:
                    plan = self._plan(source, content, aliases, out)
                    if plan.items:
                        self._write(plan, token)
        except Rejected as exc:
            out.reason = str(exc)
            return out
        except AlreadyStored as exc:
            # Written between our reads and the script by a writer that does not take the
            # apply lock (workers, imports and admin deletes all do).
            out.result = SKIPPED if not exc.same_id else REJECTED
            out.reason = str(exc)
            return out
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not plan.items:
            out.result = SKIPPED
            out.reason = "already present (same Study Instance UID and SPS ID)"
            return out
        out.result = IMPORTED
        out.items = [it.item_id for it in plan.items]
        if plan.skipped_sps:
            out.notes.append(f"{plan.skipped_sps} SPS already present, not imported again")
        self._stage(plan, aliases)
        return out

    # -- planning (reads only) ------------------------------------------------------
    def _plan(
        self, source: Source, content: FileContent, aliases: list[str], out: FileResult
    ) -> _Plan:
        fresh = [a for a in content.items if not self._present(a)]
        plan = _Plan([], {}, {}, len(content.items) - len(fresh))
        if not fresh:
            return plan
        now = time.time()
        canonical, state, new = ("", {}, True)
        if aliases:
            canonical, state, new = self._resolve(aliases)
            if state.get("final"):
                raise Rejected(
                    f"{_NUMBERS}: the order is finished ({state['final']}) in the bridge; "
                    "a stale file does not bring it back"
                )
            out.order = canonical
        for attrs in fresh:
            suid, rpid, spsid = _identity(attrs)
            order = canonical or f"import|{suid}|{spsid}"
            iid = item_id(order, rpid, spsid)
            if iid in self._staged_ids or iid in {it.item_id for it in plan.items}:
                raise Rejected(
                    "RequestedProcedureID + ScheduledProcedureStepID: the same pair twice "
                    "for one order (two files or SPS items would be one item)"
                )
            if self.store.get(iid) is not None:
                raise Rejected(
                    "StudyInstanceUID: an item of this order with the same Requested "
                    "Procedure ID and SPS ID is stored with another Study Instance UID"
                )
            item = WorklistItem(
                item_id=iid,
                attrs=attrs,
                order_key=order,
                worklist=source.worklist,
                # A new procedure of a held (HD) order is held like the rest of it.
                hidden=state.get("hidden") == "1",
                updated_at=now,
                extra={"source": "import"},
            )
            plan.items.append(item)
            if item.status in FINAL_SPS_STATUSES:
                # Stored as the planner stores a finished step: hidden by the SCP's default
                # status filter and purged after the retention for its status.
                plan.expire_at[iid] = now + retention_s(
                    self.settings.worker, SpsStatus(item.status)
                )
        if not out.order and len({it.order_key for it in plan.items}) == 1:
            out.order = plan.items[0].order_key
        if canonical:
            plan.order_states = self._order_states(canonical, aliases, new)
        return plan

    def _present(self, attrs: dict[str, Any]) -> bool:
        """Is an item with this Study Instance UID and SPS ID stored (or staged)?"""
        suid, _rpid, spsid = _identity(attrs)
        if (suid, spsid) in self._staged_steps:
            return True
        # Intersected in Redis: a RIS that numbers every SPS "1" makes that set large.
        k = self.keys
        return bool(self.r.sinter(k.index("suid", suid), k.index("spsid", spsid)))

    def _resolve(self, aliases: list[str]) -> tuple[str, dict[str, str], bool]:
        """(canonical order name, its state, new?) for the file's order names, resolved
        as the planner does (``bridge.worker.lifecycle.Planner._resolve``): a name's
        hash gives its canonical order; a namespace-less name marked ``legacy`` answers
        for the name with a namespace; an order without a hash is known by its items."""
        found: dict[str, str] = {}
        for alias in aliases:
            if alias in self._staged_orders:
                found[alias] = self._staged_orders[alias]
                continue
            names = [alias]
            head, _, number = alias.partition("|")
            if "^" in number:
                names.append(f"{head}|{number.split('^', 1)[0]}")
            for n, name in enumerate(names):
                data = _text(self.r.hgetall(self.keys.order(name)))
                if data.get("ambiguous") == "1":
                    raise Rejected(
                        f"{_NUMBERS}: the number was used by several senders before the "
                        "store upgrade (ambiguous); let the RIS send such orders"
                    )
                if data and (n == 0 or data.get("legacy") == "1"):
                    found[alias] = data.get("canonical") or name
                    break
            else:
                if self.r.scard(self.keys.index("order", alias)):
                    found[alias] = alias
        canonicals = set(found.values())
        if len(canonicals) > 1:
            raise Rejected(f"{_NUMBERS}: they name two different orders in the bridge")
        if not canonicals:
            return aliases[0], {}, True
        canonical = canonicals.pop()
        return canonical, _text(self.r.hgetall(self.keys.order(canonical))), False

    def _order_states(
        self, canonical: str, aliases: list[str], new: bool
    ) -> dict[str, dict[str, str]]:
        """State hash fields to set: the canonical name and each alias pointing at it.
        Names this import creates without a namespace are marked ``legacy`` (the RIS's
        XO may carry a namespace the file did not record); existing hashes keep theirs."""
        states: dict[str, dict[str, str]] = {}
        for name in dict.fromkeys([canonical, *aliases]):
            created = name not in self._staged_orders and not self.r.exists(self.keys.order(name))
            fields_: dict[str, str] = {"canonical": canonical}
            if created and name == canonical and new:
                fields_["source"] = "import"
            if created and "^" not in name.partition("|")[2]:
                fields_["legacy"] = "1"
            states[self.keys.order(name)] = fields_
        return states

    # -- writing ----------------------------------------------------------------------
    def _write(self, plan: _Plan, token: str) -> None:
        self.store.insert_new(
            plan.items, plan.order_states, fence=(self.keys.apply_lock, token),
            expire_at=plan.expire_at,
        )  # fmt: skip

    def _stage(self, plan: _Plan, aliases: list[str]) -> None:
        for it in plan.items:
            suid, _rpid, spsid = _identity(it.attrs)
            self._staged_steps.add((suid, spsid))
            self._staged_ids.add(it.item_id)
            for alias in aliases:
                self._staged_orders[alias] = it.order_key


def _identity(attrs: dict[str, Any]) -> tuple[str, str, str]:
    """(Study Instance UID, Requested Procedure ID, SPS ID) of an item's content."""
    sps = attrs[SPS][0]
    return (
        str(attrs["StudyInstanceUID"]),
        str(attrs["RequestedProcedureID"]),
        str(sps["ScheduledProcedureStepID"]),
    )


def _aliases(content: FileContent) -> list[str]:
    o = content.order
    group = MappedGroup(
        control="", order_status="", action="create", status="",
        placer=o.placer, filler=o.filler, placer_ns=o.placer_ns, filler_ns=o.filler_ns,
    )  # fmt: skip
    return order_aliases("", group)


def _text(data: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in data.items()}


# -- the CLI verb ---------------------------------------------------------------------------
def command(settings: Settings, args: argparse.Namespace) -> int:
    """``worklist import PATH... [--dry-run] [--json] [--worklist LABEL] [--lock-wait S]``."""
    if args.worklist is not None:
        problem = label_problem(args.worklist)
        if problem:
            raise ConfigError("--worklist", problem)
    mapping = load_mapping(settings.worker.mapping or None)
    found = discover(args.paths, args.worklist)
    client = sync_client(settings.redis, redis_url(settings))
    importer = Importer(
        client,
        Keys(settings.redis.key_prefix),
        settings,
        Rules.from_mapping(mapping),
        dry_run=args.dry_run,
        lock_wait_s=args.lock_wait,
    )
    report = importer.run(found)
    if mapping.order_scope == "sender":
        report.notes.append(
            "the mapping scopes orders by sender (order_scope: sender): imported orders are "
            "named without one, so the RIS's XO/CA will not find them"
        )
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.text())
    if report.stopped:
        print(f"mwl-bridge: import stopped: {report.stopped}", file=sys.stderr)
    return EXIT_FAILED if report.failed else EXIT_OK
