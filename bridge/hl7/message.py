"""A parsed HL7 v2 message with field access by HL7 path.

:class:`Message` answers HL7 paths (``PID-5``, ``PID.5.1``, ``OBR-27.4``, ``PID-3[2]``,
``PID-3[4=HOSP]``, ``NTE[*]-3``), 1-based, and unescapes values only when a leaf value
is read, so an escaped delimiter never splits a component.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.hl7.charsets import Decision
from bridge.hl7.escapes import EscapeError, unescape


@dataclass
class Segment:
    name: str
    #: fields[n] is field n (1-based); for MSH, fields[1] is the field separator.
    fields: list[str]
    index: int  # position in the message

    def field(self, n: int) -> str:
        return self.fields[n] if 0 < n < len(self.fields) else ""


@dataclass(frozen=True)
class PathSpec:
    """A parsed HL7 path: ``SEG[occ]-F[rep].C.S``."""

    segment: str
    occurrence: str  # "" first, "*" all, or a 1-based number
    field: int
    repetition: str  # "" first, "*" all, "n", or "c=value" (component c equals value)
    component: int  # 0 = whole field
    subcomponent: int  # 0 = whole component
    text: str

    @property
    def location(self) -> str:
        """The ERR-style location, e.g. ``OBR-27.4``."""
        loc = f"{self.segment}-{self.field}"
        if self.component:
            loc += f".{self.component}"
        if self.subcomponent:
            loc += f".{self.subcomponent}"
        return loc


_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\*|\d+)\])?[-.](?P<f>\d+)"
    r"(?:\[(?P<rep>\*|\d+|\d+=[^\]]*)\])?(?:\.(?P<c>\d+))?(?:\.(?P<s>\d+))?$"
)


def parse_path(text: str) -> PathSpec:
    """Parse an HL7 path; raises ValueError with the reason for the mapping loader."""
    m = _PATH.match(text.strip())
    if not m:
        raise ValueError(
            f"{text!r} is not an HL7 path like PID-5, PID.5.1, OBR-27.4, PID-3[2].1, "
            "PID-3[4=HOSP].1 or NTE[*]-3"
        )
    fld = int(m["f"])
    if fld < 1:
        raise ValueError(f"{text!r}: field numbers start at 1")
    comp = int(m["c"] or 0)
    sub = int(m["s"] or 0)
    if (m["c"] and comp < 1) or (m["s"] and sub < 1):
        raise ValueError(f"{text!r}: component numbers start at 1")
    return PathSpec(m["seg"], m["occ"] or "", fld, m["rep"] or "", comp, sub, text.strip())


#: A field value exactly ``""`` means "delete this value" (HL7 v2 ch. 2.5.3).
HL7_NULL = '""'


@dataclass(frozen=True)
class Node:
    """One addressed value: its raw text plus the separator of its next level down.

    A field (repetition) node splits into components, a component node into
    subcomponents, a subcomponent node into itself. ``text`` is the unescaped value of
    the first leaf (``PID-3`` → the ID), ``part(n)`` the unescaped first leaf of part n.
    """

    raw: str
    sep: str
    message: Message

    @property
    def is_null(self) -> bool:
        return self.raw == HL7_NULL

    @property
    def parts(self) -> list[str]:
        return self.raw.split(self.sep) if self.sep else [self.raw]

    def part(self, n: int) -> str:
        parts = self.parts
        if n < 1 or n > len(parts):
            return ""
        return self.message.leaf(parts[n - 1])

    @property
    def text(self) -> str:
        return self.part(1) if self.sep else self.message.unescape(self.raw)

    @property
    def full_text(self) -> str:
        """Every part unescaped, joined by the DICOM-neutral ``^`` and right-trimmed."""
        return "^".join(self.part(i + 1) for i in range(len(self.parts))).rstrip("^")


@dataclass
class Message:
    """A parsed ORM with HL7-path access; ``scope`` segments are searched first."""

    segments: list[Segment]
    enc: str
    version: str
    #: The charset decision the message was decoded with (the listener's, recorded).
    decision: Decision
    _by_name: dict[str, list[Segment]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for seg in self.segments:
            self._by_name.setdefault(seg.name, []).append(seg)

    @property
    def comp(self) -> str:
        return self.enc[0]

    @property
    def rep(self) -> str:
        return self.enc[1]

    @property
    def subc(self) -> str:
        return self.enc[3] if len(self.enc) > 3 else "&"

    @property
    def charset(self) -> str:
        """The table 0211 name(s) decoded with, e.g. ``8859/1`` or ``ASCII~ISO IR87``."""
        return self.decision.label

    def unescape(self, value: str) -> str:
        try:
            return unescape(value, self.enc, self.decision.decode_fragment)
        except EscapeError as exc:
            # The listener refuses such messages at ACK time; this is for older ones.
            raise MessageRejected(str(exc), Hl7Error.DATA_TYPE, "") from None

    def leaf(self, raw: str) -> str:
        """The unescaped first subcomponent of a component string."""
        return self.unescape(raw.split(self.subc, 1)[0])

    def segments_named(self, name: str) -> list[Segment]:
        return self._by_name.get(name, [])

    def resolve(
        self, spec: PathSpec, scope: list[Segment] | None = None, scoped_only: bool = False
    ) -> list[Node]:
        """Every node the path addresses (empty when absent). Scope segments first:
        a path names the ORC/OBR/NTE/ZDS of the order group being mapped; with
        ``scoped_only`` the rest of the message is not searched."""
        pool: list[Segment] = []
        if scope is not None:
            pool = [s for s in scope if s.name == spec.segment]
        if not pool and not (scoped_only and scope is not None):
            pool = self.segments_named(spec.segment)
        if spec.occurrence == "*":
            segs = pool
        else:
            k = int(spec.occurrence or 1)
            segs = pool[k - 1 : k]
        out: list[Node] = []
        for seg in segs:
            out.extend(self._field_nodes(seg, spec))
        return out

    def _field_nodes(self, seg: Segment, spec: PathSpec) -> Iterator[Node]:
        raw = seg.field(spec.field)
        if raw == "":
            return
        if raw == HL7_NULL or (seg.name == "MSH" and spec.field <= 2):
            yield Node(raw, "", self)
            return
        reps = raw.split(self.rep)
        sel = spec.repetition
        if sel == "*":
            chosen = reps
        elif sel == "":
            chosen = reps[:1]
        elif "=" in sel:
            c, _, want = sel.partition("=")
            chosen = [r for r in reps if self.leaf(_nth(r.split(self.comp), int(c))) == want][:1]
        else:
            k = int(sel)
            chosen = reps[k - 1 : k]
        for rep in chosen:
            if spec.component == 0:
                node = Node(rep, self.comp, self)
            else:
                comp = _nth(rep.split(self.comp), spec.component)
                if spec.subcomponent == 0:
                    node = Node(comp, self.subc, self)
                else:
                    node = Node(_nth(comp.split(self.subc), spec.subcomponent), "", self)
            if node.raw != "":
                yield node

    def get(self, path: str, scope: list[Segment] | None = None) -> str:
        """Convenience: the unescaped text of the first node of ``path`` ("" if absent)."""
        nodes = self.resolve(parse_path(path), scope)
        return nodes[0].text if nodes and not nodes[0].is_null else ""


def _nth(parts: list[str], n: int) -> str:
    return parts[n - 1] if 0 < n <= len(parts) else ""


def split_segments(text: str, enc: str, sep: str) -> list[Segment]:
    out: list[Segment] = []
    for i, line in enumerate(text.split("\r")):
        name = line[:3]
        if name == "MSH":
            # MSH-1 is the separator itself and MSH-2 the encoding characters.
            rest = line[4:].split(sep)
            fields = ["MSH", sep, *rest]
        else:
            fields = line.split(sep)
        out.append(Segment(name, fields, i))
    return out
