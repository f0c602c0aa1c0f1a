"""Order lifecycle: what a mapped ORM does to the worklist, given the order's state.

The ORC-1 × ORC-5 → action table is configuration (the ``lifecycle`` section of the
mapping file; the shipped one follows IHE RAD-4/RAD-13). The actions:

========  =================================================================================
create    NW: one item per OBR (SPS status from the table); a repeated NW for a live order
          is an update (``worker.repeated_new_order = update``) or rejected (``reject``:
          AE 205 and a dead letter), never a second live item for one procedure
update    XO: the complete order: update its items in place (paired by RPID+SPS ID, else by
          OBR position), never re-key; items it no longer contains are DISCONTINUED;
          an unknown order → no change (AE 204 in application-ACK mode)
status    SC: set the SPS status of every item of the order
final     CA/DC/OC, XO/SC with CM: final status; items leave the default worklist and
          are purged after the retention for that status; the order never comes back. A
          final message for an order not seen yet leaves a tombstone (a final record
          without items) kept ``worker.final_order_retention_s``
hide/show HD/RL: hide the order's items from queries / show them again (new items of a held
          order are hidden too)
ignore    NA, OK, CR, UA, UC, SN, CN: logged, no change
========  =================================================================================

Messages of one order may arrive out of order (different interfaces, engine resends).
The sender's transaction time (ORC-9, else MSH-7; ``MappedGroup.txn``) tells a late NW
from a new one: an NW for a final or tombstoned order whose transaction time is not
later than the final message's is applied as that final status (the exam is not
revived); a later one means the placer number was reused: a new order
(``worker.reused_order_number = new``) or ignored (``ignore``). Without both times the
NW counts as late. Each of these is logged and counted (``mwl_order_anomalies``).

:func:`plan` is called only by the worker that holds the apply lock, one message at a
time in ingest (= ACK) order, so it may read the order state and the store without
further locking. It returns what to write; the sequencer writes it fenced.

An order is known when its state hash exists or the store still holds items of it (the
``order`` index). The hash has no TTL while the order has items (scheduled items never
expire, so neither may the order they belong to); a final order's hash lives
``worker.final_order_retention_s`` (at least the MLLP dedupe window) so a replay or a
resent NW cannot resurrect it; an order without items expires after
``worker.order_state_retention_s``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge.core import metrics
from bridge.core.codes import FINAL_SPS_STATUSES, Hl7Error, SpsStatus
from bridge.core.logs import fields
from bridge.core.settings import WorkerSettings
from bridge.intake.outbound import OutboundRecord
from bridge.store.item import SPS, WorklistItem
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker.mapping.apply import (
    MappedGroup,
    MappedItem,
    MappingResult,
    MppsEvent,
    PatientEvent,
    order_aliases,
)
from bridge.worker.mapping.schema import StatusTemplate
from bridge.worker.status_messages import order_status, render

log = logging.getLogger(__name__)

STATUS_KEY = "ScheduledProcedureStepStatus"


@dataclass
class Plan:
    """Everything one message changes, written atomically by the sequencer."""

    upserts: dict[str, WorklistItem] = field(default_factory=dict)
    expire_at: dict[str, float] = field(default_factory=dict)
    #: order hash key → (fields, ttl seconds or 0)
    order_states: dict[str, tuple[dict[str, str], int]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    #: (level, event, extra) log records, emitted by the sequencer once the plan is
    #: written (a plan may be dropped and made again on newer state; see emit_logs).
    logs: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    #: Every order name (alias or canonical) the plan read or wrote: two plans whose sets
    #: are disjoint can be made from the same Redis state and written one after the other.
    orders: set[str] = field(default_factory=set)
    #: The application-ACK verdict when it is not AA: (HL7 table 0357 code, location,
    #: text), e.g. 204 for an XO/CA of an unknown order.
    verdict: tuple[Hl7Error, str, str] | None = None
    #: The message must be dead-lettered instead (code, location, reason): nothing of
    #: this plan is written.
    reject: tuple[Hl7Error, str, str] | None = None
    #: Outbound HL7 messages to the RIS, written with the plan and delivered by the
    #: outbound stage.
    outbound: list[OutboundRecord] = field(default_factory=list)


def _other_patient(ev: MppsEvent, item: WorklistItem) -> bool:
    """The MPPS names another patient than the item: another Patient ID, or the same ID
    under another issuer (only when both sides name one)."""
    pid, issuer = item.attrs.get("PatientID") or "", item.attrs.get("IssuerOfPatientID") or ""
    if ev.patient_id and pid and pid != ev.patient_id:
        return True
    return bool(ev.issuer and issuer and issuer != ev.issuer)


def emit_logs(records: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Log what a written plan did (``Plan.logs``) and count its order anomalies: only
    once the plan is written are they true."""
    for level, event, extra in records:
        log.log(level, event, extra=extra)
        logged = extra.get("fields", {})
        kind = logged.get("anomaly")
        if kind:
            metrics.ORDER_ANOMALIES.labels(kind=kind).inc()
        outcome = logged.get("patient_event")
        if outcome:
            metrics.PATIENT_EVENTS.labels(event=logged["event"], outcome=outcome).inc()
        if logged.get("mpps_outcome"):
            metrics.MPPS_APPLIED.labels(outcome=logged["mpps_outcome"]).inc()
        if logged.get("mpps_mismatch"):
            metrics.MPPS_PATIENT_MISMATCH.inc(logged["mpps_mismatch"])


def _later(txn: float | None, final_txn: str | None) -> bool:
    """Is a message of transaction time ``txn`` later than the final message's? Unknown
    on either side counts as not later: a late NW must never revive an exam."""
    if txn is None or not final_txn:
        return False
    try:
        return txn > float(final_txn)
    except ValueError:
        return False


def _patient_key(attrs: dict[str, Any]) -> str | None:
    """``<issuer>|<patient id>`` of mapped or stored attributes; None without an id."""
    pid = attrs.get("PatientID")
    if not isinstance(pid, str) or not pid:
        return None
    issuer = attrs.get("IssuerOfPatientID")
    return f"{issuer if isinstance(issuer, str) else ''}|{pid}"


def _stripped(alias: str) -> str | None:
    """The alias without its namespace (``P|123^RIS`` → ``P|123``): how releases before
    the namespace was part of the order's name stored it; None when it has none."""
    head, sep, number = alias.rpartition("|")
    if "^" not in number:
        return None
    return f"{head}{sep}{number.split('^', 1)[0]}"


def retention_s(settings: WorkerSettings, status: str) -> int:
    """Seconds an item in the final status ``status`` stays after its last update before
    it is purged: ``worker.retention_<status>_s``. A status without a setting of its own
    (one added to ``FINAL_SPS_STATUSES`` later, or a value a mapping invented) gets the
    longest of them: never kept forever, never purged at once."""
    per_status = {
        str(s): getattr(settings, f"retention_{str(s).lower()}_s", None) for s in FINAL_SPS_STATUSES
    }
    own = per_status.get(status)
    if isinstance(own, int):
        return own
    return max(v for v in per_status.values() if isinstance(v, int))


def ris_view(item: WorklistItem) -> WorklistItem:
    """``item`` as the RIS left it: the status and hidden flag from before the idle timeout
    acted (:mod:`bridge.worker.hygiene`), the mark removed. A message of the RIS is planned
    on this view, so it is applied as if the timeout had not acted: the hygiene never
    overrides what the RIS says next (an SC to IP, an XO with a new date, a CA)."""
    mark = item.idle
    if mark is not None:
        item.extra.pop("idle", None)
        item.sps[STATUS_KEY] = str(mark.get("status") or item.status)
        item.hidden = bool(mark.get("hidden"))
    return item


#: Order controls that override a status a modality reported by MPPS (issue #13): the
#: RIS cancels or discontinues the exam. Others (XO, SC, NW) update the attributes only.
_RIS_OVERRIDES = frozenset({"CA", "DC", "OC"})

#: MPPS Performed Procedure Step Status (0040,0252) → SPS status (PS3.4 F.7, IHE RAD-7).
MPPS_TO_SPS = {
    "IN PROGRESS": SpsStatus.STARTED.value,
    "COMPLETED": SpsStatus.COMPLETED.value,
    "DISCONTINUED": SpsStatus.DISCONTINUED.value,
}
#: Discontinuation reason (0040,0281) "Incorrect worklist entry selected" (DCM 110514):
#: the technologist picked the wrong entry; it goes back on the worklist.
WRONG_ENTRY = "110514"


def _mpps_holds(item: WorklistItem, group: MappedGroup) -> bool:
    """A status the modality reported by MPPS stands against RIS messages other than
    CA, DC and OC (an XO updates the attributes but does not reschedule a started or
    completed exam)."""
    return bool(item.extra.get("mpps")) and group.control not in _RIS_OVERRIDES


def item_id(order_key: str, rpid: str, spsid: str) -> str:
    """Deterministic item id, so a resent or updated order upserts the same record."""
    return hashlib.sha1(f"{order_key}|{rpid}|{spsid}".encode()).hexdigest()


class Planner:
    def __init__(
        self, client: redis.Redis, keys: Keys, store: WorklistStore, settings: WorkerSettings
    ) -> None:
        self.r = client
        self.keys = keys
        self.store = store
        self.settings = settings
        #: alias → (order hash, item ids) read before the plans of a run (read_ahead).
        self._read_ahead: dict[str, tuple[dict[bytes, bytes], list[str]]] = {}
        #: "<issuer>|<patient id>" → the merge record (``keys.patient``), read ahead too.
        self._patients: dict[str, dict[bytes, bytes]] = {}
        #: The mapping's ``status_messages`` template when procedure status goes back to
        #: the RIS (``outbound.host`` set; set by the worker's install), else None.
        self.status_template: StatusTemplate | None = None

    def plan(self, result: MappingResult, now: float, seq: int = 0) -> Plan:
        """What ``result`` changes; reads Redis (or what read_ahead read), writes nothing."""
        plan = Plan()
        if result.patient is not None:
            self._plan_patient(plan, result.patient, now, seq)
            return plan
        if result.mpps is not None:
            self._plan_mpps(plan, result.mpps, now, seq)
            return plan
        states: dict[str, dict[str, str]] = {}
        alias_map: dict[str, str] = {}  # aliases seen earlier in this message
        for group in result.groups:
            aliases = order_aliases(result.scope, group)
            staged = next((alias_map[a] for a in aliases if a in alias_map), None)
            if staged is not None:
                canonical, state = staged, states[staged]
            else:
                canonical, state = self._resolve(aliases, result.sender)
            for alias in aliases:
                alias_map[alias] = canonical
            plan.orders.update(aliases)
            plan.orders.add(canonical)
            states[canonical] = state
            known = bool(state) or self._has_items(plan, canonical)
            self._group(plan, group, canonical, state, known, now, seq)
            if state:
                # The canonical hash lists the aliases pointing to it, so that the state
                # of an order left without items can be settled without a scan
                # (store/lua/release_orders.lua).
                listed = set(json.loads(state.get("aliases") or "[]"))
                named = {a for a in aliases if a != canonical}
                if not named <= listed:
                    state["aliases"] = json.dumps(sorted(listed | named))
                ttl = self.settings.order_state_retention_s
                if state.get("final"):
                    ttl = max(
                        retention_s(self.settings, state["final"]) + 86400,
                        self.settings.final_order_retention_s,
                    )
                elif self._has_items(plan, canonical):
                    ttl = 0  # the sequencer PERSISTs: alive as long as its items
                plan.order_states[self.keys.order(canonical)] = (state, ttl)
                for alias in aliases:
                    if alias != canonical:
                        plan.order_states[self.keys.order(alias)] = ({"canonical": canonical}, ttl)
        return plan

    def read_ahead(self, results: list[MappingResult]) -> None:
        """Read the state and item ids of every order these messages name, in one round
        trip, for the plans that follow. Valid only until something is written: the
        sequencer calls it for each run it plans, before the run's single write."""
        self._read_ahead = {}
        self._patients = {}
        names = {a for r in results for g in r.groups for a in order_aliases(r.scope, g)}
        names |= {s for s in map(_stripped, names) if s}
        patients = {_patient_key(mi.attrs) for r in results for g in r.groups for mi in g.items}
        patients.discard(None)
        if patients:
            self._read_patients(sorted(p for p in patients if p))
        if names:
            self.read_ahead_of(sorted(names))

    def read_ahead_of(self, aliases: list[str]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for alias in aliases:
            pipe.hgetall(self.keys.order(alias))
            pipe.smembers(self.keys.index("order", alias))
        replies = pipe.execute()
        for alias, data, ids in zip(aliases, replies[0::2], replies[1::2], strict=True):
            self._read_ahead[alias] = (data, sorted(m.decode() for m in ids))

    def _resolve(self, aliases: list[str], sender: str = "") -> tuple[str, dict[str, str]]:
        """(canonical order key, its state) for the first alias already known.

        An order stored by a release before the namespace and the global scope were
        part of its name (see :mod:`bridge.worker.migrations`) is found by its number
        alone: a name without the namespace counts when the upgrade marked it ``legacy``,
        or when orders are scoped by sender (then it is exactly the key that release
        wrote); a number the upgrade found under two senders (``ambiguous``) is looked
        up under this message's sender only, as that release did."""
        legacy = {a: s for a in aliases if (s := _stripped(a))}
        missing = [a for a in [*aliases, *legacy.values()] if a not in self._read_ahead]
        if missing:
            self.read_ahead_of(missing)
        candidates: list[str] = []
        ambiguous = False
        for alias in aliases:
            for name in (alias, legacy.get(alias)):
                if name is None:
                    continue
                data = self._read_ahead[name][0]
                if not data:
                    continue
                if data.get(b"ambiguous") == b"1" and sender:
                    ambiguous = True
                    candidates.append(f"{sender}|{name}")
                elif name == alias or data.get(b"legacy") == b"1" or alias.count("|") > 1:
                    candidates.append(name)
        extra = [c for c in candidates if c not in self._read_ahead]
        if extra:
            self.read_ahead_of(extra)
        for alias in candidates:
            data = self._read_ahead[alias][0]
            if data and data.get(b"ambiguous") != b"1":
                text = {k.decode(): v.decode() for k, v in data.items()}
                canonical = text.get("canonical", alias)
                if canonical != alias:
                    full = self.r.hgetall(self.keys.order(canonical))
                    text = {k.decode(): v.decode() for k, v in full.items()} or {
                        "canonical": canonical
                    }
                return canonical, text
        # No state hash (expired under an older release, or lost): the store's order index
        # still knows the order while it has items.
        for alias in aliases:
            ids = self._order_ids(alias)
            if ids:
                held = any(ris_view(it).hidden for it in self.store.load(ids))
                return alias, {"canonical": alias, "hidden": "1" if held else ""}
        # A number several senders used before the upgrade stays scoped by sender.
        return (f"{sender}|{aliases[0]}" if ambiguous else aliases[0]), {}

    def _live_items(self, plan: Plan, canonical: str) -> bool:
        return any(it.status not in FINAL_SPS_STATUSES for it in self._items_of(plan, canonical))

    # -- patients (ADT) and merges ---------------------------------------------------------
    def _read_patients(self, keys: list[str]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self.keys.patient(key))
        for key, data in zip(keys, pipe.execute(), strict=True):
            self._patients[key] = data

    def survivor(self, key: str) -> str | None:
        """The patient ``key`` (``<issuer>|<id>``) was merged into, following a chain of
        merges; None when it was not merged."""
        seen = {key}
        current = key
        for _ in range(16):  # merges chain rarely; a loop in the records must not hang
            if current not in self._patients:
                self._read_patients([current])
            target = self._patients[current].get(b"survivor")
            if not target:
                return None if current == key else current
            current = target.decode()
            if current in seen:
                log.warning("patient.merge_loop", extra=fields(hops=len(seen)))
                return None
            seen.add(current)
        return current

    def _redirect(self, plan: Plan, group: MappedGroup, what: dict[str, Any]) -> None:
        """An order naming a patient that has been merged (or whose identifier changed) is
        applied to the surviving patient: its Patient ID and issuer are rewritten."""
        for mi in group.items:
            key = _patient_key(mi.attrs)
            target = self.survivor(key) if key else None
            if target is None:
                continue
            issuer, _, pid = target.partition("|")
            mi.attrs["PatientID"] = pid
            if "IssuerOfPatientID" in mi.attrs or issuer:
                mi.attrs["IssuerOfPatientID"] = issuer
            plan.logs.append((logging.WARNING, "order.patient_redirected",
                              fields(**what, anomaly="merged_patient_redirect")))  # fmt: skip

    def _patient_items(self, plan: Plan, pid: str, issuer: str) -> list[WorklistItem]:
        """Open (not final) items of a patient, staged versions first. Same issuer, or
        no issuer on one side (Patient ID came without one)."""
        ids = set(self.store.ids_for("pid", pid))
        ids |= {i for i, it in plan.upserts.items() if it.attrs.get("PatientID") == pid}
        staged = [plan.upserts[i] for i in sorted(ids) if i in plan.upserts]
        stored = list(self.store.load(sorted(i for i in ids if i not in plan.upserts)))
        out = []
        for it in [*staged, *stored]:
            if it.attrs.get("PatientID") != pid or it.status in FINAL_SPS_STATUSES:
                continue
            theirs = str(it.attrs.get("IssuerOfPatientID") or "")
            if issuer and theirs and theirs != issuer:
                continue
            out.append(it)
        return out

    def _plan_patient(self, plan: Plan, event: PatientEvent, now: float, seq: int) -> None:
        """An ADT event: update the open items of each patient it names, or move the open
        items of a merged patient to the survivor and record the merge (kept
        ``worker.patient_merge_retention_s``, 0 = for good) so that a later order naming
        the merged identifier reaches the survivor. Final items keep what they were
        performed with. A patient without items is normal in a full ADT feed: counted,
        AA."""
        what = {"event": event.event, "action": event.action}
        plan.orders.add("patient")  # planned alone in its run (see apply._plan_run)
        if event.action == "ignore":
            plan.logs.append((logging.INFO, "patient.ignored",
                              fields(**what, patient_event="ignored")))  # fmt: skip
            return
        for p in event.patients:
            if event.action in ("merge", "change_id"):
                old = f"{p.merged_issuer or p.issuer}|{p.merged_pid}"
                new = f"{p.issuer}|{p.pid}"
                if old == new:
                    continue
                ttl = self.settings.patient_merge_retention_s
                record = {"survivor": new, "event": event.event, "at": repr(now)}
                plan.order_states[self.keys.patient(old)] = (record, ttl)
                # A record that pointed the survivor elsewhere would make a loop.
                self._patients[old] = {k.encode(): v.encode() for k, v in record.items()}
                items = self._patient_items(plan, p.merged_pid, p.merged_issuer or p.issuer)
                for it in items:
                    it.attrs["PatientID"] = p.pid
                    if "IssuerOfPatientID" in it.attrs or p.issuer:
                        it.attrs["IssuerOfPatientID"] = p.issuer
                    it.attrs.update(p.attrs)
                outcome = "merged" if items else "merged_no_items"
            else:
                items = self._patient_items(plan, p.pid, p.issuer)
                for it in items:
                    it.attrs.update(p.attrs)
                    it.attrs.update(p.visit)
                outcome = "updated" if items else "no_items"
            for it in items:
                it.seq = seq
                it.updated_at = now
                plan.upserts[it.item_id] = it
            plan.events.append(f"{event.action}:{len(items)}")
            plan.logs.append((logging.INFO, f"patient.{outcome}",
                              fields(**what, items=len(items), patient_event=outcome)))  # fmt: skip

    # -- MPPS ------------------------------------------------------------------------------
    def _linked(self, ref: dict[str, str]) -> list[str]:
        """Item ids one Scheduled Step Attributes item names: Study Instance UID + RPID +
        SPS ID, else the Accession Number (with the SPS ID when that narrows it)."""
        k = self.keys
        suid, rpid = ref.get("StudyInstanceUID", ""), ref.get("RequestedProcedureID", "")
        spsid, acc = ref.get("ScheduledProcedureStepID", ""), ref.get("AccessionNumber", "")
        if suid and rpid and spsid:
            ids = self.r.sinter([k.index("suid", suid), k.index("rpid", rpid),
                                 k.index("spsid", spsid)])  # fmt: skip
            if ids:
                return sorted(i.decode() for i in ids)
        if acc:
            if spsid:
                ids = self.r.sinter([k.index("acc", acc), k.index("spsid", spsid)])
                if ids:
                    return sorted(i.decode() for i in ids)
            return self.store.ids_for("acc", acc)
        return []

    def _plan_mpps(self, plan: Plan, ev: MppsEvent, now: float, seq: int) -> None:
        """A modality's MPPS report (PS3.4 F.7; IHE RAD-6/RAD-7): the SPS it names go
        STARTED (IN PROGRESS), COMPLETED or DISCONTINUED, or back to SCHEDULED when it
        was discontinued as the wrong worklist entry (110514). The item follows the latest
        MPPS that names it (the append case). An item the RIS finished (CA, DC) is left
        alone. What was linked, and a Patient ID that differs, is written to the MPPS
        instance for ``mpps show``."""
        plan.orders.add("mpps")  # planned alone in its run (see apply._plan_run)
        what = {"mpps": ev.uid, "mpps_status": ev.status}
        target = MPPS_TO_SPS.get(ev.status)
        back = ev.status == "DISCONTINUED" and ev.reason_code == WRONG_ENTRY
        unscheduled = all(
            not r.get("ScheduledProcedureStepID") and not r.get("RequestedProcedureID")
            for r in ev.refs
        )
        linked: list[str] = []
        if not unscheduled:
            for ref in ev.refs:
                if not ref.get("ScheduledProcedureStepID") and not ref.get("RequestedProcedureID"):
                    continue  # an unscheduled step beside scheduled ones links nothing
                linked += [i for i in self._linked(ref) if i not in linked]
        items = [plan.upserts.get(i) for i in linked]
        loaded = {it.item_id: it for it in self.store.load([i for i in linked
                                                            if i not in plan.upserts])}
        mismatch: list[str] = []
        changed: list[WorklistItem] = []
        for iid, staged in zip(linked, items, strict=True):
            it = staged or loaded.get(iid)
            if it is None or target is None:
                continue
            if _other_patient(ev, it):
                mismatch.append(iid)
            it = ris_view(it)  # the idle timeout's status is the bridge's, not the RIS's
            if it.status in FINAL_SPS_STATUSES and not it.extra.get("mpps"):
                plan.logs.append((logging.WARNING, "mpps.item_final",
                                  fields(**what, item=iid, status=it.status)))  # fmt: skip
                continue
            holder = (it.extra.get("mpps") or {}).get("uid")
            if ev.status != "IN PROGRESS" and holder and holder != ev.uid:
                # A later MPPS took the step over (append case): this older one's end does
                # not change it.
                plan.logs.append((logging.INFO, "mpps.superseded",
                                  fields(**what, item=iid, by=holder)))  # fmt: skip
                continue
            if back:
                it.sps[STATUS_KEY] = SpsStatus.SCHEDULED.value
                it.extra.pop("mpps", None)
            else:
                it.sps[STATUS_KEY] = target
                it.extra["mpps"] = {"uid": ev.uid, "status": ev.status}
            it.seq = seq
            it.updated_at = now
            plan.upserts[iid] = it
            if it.status in FINAL_SPS_STATUSES:
                plan.expire_at[iid] = now + retention_s(self.settings, it.status)
            else:
                plan.expire_at.pop(iid, None)
            changed.append(it)
        if changed and self.status_template is not None:
            self._status_back(plan, changed, now)
        outcome = "unscheduled" if unscheduled else "linked" if linked else "unlinked"
        record = {
            "items": json.dumps(linked),
            "unscheduled": "1" if unscheduled else "",
            "patient_mismatch": json.dumps(mismatch),
            "applied_status": (SpsStatus.SCHEDULED.value if back else target or ""),
            "applied_at": repr(now),
        }
        # Onto the SCP's instance only (-2: skipped when it expired), its TTL kept.
        plan.order_states[self.keys.mpps(ev.uid)] = (record, -2)
        plan.events.append(f"mpps:{outcome}:{len(changed)}")
        plan.logs.append((logging.INFO, f"mpps.{outcome}",
                          fields(**what, items=len(changed), mpps_outcome=outcome)))  # fmt: skip
        if mismatch:
            plan.logs.append((logging.WARNING, "mpps.patient_mismatch",
                              fields(**what, items=",".join(mismatch),
                                     mpps_mismatch=len(mismatch))))  # fmt: skip

    def _status_back(self, plan: Plan, changed: list[WorklistItem], now: float) -> None:
        """Queue a status message for each order whose status (ORC-5, from all its
        items) a modality's report changed (:mod:`bridge.worker.status_messages`)."""
        assert self.status_template is not None
        for order_key in sorted({it.order_key for it in changed if it.order_key}):
            ids = set(self.store.ids_for("order", order_key))
            ids |= {i for i, it in plan.upserts.items() if it.order_key == order_key}
            stored = {it.item_id: ris_view(it)
                      for it in self.store.load(sorted(ids - set(plan.upserts)))}
            items = sorted(
                (plan.upserts.get(i) or stored[i] for i in ids if i in plan.upserts or i in stored),
                key=lambda it: (int(it.extra.get("obr") or 0), it.item_id),
            )
            status = order_status(items)
            sent = self.r.hget(self.keys.order(order_key), "out_status")
            if not status or (sent and sent.decode() == status):
                continue
            first = items[0].attrs
            control_id, raw = render(
                self.status_template, items,
                str(first.get("PlacerOrderNumberImagingServiceRequest") or ""),
                str(first.get("FillerOrderNumberImagingServiceRequest") or ""), status, now,
            )  # fmt: skip
            plan.outbound.append(OutboundRecord(raw, order_key, control_id,
                                                self.status_template.message_type, now))
            state_key = self.keys.order(order_key)
            fields_, ttl = plan.order_states.get(state_key, ({}, -1))
            plan.order_states[state_key] = ({**fields_, "out_status": status}, ttl)
            plan.logs.append((logging.INFO, "outbound.queued",
                              fields(order=order_key, control_id=control_id,
                                     order_status=status)))  # fmt: skip

    def _order_ids(self, order: str) -> list[str]:
        """Item ids of an order, from the ones read with the order states when possible
        (nothing is written while plans are made, so they stay valid; a round trip per
        call otherwise, three per new order before)."""
        read = self._read_ahead.get(order)
        return read[1] if read is not None else self.store.ids_for("order", order)

    def _has_items(self, plan: Plan, canonical: str) -> bool:
        # Staged items first: a NW/XO answers without a Redis round trip.
        return any(it.order_key == canonical for it in plan.upserts.values()) or bool(
            self._order_ids(canonical)
        )

    def _pair(
        self, action: str, canonical: str, group: MappedGroup, existing: list[WorklistItem]
    ) -> list[str]:
        """The item id each mapped item updates or creates, in OBR order.

        Same RPID + SPS ID → the same item. An XO may renumber procedures (new OBR-19 /
        OBR-20): an unpaired procedure then updates the unpaired existing item at the
        same OBR position (recorded in ``extra["obr"]``), so one procedure stays one item.
        """
        ids = [item_id(canonical, mi.rpid, mi.spsid) for mi in group.items]
        if action != "update":
            return ids
        if len(existing) == 1 and len(ids) == 1:
            return [existing[0].item_id]  # also items stored before positions were kept
        known = {it.item_id for it in existing}
        taken = {i for i in ids if i in known}
        free = {
            str(it.extra.get("obr")): it
            for it in existing
            # A procedure an earlier XO dropped is not a renumbering candidate.
            if it.item_id not in taken
            and it.extra.get("obr")
            and it.status not in FINAL_SPS_STATUSES
        }
        out = []
        for n, iid in enumerate(ids, start=1):
            old = None if iid in known else free.pop(str(n), None)
            out.append(old.item_id if old is not None else iid)
        return out

    def _items_of(self, plan: Plan, canonical: str) -> list[WorklistItem]:
        ids = set(self._order_ids(canonical))
        ids |= {i for i, it in plan.upserts.items() if it.order_key == canonical}
        staged = [plan.upserts[i] for i in sorted(ids) if i in plan.upserts]
        stored = [
            ris_view(it) for it in self.store.load(sorted(i for i in ids if i not in plan.upserts))
        ]
        return sorted([*staged, *stored], key=lambda it: it.item_id)

    def _group(
        self,
        plan: Plan,
        group: MappedGroup,
        canonical: str,
        state: dict[str, str],
        known: bool,
        now: float,
        seq: int,
    ) -> None:
        action, status = group.action, group.status
        reused = False
        event = fields(action=action, control=group.control, order_status=group.order_status)
        what = event["fields"]

        def note(level: int, name: str, anomaly: str = "", **extra: Any) -> None:
            logged = {**what, **extra}
            if anomaly:
                logged["anomaly"] = anomaly  # counted by emit_logs once written
            plan.logs.append((level, name, fields(**logged)))
            plan.events.append(anomaly or name)

        if action == "ignore":
            plan.logs.append((logging.INFO, "order.ignored", event))
            plan.events.append("ignored")
            return
        final = state.get("final")
        if final and action != "create":
            # A final order never comes back: a late or repeated message must not resurrect it.
            note(logging.WARNING, "order.already_final", "final_order_message", final=final)
            return
        if final and not _later(group.txn, state.get("final_txn")):
            # An NW sent before (or with) the final message, arriving after it: the exam
            # is not revived. Its items are written as the final status, so the record
            # says what the RIS sent and nothing reaches the default worklist.
            status = final
            note(logging.WARNING, "order.late_new_order", "late_new_order", final=final,
                 tombstone=bool(state.get("tombstone")))  # fmt: skip
        elif final and self.settings.reused_order_number == "ignore":
            note(logging.WARNING, "order.number_reused", "reused_number_ignored", final=final)
            return
        elif final:
            # A later NW with the number of a finished order: the RIS reused it.
            note(logging.INFO, "order.number_reused", "reused_number_new", final=final)
            # The old record ends here (fields are overwritten, not deleted, in Redis).
            state.update(final="", final_txn="", tombstone="", hidden="", status="",
                         out_status="")
            reused = True
        elif action != "create" and not known:
            plan.verdict = (
                Hl7Error.UNKNOWN_KEY,
                "ORC-2",
                "no order with this placer or filler order number",
            )
            if action == "final":
                # Cancelled before we saw it: remember, so the NW that may still be on its
                # way is not applied as a live exam.
                state.update(final=status, tombstone="1")
                if group.txn is not None:
                    state["final_txn"] = repr(group.txn)
                note(logging.WARNING, "order.tombstone", "tombstone", final=status)
                state["canonical"] = canonical
                state["last_control"] = group.control
            else:
                note(logging.WARNING, "order.unknown", "unknown_order")
            return
        elif action == "create" and self._live_items(plan, canonical):
            if self.settings.repeated_new_order == "reject":
                plan.reject = (
                    Hl7Error.DUPLICATE_KEY,
                    "ORC-2",
                    "NW for an order that is already scheduled "
                    "(worker.repeated_new_order = reject)",
                )
                return
            # The RIS sent the whole order again: the same procedures update in place,
            # the ones it no longer lists are discontinued (as for XO).
            action = "update"
            note(logging.INFO, "order.repeated_new_order", "repeated_new_order")
        if action in ("create", "update"):
            self._redirect(plan, group, what)
        existing = self._items_of(plan, canonical)
        touched: list[WorklistItem] = []
        dropped: list[WorklistItem] = []
        if action in ("create", "update"):
            by_id = {it.item_id: it for it in existing}
            ids = self._pair(action, canonical, group, existing)
            for n, (mi, iid) in enumerate(zip(group.items, ids, strict=True), start=1):
                old = by_id.get(iid) or plan.upserts.get(iid)
                if old is not None:
                    item = _merge(old, mi)
                elif action == "create" or mi.complete:
                    item = new_item(iid, canonical, mi)
                    # The idle timeout counts from the later of the SPS start and this.
                    item.extra["created_at"] = now
                    # A new procedure of a held order is held like the rest of it.
                    item.hidden = state.get("hidden") == "1"
                else:
                    plan.logs.append(
                        (logging.WARNING, "order.update_incomplete_item",
                         fields(missing=mi.missing))
                    )  # fmt: skip
                    continue
                item.extra["obr"] = n
                if reused:
                    item.extra.pop("mpps", None)  # the old exam's MPPS is not this one's
                if _mpps_holds(item, group):
                    pass  # the modality reported it: only CA, DC or OC may change it
                elif status:
                    item.sps[STATUS_KEY] = status
                elif not item.sps.get(STATUS_KEY) or item.status in FINAL_SPS_STATUSES:
                    # (A procedure an earlier XO dropped that the order lists again is
                    # scheduled again: the RIS says it is part of the order.)
                    item.sps[STATUS_KEY] = SpsStatus.SCHEDULED.value
                touched.append(item)
            if action == "update":
                # An XO carries the complete order (IHE RAD-13 order replace): a procedure
                # it no longer contains is discontinued, never left scheduled beside its
                # replacement.
                kept = set(ids)
                for it in existing:
                    if it.item_id not in kept and it.status not in FINAL_SPS_STATUSES:
                        it.sps[STATUS_KEY] = SpsStatus.DISCONTINUED.value
                        dropped.append(it)
            plan.events.append(f"{action}:{len(touched)}")
        elif action in ("status", "final", "hide", "show"):
            # A procedure dropped by an XO (DISCONTINUED) is finished: an order-level
            # status change must not bring it back.
            # CA, DC and OC also end what the modality reported as COMPLETED by MPPS.
            overrides = group.control in _RIS_OVERRIDES
            for it in existing:
                if it.status in FINAL_SPS_STATUSES and not (overrides and it.extra.get("mpps")):
                    continue
                if action in ("status", "final"):
                    if _mpps_holds(it, group):
                        continue
                    it.sps[STATUS_KEY] = status
                    it.extra.pop("mpps", None)
                elif action == "hide":
                    it.hidden = True
                else:
                    it.hidden = False
                touched.append(it)
            plan.events.append(f"{action}:{len(touched)}")
        for it in touched:
            it.seq = seq
            it.updated_at = now
            plan.upserts[it.item_id] = it
            # Retention counts from the item's last update, re-armed by every update.
            if it.status in FINAL_SPS_STATUSES:
                plan.expire_at[it.item_id] = it.updated_at + retention_s(self.settings, it.status)
            else:
                plan.expire_at.pop(it.item_id, None)
        for it in dropped:
            it.seq = seq
            it.updated_at = now
            plan.upserts[it.item_id] = it
            plan.expire_at[it.item_id] = it.updated_at + retention_s(self.settings, it.status)
            plan.logs.append(
                (logging.INFO, "order.procedure_dropped",
                 fields(**event["fields"], item=it.item_id))
            )  # fmt: skip
        state["canonical"] = canonical
        state["last_control"] = group.control
        if group.txn is not None:
            state["txn"] = repr(group.txn)
        if status:
            state["status"] = status
        if action == "final":
            state["final"] = status
            if group.txn is not None:
                state["final_txn"] = repr(group.txn)
        if action in ("hide", "show"):
            state["hidden"] = "1" if action == "hide" else ""
        plan.logs.append(
            (logging.INFO, "order.applied", fields(**event["fields"], items=len(touched)))
        )


def _blank(keyword: str) -> Any:
    return [] if keyword.endswith("Sequence") else ""


def new_item(iid: str, canonical: str, mi: MappedItem) -> WorklistItem:
    """The item a mapped procedure creates (Type 2 absent attributes present and empty)."""
    attrs: dict[str, Any] = {}
    sps: dict[str, Any] = {}
    for key in mi.absent:
        if key.startswith("SPS."):
            sps[key[4:]] = _blank(key[4:])
        else:
            attrs[key] = _blank(key)
    for key, value in mi.defaults.items():
        if key.startswith("SPS."):
            sps[key[4:]] = value
        else:
            attrs[key] = value
    attrs.update(mi.attrs)
    sps.update(mi.sps)
    attrs[SPS] = [sps]
    return WorklistItem(item_id=iid, attrs=attrs, order_key=canonical, worklist=mi.worklist or "")


def _merge(old: WorklistItem, mi: MappedItem) -> WorklistItem:
    """Present values overwrite (``""`` clears), absent ones are left alone, create-only
    defaults fill only what is still empty (a generated UID never replaces one)."""
    attrs = dict(old.attrs)
    sps = dict(old.sps)
    for key, value in mi.defaults.items():
        target, kw = (sps, key[4:]) if key.startswith("SPS.") else (attrs, key)
        if target.get(kw) in (None, "", []):
            target[kw] = value
    attrs.update(mi.attrs)
    sps.update(mi.sps)
    attrs[SPS] = [sps]
    return WorklistItem(
        item_id=old.item_id,
        attrs=attrs,
        order_key=old.order_key,
        # A new label (e.g. the XO moved the procedure to another room) moves the item.
        worklist=old.worklist if mi.worklist is None else mi.worklist,
        hidden=old.hidden,
        seq=old.seq,
        updated_at=old.updated_at,
        extra=dict(old.extra),
    )
