"""Run a :class:`~bridge.mapping.schema.Mapping` over a parsed ORM^O01.

The message is cut into order groups (one per ORC; the OBRs after it are its
procedures, each with the segments that follow it up to the next OBR/ORC). Each group
gets its lifecycle action from ORC-1 × ORC-5; ``create``/``update`` groups map one
item (one Scheduled Procedure Step) per OBR.

Per attribute the result distinguishes three states, because an update must not wipe
what the sender did not send:

* a value (also ``""`` when the HL7 field was ``""``: "clear this value");
* absent (the field is not in the message): on create the attribute is stored
  present-but-empty (Type 2), on update the stored value is left alone;
* create-only defaults (``default:`` values and generated Study Instance UIDs), used
  only when an item is created.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from bridge.core import localzone
from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.hl7.message import Message, Node, Segment
from bridge.worker.mapping import transforms as tf
from bridge.worker.mapping.schema import Mapping, Rule, Source

#: Segments that belong to an order group; a path never reaches another group's copy.
GROUP_SEGMENTS = frozenset(
    {"ORC", "OBR", "NTE", "ZDS", "TQ1", "TQ2", "OBX", "DG1", "BLG", "CTI", "IPC"}
)

#: Namespace of generated Study Instance UIDs (2.25 = UUID-derived, PS3.5 B.2).
_UID_NAMESPACE = uuid.UUID("5f0f5c1e-7a43-4b0e-9f3e-6d1c0a1b2c3d")

_ABSENT = object()


@dataclass
class MappedItem:
    """One SPS worth of attributes (top level + the SPS item)."""

    attrs: dict[str, Any]
    sps: dict[str, Any]
    absent: list[str]  # keywords not in the message; SPS ones prefixed "SPS."
    defaults: dict[str, Any]  # create-only values, same key convention
    complete: bool  # every Type 1 attribute has a value (or a create-only default)
    missing: str = ""  # first missing Type 1 location when not complete
    #: Logical worklist label from the mapping's ``worklist`` rule; None = not given
    #: (created items get the default worklist "", updated ones keep theirs).
    worklist: str | None = None

    @property
    def rpid(self) -> str:
        return str(
            self.attrs.get("RequestedProcedureID")
            or self.defaults.get("RequestedProcedureID")
            or ""
        )

    @property
    def spsid(self) -> str:
        return str(
            self.sps.get("ScheduledProcedureStepID")
            or self.defaults.get("SPS.ScheduledProcedureStepID")
            or ""
        )


@dataclass
class MappedGroup:
    control: str  # ORC-1
    order_status: str  # ORC-5
    action: str  # lifecycle action
    status: str  # SPS status the action sets ("" = keep)
    #: Placer / filler order number (ORC-2 / ORC-3, else OBR-2 / OBR-3): EI.1 entity
    #: identifier and EI.2 namespace ID, which together identify the order.
    placer: str
    filler: str
    placer_ns: str = ""
    filler_ns: str = ""
    #: The sender's transaction time (ORC-9, else MSH-7) as epoch seconds; None when
    #: neither is a valid timestamp. Tells a late message from a new one.
    txn: float | None = None
    items: list[MappedItem] = field(default_factory=list)


@dataclass
class MappedPatient:
    """One patient an ADT event names (one PID, with its MRG for a merge)."""

    pid: str  # Patient ID by the mapping's PatientID rule (the issuer rule)
    issuer: str  # Issuer of Patient ID
    #: Patient-level and visit-level values the event carries (keyword → value; "" =
    #: clear); keywords not in the message are absent and left alone.
    attrs: dict[str, Any] = field(default_factory=dict)
    visit: dict[str, Any] = field(default_factory=dict)
    #: The identifier MRG-1 names (merge, change_id): the same issuer rule as PID-3.
    merged_pid: str = ""
    merged_issuer: str = ""


@dataclass
class PatientEvent:
    """What an ADT message says about patients (HL7 v2.5 ch. 3)."""

    event: str  # MSH-9.2 / EVN-1, e.g. A08
    action: str  # schema.PATIENT_ACTIONS
    patients: list[MappedPatient] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatientEvent:
        return cls(data["event"], data["action"], [MappedPatient(**p) for p in data["patients"]])


@dataclass
class MppsEvent:
    """A status change a modality reported by MPPS (PS3.4 Annex F), queued by the SCP as
    an internal message (``bridge.intake.submit.queue_internal``, payload ``kind: mpps``)."""

    uid: str  # Affected SOP Instance UID of the MPPS
    event: str  # create | set
    status: str  # IN PROGRESS | COMPLETED | DISCONTINUED
    reason_code: str = ""  # (0040,0281) code value, e.g. 110514
    refs: list[dict[str, str]] = field(default_factory=list)  # Scheduled Step Attributes
    patient_id: str = ""
    issuer: str = ""
    calling_ae: str = ""
    at: float = 0.0

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> MppsEvent:
        refs = [{k: str(v or "") for k, v in r.items()} for r in data.get("refs") or []]
        return cls(str(data["uid"]), str(data.get("event", "")), str(data["status"]),
                   str(data.get("reason_code") or ""), refs, str(data.get("PatientID") or ""),
                   str(data.get("IssuerOfPatientID") or ""), str(data.get("calling_ae") or ""),
                   float(data.get("at") or 0.0))  # fmt: skip


@dataclass
class MappingResult:
    sender: str  # MSH-3^MSH-4
    groups: list[MappedGroup]
    warnings: list[str]
    charset: str
    version: str
    #: Namespace of order numbers: "" (global: the placer number with its namespace
    #: identifies the order, whatever interface it came through) or the sender when the
    #: mapping says ``order_scope: sender``.
    scope: str = ""
    #: The warnings the worker logs (see ``_Ctx.alerts``); all of them are in ``warnings``.
    alerts: list[str] = field(default_factory=list)
    #: An ADT message: the patients it updates or merges (then ``groups`` is empty).
    patient: PatientEvent | None = None
    #: An MPPS status change (then ``groups`` is empty).
    mpps: MppsEvent | None = None

    def to_dict(self) -> dict[str, Any]:
        # dataclasses.asdict deep-copies every value: ~5 % of a message's cost. The
        # values are JSON-ready already, so a shallow conversion is enough.
        return {
            "sender": self.sender,
            # An MPPS outcome has no groups: None (not []) so that a worker of an earlier
            # release, which would apply it as an empty order and AA it, fails to read it
            # and dead-letters it (replayable) instead.
            "groups": None if self.mpps is not None else
                      [{**vars(g), "items": [dict(vars(i)) for i in g.items]} for g in self.groups],
            "warnings": self.warnings,
            "charset": self.charset,
            "version": self.version,
            "scope": self.scope,
            "alerts": self.alerts,
            "patient": None if self.patient is None else {
                "event": self.patient.event, "action": self.patient.action,
                "patients": [dict(vars(p)) for p in self.patient.patients],
            },
            "mpps": None if self.mpps is None else dict(vars(self.mpps)),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MappingResult:
        groups = [
            MappedGroup(**{**g, "items": [MappedItem(**i) for i in g["items"]]})
            for g in data["groups"] or ()
        ]
        # An outcome parsed by a release before order_scope was scoped by its sender.
        scope = data["scope"] if "scope" in data else data["sender"]
        patient = data.get("patient")
        mpps = data.get("mpps")
        return cls(data["sender"], groups, data["warnings"], data["charset"], data["version"],
                   scope, data.get("alerts", []),
                   None if patient is None else PatientEvent.from_dict(patient),
                   None if mpps is None else MppsEvent(**mpps))  # fmt: skip


@dataclass
class _Group:
    orc: Segment | None
    head: list[Segment]  # ORC and segments before the first OBR
    blocks: list[list[Segment]]  # each OBR with its trailing segments


def split_groups(msg: Message) -> list[_Group]:
    groups: list[_Group] = []
    current: _Group | None = None
    for seg in msg.segments:
        if seg.name == "ORC":
            current = _Group(seg, [seg], [])
            groups.append(current)
        elif seg.name == "OBR":
            if current is None:
                current = _Group(None, [], [])
                groups.append(current)
            current.blocks.append([seg])
        elif current is not None and (seg.name in GROUP_SEGMENTS or seg.name.startswith("Z")):
            if current.blocks:
                current.blocks[-1].append(seg)
            else:
                current.head.append(seg)
    return groups


_TRUE = frozenset({"true", "yes", "on", "1"})


class _Ctx:
    def __init__(
        self,
        msg: Message,
        mapping: Mapping,
        zone: ZoneInfo | None,
        scope: list[Segment],
        obr_suffix: str = "",
    ) -> None:
        self.msg = msg
        self.mapping = mapping
        self.zone = zone
        self.scope = scope
        #: ``.<set ID>`` of this OBR when the order group has several, else "".
        self.obr_suffix = obr_suffix
        #: Resolve every path inside ``scope`` only (a PID/MRG pair of an ADT^A40).
        self.scope_only = False
        #: The HL7 field the last evaluated value came from (named in errors).
        self.source_location = ""
        self.values: dict[str, Any] = {}
        self.warnings: list[str] = []
        #: Warnings the worker logs (last-resort fallbacks, missing values that make an
        #: item hard to find): keywords and HL7 locations only, never values.
        self.alerts: list[str] = []
        self.used_segments: set[str] = set()


def _nodes(ctx: _Ctx, src: Source) -> list[Node] | list[str]:
    if src.const is not None:
        return [src.const]
    if src.ref:
        v = ctx.values.get(src.ref, _ABSENT)
        if v is _ABSENT or v is None:
            return []
        return [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)]
    assert src.path is not None
    ctx.used_segments.add(src.path.segment)
    scoped = ctx.scope_only or src.path.segment in GROUP_SEGMENTS
    return ctx.msg.resolve(src.path, ctx.scope, scoped_only=scoped)


def _transform(ctx: _Ctx, rule: Rule, src: Source, node: Node | str) -> Any:
    name = src.transform or rule.transform
    loc = src.location
    if isinstance(node, str):
        text = node
        if name in ("ts_date", "ts_time", "upper", "text", "full"):
            node_text = text
        else:
            return text
    else:
        node_text = node.full_text if name == "full" else node.text
    try:
        if name == "ts_date":
            return tf.ts_date(node_text, loc, ctx.zone if rule.zone == "convert" else None)
        if name == "ts_time":
            return tf.ts_time(node_text, loc, ctx.zone if rule.zone == "convert" else None)
    except tf.Partial:
        if rule.partial == "reject":
            raise MessageRejected(
                f"{loc} lacks the precision {rule.keyword} needs", Hl7Error.DATA_TYPE, loc
            ) from None
        ctx.warnings.append(f"{rule.keyword}: {loc} has reduced precision; left empty")
        return ""
    if isinstance(node, Node):
        if name == "xpn_pn":
            return tf.xpn_pn(node)
        if name == "xcn_pn":
            return tf.xcn_pn(node)
        if name == "code_item":
            return tf.code_item(node, src.components or rule.components, rule.scheme_default)
        if name == "charset":
            return tf.charset(node)
    if name == "upper":
        return node_text.upper()
    return node_text


def _post(ctx: _Ctx, rule: Rule, src: Source, value: Any) -> Any:
    """Regex extract then table lookup; None = no value from this source."""
    if not isinstance(value, str):
        return value
    pattern = src.regex or rule.regex
    if pattern and value:
        m = re.search(pattern, value)
        if not m:
            ctx.warnings.append(f"{rule.keyword}: {src.location} did not match the regex; skipped")
            return None
        value = m.group(1) if m.re.groups else m.group(0)
    table_name = src.table or rule.table
    if table_name and value != "":
        table = ctx.mapping.tables[table_name]
        if value in table:
            return table[value]
        policy = src.on_missing or rule.on_missing
        if policy == "reject":
            raise MessageRejected(
                f"{src.location} holds a code not in table {table_name}",
                Hl7Error.TABLE_VALUE_NOT_FOUND,
                src.location,
                detail=f"allowed: {', '.join(sorted(table))}",
            )
        if policy == "skip":
            return None
        if policy == "empty":
            ctx.warnings.append(
                f"{rule.keyword}: {src.location} code not in table {table_name}; left empty"
            )
            return ""
    return value


def _evaluate(ctx: _Ctx, rule: Rule) -> Any:
    """The rule's value, ``""`` for an HL7 null, or _ABSENT."""
    ctx.source_location = ""
    value = _first_value(ctx, rule)
    if value is _ABSENT and rule.missing == "warn":
        ctx.alerts.append(f"{rule.keyword}: not in the message; left empty")
    return value


def _usable(ctx: _Ctx, rule: Rule, src: Source, values: list[Any]) -> list[Any] | None:
    """The source's values after its own options, or None to try the next source."""
    limit = rule.max_length
    if src.if_fits and limit and any(isinstance(v, str) and len(v) > limit for v in values):
        ctx.warnings.append(f"{rule.keyword}: {src.location} longer than {rule.max_length}"
                            " characters; not used")  # fmt: skip
        return None
    if src.per_obr and ctx.obr_suffix:
        room = (rule.max_length or 10_000) - len(ctx.obr_suffix)
        values = [f"{v[:room]}{ctx.obr_suffix}" if isinstance(v, str) and v else v
                  for v in values]  # fmt: skip
    if src.warn:
        ctx.alerts.append(f"{rule.keyword}: taken from {src.location}, a last-resort fallback")
    return values


def _first_value(ctx: _Ctx, rule: Rule) -> Any:
    collected: list[Any] = []
    for src in rule.sources:
        if src.when and ctx.mapping.vars.get(src.when, "").strip().lower() not in _TRUE:
            continue
        nodes = _nodes(ctx, src)
        if not nodes:
            continue
        if isinstance(nodes[0], Node) and nodes[0].is_null:
            if rule.join is None and not collected:
                return ""
            continue
        values = []
        candidates: list[Node] | list[str] = (
            nodes if (rule.multi or rule.join is not None) else nodes[:1]
        )
        if (src.transform or rule.transform) == "xpn_pn_groups" and isinstance(nodes[0], Node):
            # One value from every repetition (XPN-8 groups), not one per repetition.
            reps = [n for n in nodes if isinstance(n, Node) and not n.is_null]
            candidates = [tf.xpn_pn_groups(reps)]
        for node in candidates:
            if isinstance(node, Node) and node.is_null:
                continue
            v = _post(ctx, rule, src, _transform(ctx, rule, src, node))
            if v is not None and v != "":
                values.append(v)
            elif v == "":
                values.append("")
        values = [v for v in values if v != ""] or values[:1]
        if not values:
            continue
        if values != [""] and (src.if_fits or src.per_obr or src.warn):
            usable = _usable(ctx, rule, src, values)
            if usable is None:
                continue
            values = usable
        if rule.join is not None:
            collected.extend(v for v in values if v != "")
            continue
        ctx.source_location = src.location
        return _finish(rule, values)
    if rule.join is not None and collected:
        return rule.join.join(str(v) for v in collected)
    return _ABSENT


def _finish(rule: Rule, values: list[Any]) -> Any:
    if rule.vr == "SQ":
        return [v for v in values if isinstance(v, dict)]
    if rule.multi:
        return [v for v in values if isinstance(v, str)]
    return values[0]


def _where(ctx: _Ctx, rule: Rule) -> str:
    """The HL7 field the value of ``rule`` just evaluated came from (for an error about
    that value); the rule's first field for a constant, a reference or a default."""
    loc = ctx.source_location
    return loc if loc and loc != "const" and not loc.startswith("@") else rule.location


def _missing_at(ctx: _Ctx, rule: Rule) -> str:
    """The HL7 field to name for a missing value: the first source whose segment the
    message has (OBR-19 for an ORM, IPC-2 for an OMI), else the rule's first field."""
    present = {s.name for s in ctx.scope} | {s.name for s in ctx.msg.segments}
    for src in rule.sources:
        if src.path is not None and src.path.segment in present:
            return src.path.location
    return rule.location


_CONTROL = re.compile(r"[\x00-\x1f]")


def _fit(ctx: _Ctx, rule: Rule, value: Any) -> Any:
    """Enforce the VR: no control characters outside text VRs, no backslash in
    multi-valuable VRs, maximum length (truncate with a warning or reject)."""
    if isinstance(value, list):
        return [
            _fit(ctx, rule, v) if isinstance(v, str) else _fit_code(ctx, rule, v) for v in value
        ]
    if not isinstance(value, str) or value == "":
        return value
    if rule.vr not in ("LT", "ST", "UT"):
        if _CONTROL.search(value):
            value = _CONTROL.sub(" ", value).strip()
        if "\\" in value:
            ctx.warnings.append(f"{rule.keyword}: backslash replaced (DICOM value separator)")
            value = value.replace("\\", "/")
    if rule.vr == "UI" and not tf.valid_uid(value):
        raise MessageRejected(
            f"{_where(ctx, rule)} is not a valid DICOM UID", Hl7Error.DATA_TYPE, _where(ctx, rule)
        )
    limit = rule.max_length
    if not limit:
        return value
    groups = value.split("=") if rule.vr == "PN" else [value]
    if all(len(g) <= limit for g in groups):
        return value
    if rule.too_long == "reject":
        raise MessageRejected(
            f"{_where(ctx, rule)} is longer than {limit} characters ({rule.keyword}, VR {rule.vr})",
            Hl7Error.DATA_TYPE,
            _where(ctx, rule),
        )
    ctx.warnings.append(f"{rule.keyword}: truncated to {limit} characters (VR {rule.vr})")
    return "=".join(g[:limit] for g in groups)


#: Code Sequence item attributes and their maximum lengths (SH 16, LO 64).
_CODE_LIMITS = {"CodeValue": 16, "CodingSchemeDesignator": 16, "CodeMeaning": 64}


def _fit_code(ctx: _Ctx, rule: Rule, item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    out = dict(item)
    for key, limit in _CODE_LIMITS.items():
        value = out.get(key)
        if isinstance(value, str) and len(value) > limit:
            ctx.warnings.append(f"{rule.keyword}: {key} truncated to {limit} characters")
            out[key] = value[:limit]
    return out


def study_uid(scope: str, order_id: str, rpid: str) -> str:
    """Deterministic Study Instance UID for an order without ZDS: ``2.25.<uuid5 int>``,
    so resends and updates of the same requested procedure keep the same UID, through
    whichever interface they arrive (``scope`` is "" unless orders are scoped by sender;
    items stored by earlier releases keep the UID they have)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{scope}|{order_id}|{rpid}').int}"


def _map_item(ctx: _Ctx, scope: str, order_id: str, require: bool) -> MappedItem:
    attrs: dict[str, Any] = {}
    sps: dict[str, Any] = {}
    absent: list[str] = []
    defaults: dict[str, Any] = {}
    missing = ""
    generated: list[tuple[Rule, str]] = []
    # (in_sps, rule) pairs: testing ``rule in sps_rules`` compared dataclasses field by
    # field, ~20 % of the mapping time.
    ordered = [(False, r) for r in ctx.mapping.rules] + [(True, r) for r in ctx.mapping.sps_rules]
    for in_sps, rule in ordered:
        key = f"SPS.{rule.keyword}" if in_sps else rule.keyword
        target = sps if in_sps else attrs
        value = _evaluate(ctx, rule)
        if value is _ABSENT:
            absent.append(key)
            if rule.generate:
                generated.append((rule, key))
            elif rule.default is not None:
                defaults[key] = _fit(ctx, rule, rule.default)
                ctx.values[rule.keyword] = defaults[key]
                ctx.warnings.append(f"{rule.keyword}: not in the message; default used")
            elif rule.required and not missing:
                missing = _missing_at(ctx, rule)
            continue
        value = _fit(ctx, rule, value)
        if rule.required and value in ("", []) and not missing:
            missing = _missing_at(ctx, rule)
        target[rule.keyword] = value
        ctx.values[rule.keyword] = value
    for rule, key in generated:
        rpid = str(attrs.get("RequestedProcedureID") or defaults.get("RequestedProcedureID") or "")
        defaults[key] = study_uid(scope, order_id, rpid)
        ctx.warnings.append(
            f"{rule.keyword}: not in the message; generated from the order identity"
        )
    item = MappedItem(attrs, sps, absent, defaults, complete=not missing, missing=missing)
    wl = ctx.mapping.worklist
    if wl is not None:
        label = _evaluate(ctx, wl)
        if isinstance(label, list):
            label = label[0] if label else ""
        if label is _ABSENT and wl.default is not None:
            label = wl.default
        if label is not _ABSENT:
            item.worklist = str(_fit(ctx, wl, label)).strip()
        if require and wl.required and not item.worklist:
            # An item in no called AE's worklist would be invisible to every modality.
            raise MessageRejected(
                f"no worklist for this item ({wl.location})",
                Hl7Error.REQUIRED_FIELD_MISSING,
                wl.location,
            )
    if require and missing:
        raise MessageRejected(
            f"required field {missing} is missing or empty",
            Hl7Error.REQUIRED_FIELD_MISSING,
            missing,
        )
    for group in ctx.mapping.one_of:
        have = [k for k in group if _filled(item, k)]
        if not have:
            loc = next(
                (
                    r.location
                    for r in (*ctx.mapping.rules, *ctx.mapping.sps_rules)
                    if r.keyword == group[0]
                ),
                group[0],
            )
            item.complete = False
            item.missing = item.missing or loc
            if require:
                raise MessageRejected(
                    f"required field {loc} is missing (one of {', '.join(group)})",
                    Hl7Error.REQUIRED_FIELD_MISSING,
                    loc,
                )
    return item


def _filled(item: MappedItem, keyword: str) -> bool:
    for container, key in (
        (item.attrs, keyword),
        (item.sps, keyword),
        (item.defaults, keyword),
        (item.defaults, f"SPS.{keyword}"),
    ):
        if container.get(key) not in (None, "", []):
            return True
    return False


def lifecycle_action(mapping: Mapping, control: str, order_status: str) -> tuple[str, str]:
    """ORC-1 × ORC-5 → (action, SPS status) from the mapping's lifecycle table."""
    entry = mapping.lifecycle.get(f"{control}/{order_status}") or mapping.lifecycle.get(
        f"{control}/*"
    )
    if entry is None:
        raise MessageRejected(
            "ORC-1/ORC-5 combination is not in the lifecycle table",
            Hl7Error.TABLE_VALUE_NOT_FOUND,
            "ORC-1" if not any(k.startswith(control + "/") for k in mapping.lifecycle) else "ORC-5",
        )
    action, _, status = entry.partition(":")
    return action, status


def _order_number(msg: Message, field: int, orc: Segment, obr: Segment | None) -> tuple[str, str]:
    """(EI.1 entity identifier, EI.2 namespace ID) of ORC-``field``, else OBR-``field``."""
    for seg in (orc, obr):
        if seg is None:
            continue
        number = msg.get(f"ORC-{field}.1" if seg is orc else f"OBR-{field}.1", [seg]).strip()
        if number:
            ns = msg.get(f"ORC-{field}.2" if seg is orc else f"OBR-{field}.2", [seg]).strip()
            return number, ns
    return "", ""


def transaction_time(msg: Message, orc: Segment, zone: ZoneInfo | None) -> float | None:
    """ORC-9 (date/time of transaction), else MSH-7, as epoch seconds; a timestamp
    without an offset is in the local zone. None when neither is a valid timestamp."""
    for path, scope in (("ORC-9.1", [orc]), ("MSH-7.1", None)):
        text = msg.get(path, scope).strip()
        if not text:
            continue
        try:
            when, _ = tf.parse_ts(text, path.rsplit(".", 1)[0])
        except MessageRejected:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone) if zone is not None else when
        return when.timestamp()
    return None


def _steps(block: list[Segment]) -> list[list[Segment]]:
    """The segments each Scheduled Procedure Step of an OBR is mapped from: one per IPC
    segment (OMI^O23, IHE RAD-4 v2.5.1 option: IPC-4 is the SPS), each seeing only its
    own IPC; the whole block when there is none (ORM^O01, OMG^O19)."""
    ipcs = [s for s in block if s.name == "IPC"]
    if not ipcs:
        return [block]
    rest = [s for s in block if s.name != "IPC"]
    return [[ipc, *rest] for ipc in ipcs]


def map_message(msg: Message, mapping: Mapping, local_zone: str = "UTC") -> MappingResult:
    """Map every order group of ``msg`` (ORM^O01, OMI^O23, OMG^O19), or the patients of
    an ADT message; raises MessageRejected (101/102/103) on the first permanent problem,
    naming the HL7 field, never its value. ``local_zone`` is ``worker.local_timezone``:
    an IANA name, or ``""`` for the host's zone."""
    zone = localzone.resolve(local_zone).zone
    sender = f"{msg.get('MSH-3')}^{msg.get('MSH-4')}"
    scope = sender if mapping.order_scope == "sender" else ""
    if msg.get("MSH-9.1").strip().upper() == "ADT":
        event = map_patient(msg, mapping, zone)
        return MappingResult(sender, [], [], msg.charset, msg.version, scope, [], event)
    warnings: list[str] = []
    alerts: list[str] = []
    groups: list[MappedGroup] = []
    used: set[str] = {"MSH", "ORC", "OBR"}
    parts = split_groups(msg)
    if not parts or all(p.orc is None for p in parts):
        raise MessageRejected(
            "the order has no ORC segment", Hl7Error.REQUIRED_FIELD_MISSING, "ORC-1"
        )
    for part in parts:
        orc = part.orc
        if orc is None:
            raise MessageRejected("an OBR precedes every ORC", Hl7Error.SEGMENT_SEQUENCE, "OBR")
        control = msg.leaf(orc.field(1).split(msg.comp)[0]).strip().upper()
        if not control:
            raise MessageRejected(
                "ORC-1 (order control) is empty", Hl7Error.REQUIRED_FIELD_MISSING, "ORC-1"
            )
        order_status = msg.leaf(orc.field(5).split(msg.comp)[0]).strip().upper()
        action, status = lifecycle_action(mapping, control, order_status)
        first_obr = part.blocks[0][0] if part.blocks else None
        placer, placer_ns = _order_number(msg, 2, orc, first_obr)
        filler, filler_ns = _order_number(msg, 3, orc, first_obr)
        if not placer and not filler:
            raise MessageRejected(
                "neither placer (ORC-2) nor filler (ORC-3) order number is present",
                Hl7Error.REQUIRED_FIELD_MISSING,
                "ORC-2",
            )
        group = MappedGroup(
            control, order_status, action, status, placer, filler, placer_ns, filler_ns,
            transaction_time(msg, orc, zone),
        )  # fmt: skip
        if action in ("create", "update"):
            if not part.blocks:
                raise MessageRejected(
                    f"order control {control} needs an OBR segment",
                    Hl7Error.REQUIRED_FIELD_MISSING,
                    "OBR",
                )
            order_id = order_key(scope, group)
            several = len(part.blocks) > 1
            for n, block in enumerate(part.blocks, start=1):
                set_id = msg.leaf(block[0].field(1).split(msg.comp)[0]).strip() if several else ""
                suffix = f".{set_id or n}" if several else ""
                for step in _steps(block):
                    ctx = _Ctx(msg, mapping, zone, [*step, *part.head], suffix)
                    group.items.append(
                        _map_item(ctx, scope, order_id, require=action == "create")
                    )
                warnings.extend(w for w in ctx.warnings if w not in warnings)
                alerts.extend(a for a in ctx.alerts if a not in alerts)
                warnings.extend(a for a in ctx.alerts if a not in warnings)
                used |= ctx.used_segments
        groups.append(group)
    unmapped = sorted({s.name for s in msg.segments} - used)
    if unmapped:
        warnings.append(f"segments not used by the mapping: {', '.join(unmapped)}")
    return MappingResult(sender, groups, warnings, msg.charset, msg.version, scope, alerts)


def _ei(number: str, namespace: str) -> str:
    return f"{number}^{namespace}" if namespace else number


def order_aliases(scope: str, group: MappedGroup) -> list[str]:
    """The names an order is known by: ``P|<placer EI>`` first, then ``F|<filler EI>``
    (EI = entity identifier, ``^`` and the namespace ID when there is one), prefixed
    with ``<sender>|`` when orders are scoped by sender. The first one the store knows
    is the order's canonical name; a new order is named after the first of them."""
    prefix = f"{scope}|" if scope else ""
    out = []
    if group.placer:
        out.append(f"{prefix}P|{_ei(group.placer, group.placer_ns)}")
    if group.filler:
        out.append(f"{prefix}F|{_ei(group.filler, group.filler_ns)}")
    return out


def order_key(scope: str, group: MappedGroup) -> str:
    """The name a new order gets (its first alias)."""
    return order_aliases(scope, group)[0]


# -- ADT: patient updates and merges ----------------------------------------------------


def _identity_rules(mapping: Mapping) -> tuple[Rule, Rule | None]:
    rules = {r.keyword: r for r in mapping.rules}
    if "PatientID" not in rules:
        raise MessageRejected(
            "the mapping has no PatientID rule to identify the patient",
            Hl7Error.INTERNAL_ERROR,
            "PID-3",
        )
    return rules["PatientID"], rules.get("IssuerOfPatientID")


def _as_merged(rule: Rule) -> Rule:
    """The same identifier rule read from MRG-1 (prior patient identifier list) instead
    of PID-3: a merged identifier is matched with the same issuer rule (HL7 v2.5 3.4.9)."""
    sources = []
    for src in rule.sources:
        if src.path is not None and src.path.segment == "PID" and src.path.field == 3:
            path = replace(src.path, segment="MRG", field=1,
                           text=src.path.text.replace("PID", "MRG", 1).replace("-3", "-1", 1))
            sources.append(replace(src, path=path))  # fmt: skip
    return replace(rule, sources=tuple(sources), required=False)


def _patient_values(ctx: _Ctx, keywords: tuple[str, ...]) -> dict[str, Any]:
    rules = {r.keyword: r for r in ctx.mapping.rules}
    out: dict[str, Any] = {}
    for keyword in keywords:
        value = _evaluate(ctx, rules[keyword])
        if value is not _ABSENT:
            out[keyword] = _fit(ctx, rules[keyword], value)
            ctx.values[keyword] = out[keyword]
    return out


def map_patient(msg: Message, mapping: Mapping, zone: ZoneInfo | None) -> PatientEvent:
    """The patients an ADT message names and what it changes (HL7 v2.5 ch. 3; IHE
    RAD-12, ITI-30). The event is MSH-9.2 (else EVN-1); the patient is PID-3 read with
    the mapping's PatientID rule; a merge (A40, A34, A36) or identifier change (A47)
    names the other identifier in the MRG of each PID/MRG pair."""
    event = (msg.get("MSH-9.2") or msg.get("EVN-1")).strip().upper()
    action = mapping.patient.events.get(event, "ignore")
    pid_rule, issuer_rule = _identity_rules(mapping)
    pids = msg.segments_named("PID")
    if not pids:
        raise MessageRejected("the message has no PID segment", Hl7Error.SEGMENT_SEQUENCE, "PID")
    out = PatientEvent(event, action)
    for n, pid_seg in enumerate(pids):
        # A PID with the segments after it up to the next PID: its MRG, PD1, PV1.
        start = msg.segments.index(pid_seg)
        end = msg.segments.index(pids[n + 1]) if n + 1 < len(pids) else len(msg.segments)
        ctx = _Ctx(msg, mapping, zone, msg.segments[start:end])
        ctx.scope_only = True
        pid = _evaluate(ctx, pid_rule)
        if pid is _ABSENT or not pid:
            raise MessageRejected(
                f"required field {pid_rule.location} is missing or empty",
                Hl7Error.REQUIRED_FIELD_MISSING,
                pid_rule.location,
            )
        issuer = _evaluate(ctx, issuer_rule) if issuer_rule is not None else ""
        patient = MappedPatient(str(pid), "" if issuer is _ABSENT else str(issuer))
        if action in ("update", "patient", "merge", "change_id"):
            patient.attrs = _patient_values(ctx, mapping.patient.attributes)
        if action in ("update", "visit"):
            patient.visit = _patient_values(ctx, mapping.patient.visit)
        if action in ("merge", "change_id"):
            merged = _evaluate(ctx, _as_merged(pid_rule))
            if merged is _ABSENT or not merged:
                raise MessageRejected(
                    "required field MRG-1 (the merged or prior identifier) is missing",
                    Hl7Error.REQUIRED_FIELD_MISSING,
                    "MRG-1",
                )
            patient.merged_pid = str(merged)
            if issuer_rule is not None:
                m_issuer = _evaluate(ctx, _as_merged(issuer_rule))
                patient.merged_issuer = "" if m_issuer is _ABSENT else str(m_issuer)
        out.patients.append(patient)
    return out
