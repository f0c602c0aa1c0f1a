"""Load and validate mapping files (YAML), with inheritance.

Every error is a :class:`~bridge.errors.MappingFileError` naming the file, the line and
the key, so ``mwl-bridge mapping check`` points the integrator at the exact place.

Inheritance: ``extends: default`` (the shipped ``mappings/ihe-rad.yaml``) or a path
relative to the file. The child's ``vars``, ``tables`` (entry by entry), ``lifecycle``
(combination by combination) and attribute rules (keyword by keyword, also inside
``ScheduledProcedureStepSequence``) override the base's; an attribute set to ``null``
is removed. So a site file overrides three lines, not the whole file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom.datadict import dictionary_VR, keyword_dict

from bridge.core.codes import SpsStatus
from bridge.core.errors import MappingFileError
from bridge.core.settings import sender_keys
from bridge.hl7.message import parse_path
from bridge.store.item import SPS
from bridge.worker.mapping.schema import (
    ACTIONS,
    ON_MISSING,
    ORDER_SCOPES,
    PATIENT_ACTIONS,
    TOO_LONG,
    TRANSFORMS,
    Mapping,
    PatientRules,
    Rule,
    Source,
    StatusTemplate,
)

#: The shipped mappings, by the name a site file ``extends:`` (or ``worker.mapping`` names):
#: package data ``bridge/data/``, symlinks to ``mappings/`` in the repository and copies in
#: the wheel. ``default`` is IHE Scheduled Workflow (RAD TF-2 Appendix B) with the
#: fallbacks real feeds need, ``strict`` the same profile without them.
SHIPPED = {
    name: Path(__file__).resolve().parents[2] / "data" / file
    for name, file in (("default", "ihe-rad.yaml"), ("strict", "ihe-rad-strict.yaml"))
}
DEFAULT_MAPPING = SHIPPED["default"]

#: Maximum value length per VR in characters (PS3.5 Table 6.2-1); PN is per group.
VR_MAX = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "LT": 10240,
          "PN": 64, "SH": 16, "ST": 1024, "TM": 16, "UI": 64, "US": 5}  # fmt: skip

_TOP_KEYS = {"extends", "description", "vars", "tables", "lifecycle", "attributes", "one_of",
             "worklist", "order_scope", "patient", "status_messages"}  # fmt: skip
_STATUS_KEYS = {"version", "type", "sending_application", "sending_facility",
                "receiving_application", "receiving_facility", "segments", "per_item"}  # fmt: skip
#: Top-level keys of earlier releases that are no longer honoured, and what replaces them.
_MOVED_KEYS = {
    # The listener decides the charset at ACK time and cannot see mapping files: a
    # mapping default would decode what the listener checked in another charset.
    "default_charset": "no longer honoured: the listener decides the character set at ACK "
    "time and cannot read mapping files; move it to the setting mllp.sender_charsets "
    '(e.g. "RIS|HOSP" = "8859/1")',
}
_PATIENT_KEYS = {"attributes", "visit", "events"}
#: Segments whose rules are patient-level / visit-level when ``patient`` does not list them.
_PATIENT_SEGMENTS = frozenset({"PID", "PD1"})
_VISIT_SEGMENTS = frozenset({"PV1", "PV2"})
_IDENTITY = frozenset({"PatientID", "IssuerOfPatientID"})

#: The ``worklist`` rule's target: a called AE title (VR AE, at most 16 characters).
WORKLIST_LABEL = "worklist"
_RULE_KEYS = {"source", "const", "transform", "table", "on_missing", "regex", "components",
              "join", "multi", "required", "default", "generate", "too_long", "partial", "zone",
              "vr", "max_length", "scheme_default", "missing"}  # fmt: skip
_SOURCE_KEYS = {"path", "const", "transform", "table", "on_missing", "regex", "components",
                "when", "if_fits", "per_obr", "warn"}  # fmt: skip


@dataclass
class Located:
    """A YAML mapping with the line (1-based) and file of each key."""

    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    line: int = 0
    file: str = ""


_SCALARS = yaml.SafeLoader("")


def _convert(node: yaml.Node, file: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = Located(line=node.start_mark.line + 1, file=file)
        for k, v in node.value:
            key = str(k.value)
            if key in out.data:
                raise MappingFileError(file, "duplicate key", k.start_mark.line + 1, key)
            out.data[key] = _convert(v, file)
            out.lines[key] = k.start_mark.line + 1
            out.files[key] = file
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, file) for v in node.value]
    # Scalars become Python scalars (true, 3, null); tables stringify their values.
    return _SCALARS.construct_object(node)


def read_yaml(path: Path) -> Located:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingFileError(str(path), "file does not exist") from None
    except UnicodeDecodeError:
        raise MappingFileError(str(path), "file is not UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise MappingFileError(
            str(path), f"not valid YAML: {getattr(exc, 'problem', exc)}", line
        ) from None
    if node is None:
        return Located(file=str(path), line=1)
    doc = _convert(node, str(path))
    if not isinstance(doc, Located):
        raise MappingFileError(str(path), "the file must be a mapping of sections", 1)
    return doc


def _merge(base: Located, child: Located, deep: set[str]) -> Located:
    """Child keys override base keys; keys in ``deep`` merge one level further."""
    out = Located(dict(base.data), dict(base.lines), dict(base.files), base.line, base.file)
    for key, value in child.data.items():
        if key in deep and isinstance(value, Located) and isinstance(out.data.get(key), Located):
            inner_deep = {SPS} if key == "attributes" else {"events"} if key == "patient" else set()
            if key == "tables":
                inner_deep = set(value.data)
            out.data[key] = _merge(out.data[key], value, inner_deep)
        elif value is None and key in out.data and base.file != child.file:
            del out.data[key]  # "Keyword: null" removes an inherited rule
            continue
        else:
            out.data[key] = value
        out.lines[key] = child.lines[key]
        out.files[key] = child.files[key]
    return out


def _resolve_chain(path: Path, seen: tuple[Path, ...] = ()) -> tuple[Located, list[str]]:
    path = path.resolve()
    if path in seen:
        raise MappingFileError(str(path), "extends itself (inheritance loop)", 1, "extends")
    doc = read_yaml(path)
    parent = doc.data.get("extends")
    if parent is None:
        return doc, [str(path)]
    if not isinstance(parent, str) or not parent.strip():
        raise MappingFileError(
            str(path), f"must name a file or one of: {', '.join(SHIPPED)}", doc.lines["extends"],
            "extends",
        )
    base_path = SHIPPED.get(parent.strip()) or (path.parent / parent).resolve()
    if not base_path.exists():
        raise MappingFileError(
            str(path), f"base file {base_path} does not exist", doc.lines["extends"], "extends"
        )
    base, chain = _resolve_chain(base_path, (*seen, path))
    merged = _merge(base, doc, {"vars", "tables", "lifecycle", "attributes", "patient"})
    return merged, [*chain, str(path)]


def load_mapping(path: str | Path | None = None) -> Mapping:
    """Read, merge and validate a mapping file (``None`` = the shipped default)."""
    p = SHIPPED.get(str(path), Path(path)) if path else DEFAULT_MAPPING
    doc, chain = _resolve_chain(p)
    return _build(doc, chain)


def _err(doc: Located, key: str, message: str) -> MappingFileError:
    return MappingFileError(
        doc.files.get(key, doc.file), message, doc.lines.get(key, doc.line), key
    )


def _build(doc: Located, chain: list[str]) -> Mapping:
    for key in doc.data:
        if key in _MOVED_KEYS:
            raise _err(doc, key, _MOVED_KEYS[key])
        if key not in _TOP_KEYS:
            raise _err(doc, key, f"unknown section; allowed: {', '.join(sorted(_TOP_KEYS))}")
    mapping = Mapping(path=chain[-1], chain=chain)

    vars_doc = doc.data.get("vars") or Located()
    if not isinstance(vars_doc, Located):
        raise _err(doc, "vars", "must be a mapping of name: value")
    mapping.vars = {k: "" if v is None else str(v) for k, v in vars_doc.data.items()}

    tables = doc.data.get("tables") or Located()
    if not isinstance(tables, Located):
        raise _err(doc, "tables", "must be a mapping of table name → {code: value}")
    for name, table in tables.data.items():
        if not isinstance(table, Located):
            raise _err(tables, name, "a table must be a mapping of code: value")
        mapping.tables[name] = {str(k): "" if v is None else str(v) for k, v in table.data.items()}

    scope = doc.data.get("order_scope")
    if scope is not None:
        if str(scope) not in ORDER_SCOPES:
            raise _err(doc, "order_scope", f"allowed: {', '.join(ORDER_SCOPES)}")
        mapping.order_scope = str(scope)

    life = doc.data.get("lifecycle") or Located()
    if not isinstance(life, Located):
        raise _err(doc, "lifecycle", "must be a mapping of 'ORC1/ORC5': 'action[:STATUS]'")
    for combo, action in life.data.items():
        mapping.lifecycle[_combo_key(life, combo)] = _check_action(life, combo, action)

    attrs = doc.data.get("attributes")
    if not isinstance(attrs, Located):
        raise _err(doc, "attributes", "missing or not a mapping of DICOM keyword → rule")
    for keyword, spec in attrs.data.items():
        if keyword == SPS:
            if not isinstance(spec, Located):
                raise _err(attrs, keyword, "must be a mapping of SPS attribute rules")
            for kw, sub in spec.data.items():
                mapping.sps_rules.append(_rule(spec, kw, sub, mapping))
            continue
        mapping.rules.append(_rule(attrs, keyword, spec, mapping))

    groups = doc.data.get("one_of") or []
    if not isinstance(groups, list):
        raise _err(doc, "one_of", "must be a list of keyword lists")
    known = {r.keyword for r in mapping.rules} | {r.keyword for r in mapping.sps_rules}
    for group in groups:
        names = tuple(str(g) for g in (group if isinstance(group, list) else [group]))
        for name in names:
            if name not in known:
                raise _err(doc, "one_of", f"{name} has no rule in attributes")
        mapping.one_of.append(names)

    mapping.patient = _patient(doc, mapping)
    mapping.status_messages = _status_messages(doc)

    if doc.data.get("worklist") is not None:
        # After the attributes, so its sources may be any @Keyword (e.g. the station AE).
        mapping.worklist = _rule(doc, WORKLIST_LABEL, doc.data["worklist"], mapping, vr="AE")
    return mapping


def _status_messages(doc: Located) -> StatusTemplate | None:
    """The ``status_messages`` template, its segments checked (three-letter segment
    names, known placeholders); None when the file has none."""
    spec = doc.data.get("status_messages")
    if spec is None:
        return None
    if not isinstance(spec, Located):
        raise _err(doc, "status_messages", "must be a mapping (version, type, segments, ...)")
    for k in spec.data:
        if k not in _STATUS_KEYS:
            raise _err(spec, k, f"unknown key; allowed: {', '.join(sorted(_STATUS_KEYS))}")
    version = str(spec.data.get("version") or "2.3.1")
    if not re.fullmatch(r"2\.\d(\.\d)?", version):
        raise _err(spec, "version", "an HL7 version like 2.3.1 or 2.5.1")
    default_type = "OMG^O19" if version >= "2.5" else "ORM^O01"
    message_type = str(spec.data.get("type") or default_type)
    if message_type not in ("ORM^O01", "OMG^O19", "OMI^O23"):
        raise _err(spec, "type", "allowed: ORM^O01, OMG^O19, OMI^O23")
    lines: dict[str, tuple[str, ...]] = {}
    for key in ("segments", "per_item"):
        raw = spec.data.get(key) or []
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise _err(spec, key, "must be a list of segment templates (strings)")
        for line in raw:
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2}\|.*", line) or line.startswith("MSH"):
                raise _err(spec, key, f"{line[:20]!r}... is not a segment (MSH is built)")
            for name in re.findall(r"\{([^}|]*)(?:\|xpn)?\}", line):
                base = name.split(".")[1 if name.startswith("SPS.") else 0]
                if name not in ("placer", "filler", "order_status", "now", "n") and (
                    base not in keyword_dict
                ):
                    raise _err(spec, key, f"unknown placeholder {{{name}}}")
        lines[key] = tuple(raw)

    def text(key: str, default: str) -> str:
        return str(spec.data.get(key) if spec.data.get(key) is not None else default)

    return StatusTemplate(
        version=version,
        message_type=message_type,
        sending_application=text("sending_application", "MWL_BRIDGE"),
        sending_facility=text("sending_facility", ""),
        receiving_application=text("receiving_application", ""),
        receiving_facility=text("receiving_facility", ""),
        segments=lines["segments"],
        per_item=lines["per_item"],
    )


def _patient(doc: Located, mapping: Mapping) -> PatientRules:
    """The ``patient`` section, its keywords checked against the attribute rules."""
    spec = doc.data.get("patient")
    if spec is None:
        spec = Located()
    if not isinstance(spec, Located):
        raise _err(doc, "patient", "must be a mapping with attributes, visit, events")
    for k in spec.data:
        if k not in _PATIENT_KEYS:
            raise _err(spec, k, f"unknown key; allowed: {', '.join(sorted(_PATIENT_KEYS))}")
    by_keyword = {r.keyword: r for r in mapping.rules}

    def segments(keyword: str) -> set[str]:
        return {s.path.segment for s in by_keyword[keyword].sources if s.path is not None}

    def keywords(key: str, default: list[str]) -> tuple[str, ...]:
        raw = spec.data.get(key)
        if raw is None:
            return tuple(default)
        if not isinstance(raw, list):
            raise _err(spec, key, "must be a list of DICOM keywords mapped under attributes")
        out = tuple(str(k) for k in raw)
        for k in out:
            if k not in by_keyword:
                raise _err(spec, key, f"{k} has no rule under attributes")
        return out

    visit = [k for k in by_keyword if segments(k) & _VISIT_SEGMENTS]
    patient = [k for k in by_keyword if segments(k) & _PATIENT_SEGMENTS
               and k not in visit and k not in _IDENTITY]  # fmt: skip
    events_doc = spec.data.get("events") or Located()
    if not isinstance(events_doc, Located):
        raise _err(spec, "events", "must be a mapping of ADT event (A08) → action")
    events: dict[str, str] = {}
    for event, action in events_doc.data.items():
        if not re.fullmatch(r"A\d\d", str(event)):
            raise _err(events_doc, event, "keys are ADT trigger events like A08")
        if str(action) not in PATIENT_ACTIONS:
            raise _err(events_doc, event, f"allowed: {', '.join(PATIENT_ACTIONS)}")
        events[str(event)] = str(action)
    return PatientRules(keywords("attributes", patient), keywords("visit", visit), events)


def _combo_key(life: Located, combo: str) -> str:
    control, _, status = str(combo).partition("/")
    if not re.fullmatch(r"[A-Z]{2}", control) or not re.fullmatch(r"|\*|[A-Z]{1,2}", status):
        raise _err(life, combo, "keys are ORC-1/ORC-5 like NW/SC, NW/ (empty ORC-5) or HD/*")
    return f"{control}/{status}"


def _check_action(life: Located, combo: str, action: Any) -> str:
    text = str(action)
    name, _, status = text.partition(":")
    if name not in ACTIONS:
        raise _err(life, combo, f"unknown action {name!r}; allowed: {', '.join(ACTIONS)}")
    if status and status not in SpsStatus.__members__:
        allowed = ", ".join(SpsStatus.__members__)
        raise _err(life, combo, f"unknown SPS status {status!r}; allowed: {allowed}")
    if name in ("create", "final") and not status:
        raise _err(life, combo, f"{name} needs a status, e.g. {name}:SCHEDULED")
    return text


def _subst(text: str, vars_: dict[str, str], doc: Located, key: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if m[1] not in vars_:
            raise _err(doc, key, f"unknown variable ${m[1]} (define it under vars)")
        return vars_[m[1]]

    return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def _source(doc: Located, key: str, entry: Any, mapping: Mapping, line: int) -> Source:
    if isinstance(entry, str | int | float):
        text = _subst(str(entry), mapping.vars, doc, key)
        if text.startswith("@"):
            return Source(ref=text[1:], line=line)
        try:
            return Source(path=parse_path(text), line=line)
        except ValueError as exc:
            raise _err(doc, key, str(exc)) from None
    if isinstance(entry, Located):
        for k in entry.data:
            if k not in _SOURCE_KEYS:
                raise MappingFileError(
                    entry.file, f"unknown source key; allowed: {', '.join(sorted(_SOURCE_KEYS))}",
                    entry.lines[k], f"{key}.{k}",
                )  # fmt: skip
        base = Source(line=entry.line)
        if "const" in entry.data:
            base = Source(
                const="" if entry.data["const"] is None else str(entry.data["const"]),
                line=entry.line,
            )
        elif "path" in entry.data:
            base = _source(doc, key, entry.data["path"], mapping, entry.line)
        else:
            raise MappingFileError(entry.file, "a source needs path or const", entry.line, key)
        opts = _options(entry, key, mapping)
        when = str(entry.data.get("when") or "")
        if when and when not in mapping.vars:
            raise MappingFileError(entry.file, f"unknown variable {when!r} (define it under vars)",
                                   entry.lines.get("when"), f"{key}.when")  # fmt: skip
        flags = {}
        for flag in ("if_fits", "per_obr", "warn"):
            value = entry.data.get(flag, False)
            if not isinstance(value, bool):
                raise MappingFileError(entry.file, "expected true or false",
                                       entry.lines.get(flag), f"{key}.{flag}")  # fmt: skip
            flags[flag] = value
        return Source(
            path=base.path, ref=base.ref, const=base.const, line=entry.line,
            transform=opts.get("transform", ""), table=opts.get("table", ""),
            on_missing=opts.get("on_missing", ""), regex=opts.get("regex", ""),
            components=opts.get("components", ()), when=when, **flags,
        )  # fmt: skip
    raise _err(doc, key, "a source is an HL7 path, @Keyword, or a mapping with path/const")


def _options(spec: Located, key: str, mapping: Mapping) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def where(k: str) -> MappingFileError:
        return MappingFileError(spec.files.get(k, spec.file), "", spec.lines.get(k), f"{key}.{k}")

    for k in ("transform", "table", "on_missing", "regex"):
        if k in spec.data:
            out[k] = str(spec.data[k])
    if "transform" in out and out["transform"] not in TRANSFORMS:
        e = where("transform")
        raise MappingFileError(
            e.path, f"unknown transform; allowed: {', '.join(TRANSFORMS)}", e.line, e.mapping_key
        )
    if "table" in out and out["table"] not in mapping.tables:
        e = where("table")
        raise MappingFileError(
            e.path,
            f"unknown table {out['table']!r} (define it under tables)",
            e.line,
            e.mapping_key,
        )
    if "on_missing" in out and out["on_missing"] not in ON_MISSING:
        e = where("on_missing")
        raise MappingFileError(e.path, f"allowed: {', '.join(ON_MISSING)}", e.line, e.mapping_key)
    if "regex" in out:
        try:
            pattern = re.compile(out["regex"])
        except re.error as exc:
            e = where("regex")
            raise MappingFileError(
                e.path, f"invalid regular expression: {exc}", e.line, e.mapping_key
            ) from None
        if pattern.groups > 1:
            e = where("regex")
            raise MappingFileError(e.path, "use at most one capturing group", e.line, e.mapping_key)
    if "components" in spec.data:
        comps = spec.data["components"]
        if not (
            isinstance(comps, list)
            and len(comps) == 3
            and all(isinstance(c, int) and c > 0 for c in comps)
        ):
            e = where("components")
            raise MappingFileError(
                e.path, "expected [value, scheme, meaning] component numbers", e.line, e.mapping_key
            )
        out["components"] = tuple(comps)
    return out


def _rule(doc: Located, keyword: str, spec: Any, mapping: Mapping, vr: str = "") -> Rule:
    """One rule; ``vr`` given = a non-DICOM target (the worklist label) of that VR."""
    line = doc.lines.get(keyword, doc.line)
    if not vr and keyword not in keyword_dict:
        raise _err(doc, keyword, "not a DICOM keyword (see PS3.6; e.g. PatientName)")
    if spec is None:
        raise _err(doc, keyword, "empty rule")
    if not isinstance(spec, Located):
        spec = Located(
            {"source": spec},
            {"source": line},
            {"source": doc.files.get(keyword, doc.file)},
            line,
            doc.file,
        )
    for k in spec.data:
        if k not in _RULE_KEYS:
            allowed = ", ".join(sorted(_RULE_KEYS))
            raise MappingFileError(
                spec.files.get(k, spec.file), f"unknown rule key; allowed: {allowed}",
                spec.lines.get(k), f"{keyword}.{k}",
            )  # fmt: skip
    raw_sources = spec.data.get("source")
    sources: list[Source] = []
    if raw_sources is not None:
        entries = raw_sources if isinstance(raw_sources, list) else [raw_sources]
        sources = [
            _source(spec, keyword, e, mapping, spec.lines.get("source", line)) for e in entries
        ]
    if "const" in spec.data:
        sources.append(
            Source(const="" if spec.data["const"] is None else str(spec.data["const"]), line=line)
        )
    if not sources and "generate" not in spec.data and "default" not in spec.data:
        raise _err(doc, keyword, "a rule needs source, const, default or generate")
    opts = _options(spec, keyword, mapping)
    for s in sources:
        if s.ref and s.ref not in {r.keyword for r in (*mapping.rules, *mapping.sps_rules)}:
            raise MappingFileError(
                spec.file, f"@{s.ref} must be mapped earlier in the file", s.line, keyword
            )

    def choice(k: str, allowed: tuple[str, ...], default: str) -> str:
        value = str(spec.data.get(k, default))
        if value not in allowed:
            raise MappingFileError(
                spec.file, f"allowed: {', '.join(allowed)}", spec.lines.get(k), f"{keyword}.{k}"
            )
        return value

    vr = str(spec.data.get("vr") or vr)
    if not vr:
        vr = dictionary_VR(keyword)
    generate = str(spec.data.get("generate", ""))
    if generate and generate != "study_uid":
        raise MappingFileError(
            spec.file, "allowed: study_uid", spec.lines.get("generate"), f"{keyword}.generate"
        )
    join = spec.data.get("join")
    try:
        max_length = int(spec.data.get("max_length") or VR_MAX.get(vr, 0))
    except (TypeError, ValueError):
        raise MappingFileError(
            spec.file, "expected a number", spec.lines.get("max_length"), f"{keyword}.max_length"
        ) from None
    return Rule(
        keyword=keyword,
        sources=tuple(sources),
        transform=opts.get("transform", "text"),
        table=opts.get("table", ""),
        on_missing=opts.get("on_missing", "reject"),
        regex=opts.get("regex", ""),
        components=opts.get("components", (1, 3, 2)),
        join=None if join is None else str(join),
        multi=bool(spec.data.get("multi", False)),
        required=bool(spec.data.get("required", False)),
        default=None if spec.data.get("default") is None else str(spec.data["default"]),
        generate=generate,
        too_long=choice("too_long", TOO_LONG, "truncate"),
        partial=choice("partial", ("reject", "empty"), "reject"),
        zone=choice("zone", ("convert", "keep"), "convert"),
        vr=vr,
        max_length=max_length,
        scheme_default=str(spec.data.get("scheme_default", "")),
        missing=choice("missing", ("", "warn"), ""),
        line=line,
    )


class MappingRegistry:
    """Per-sender mapping selection (``worker.sender_mappings``), loaded once per process.

    Keys are ``MSH3|MSH4`` (most specific) or ``MSH3``; anything else uses the default.
    """

    def __init__(self, default: str = "", sender_mappings: dict[str, str] | None = None) -> None:
        self.default = load_mapping(default or None)
        self.by_sender = {k: load_mapping(v) for k, v in (sender_mappings or {}).items()}

    def for_sender(self, sending_app: str, sending_facility: str) -> Mapping:
        """MSH-3/MSH-4 as sent (HD: ``namespace^universal id^type``) or their first
        component, most specific key first."""
        for key in sender_keys(sending_app, sending_facility):
            if key in self.by_sender:
                return self.by_sender[key]
        return self.default
