"""HL7 v2 in: raw bytes → decoded text → hl7apy parse → field access by HL7 path.

The steps, in order (each a function so tests and ``mapping test`` can reuse them):

1. :func:`read_msh` reads MSH from the *bytes* (the delimiters and MSH-18 are ASCII in
   every charset HL7 allows on MLLP), so the charset is known before decoding.
2. :func:`decode` maps the HL7 table 0211 name in MSH-18 (or the sender's default when
   MSH-18 is empty) to a Python codec and decodes strictly; bad bytes are a rejection
   (HL7 102), an unknown charset name too (103 at MSH-18).
3. :func:`normalise` turns CRLF / LF segment separators into CR (hl7apy and python-hl7
   silently mis-parse anything else) and :func:`coerce_version` maps MSH-12 oddities such
   as ``2.3.0`` or ``2.9`` to a version hl7apy has a model for.
4. :func:`parse` runs hl7apy flat (``find_groups=False`` keeps Z-segments such as ZDS)
   at TOLERANT level, once per message (it costs ~10 ms). It is the gate: what hl7apy
   cannot parse is rejected. Values are then read from the same normalised text split by
   the message's own delimiters, which is what hl7apy's tolerant flat parse holds
   anyway; re-serialising hl7apy's tree (``to_er7``) would cost another ~10 % per message.
5. :class:`Message` answers HL7 paths (``PID-5``, ``PID.5.1``, ``OBR-27.4``,
   ``PID-3[2]``, ``PID-3[4=HOSP]``, ``NTE[*]-3``), 1-based, and unescapes values
   (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\``) only when a leaf value is read, so
   an escaped delimiter never splits a component.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from bridge.codes import Hl7Error
from bridge.errors import MessageRejected

#: HL7 table 0211 (MSH-18) → Python codec. UTF-16/32 cannot travel over MLLP.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "CNS 11643-1992": "big5",  # the closest codec Python ships
    "WINDOWS-1252": "cp1252",  # not in table 0211, but common in RIS feeds
}

#: HL7 table 0211 → DICOM Specific Character Set defined term (PS3.3 C.12.1.1.2).
DICOM_CHARSETS: dict[str, str] = {
    "ASCII": "",
    "ISO IR6": "",
    "8859/1": "ISO_IR 100",
    "ISO IR100": "ISO_IR 100",
    "8859/2": "ISO_IR 101",
    "8859/3": "ISO_IR 109",
    "8859/4": "ISO_IR 110",
    "8859/5": "ISO_IR 144",
    "8859/6": "ISO_IR 127",
    "8859/7": "ISO_IR 126",
    "8859/8": "ISO_IR 138",
    "8859/9": "ISO_IR 148",
    "8859/15": "ISO_IR 203",
    "UNICODE UTF-8": "ISO_IR 192",
    "UNICODE": "ISO_IR 192",
    "UTF-8": "ISO_IR 192",
    "ISO IR87": "ISO 2022 IR 87",
    "ISO IR159": "ISO 2022 IR 159",
    "GB 18030-2000": "GB18030",
    "KS X 1001": "ISO 2022 IR 149",
    "BIG-5": "ISO_IR 192",
    "CNS 11643-1992": "ISO_IR 192",
    "WINDOWS-1252": "ISO_IR 100",
}

#: Versions with an ORM^O01 model in hl7apy, oldest first (ORM was withdrawn after 2.5.1).
SUPPORTED_VERSIONS: tuple[str, ...] = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1")


@dataclass(frozen=True)
class Msh:
    """What the bytes say before decoding: delimiters, MSH-18, MSH-12, MSH-3/4."""

    field_sep: str
    encoding_chars: str
    charset: str
    version: str
    sending_app: str
    sending_facility: str


def read_msh(raw: bytes) -> Msh:
    """Read delimiters and the ASCII MSH fields from raw bytes (first segment only)."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        raise MessageRejected(
            "message does not start with an MSH segment", Hl7Error.SEGMENT_SEQUENCE, "MSH"
        )
    line = re.split(rb"[\r\n]", raw[start:], maxsplit=1)[0]
    sep = line[3:4]
    fields = line.split(sep)
    enc = fields[1].decode("ascii", "replace") if len(fields) > 1 else "^~\\&"

    def get(n: int) -> str:
        # fields[0] is "MSH", fields[1] is MSH-2; MSH-n is fields[n - 1].
        if len(fields) <= n - 1:
            return ""
        return fields[n - 1].decode("ascii", "replace").strip()

    rep = enc[1] if len(enc) > 1 else "~"
    comp = enc[0] if enc else "^"
    charset = get(18).split(rep)[0].strip()
    return Msh(
        field_sep=sep.decode("ascii", "replace"),
        encoding_chars=enc,
        charset=charset,
        version=get(12).split(comp)[0].strip(),
        sending_app=get(3),
        sending_facility=get(4),
    )


def codec_for(charset: str) -> str:
    """The Python codec for an HL7 table 0211 name; unknown names are a rejection."""
    codec = CHARSETS.get(charset.strip().upper())
    if codec is None:
        raise MessageRejected(
            "MSH-18 names a character set not in HL7 table 0211",
            Hl7Error.TABLE_VALUE_NOT_FOUND,
            "MSH-18",
        )
    return codec


def decode(raw: bytes, charset: str, default_charset: str) -> tuple[str, str]:
    """Decode ``raw`` by MSH-18 ``charset`` (or ``default_charset`` when empty).

    Returns (text, the HL7 charset name used). Undecodable bytes are rejected, never
    replaced: a silently mangled patient name is worse than an AE.
    """
    name = charset or default_charset
    codec = codec_for(name)
    try:
        return raw.decode(codec), name
    except UnicodeDecodeError:
        raise MessageRejected(
            f"message bytes are not valid {name} (MSH-18 or the sender's default charset)",
            Hl7Error.DATA_TYPE,
            "MSH-18",
        ) from None


def normalise(text: str) -> str:
    """CRLF and LF segment separators → CR; trailing blank segments dropped."""
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(s for s in text.split("\r") if s.strip())


def coerce_version(version: str) -> str:
    """MSH-12 → a version hl7apy models: ``2.3.0`` → ``2.3``; unknown → nearest below,
    anything newer than 2.5.1 → 2.5.1 (ORM^O01 was withdrawn after it)."""
    v = version.strip()
    parts = [p for p in v.split(".") if p]
    while len(parts) > 2 and parts[-1] == "0":
        parts.pop()
    v = ".".join(parts)
    if v in SUPPORTED_VERSIONS:
        return v

    def key(s: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in s.split("."))
        except ValueError:
            return (0,)

    below = [s for s in SUPPORTED_VERSIONS if key(s) <= key(v)]
    return below[-1] if below else SUPPORTED_VERSIONS[-1] if key(v) > (2,) else "2.3"


# -- escapes ----------------------------------------------------------------------------


def unescape(value: str, enc: str, codec: str = "latin-1") -> str:
    """Resolve HL7 escape sequences (v2 ch. 2.7): delimiters, ``\\Xhh..\\`` hex bytes in
    the message charset, ``\\.br\\`` line break; formatting and charset switches dropped."""
    esc = enc[2] if len(enc) > 2 else "\\"
    if esc not in value:
        return value
    comp, rep = enc[0], enc[1]
    sub = enc[3] if len(enc) > 3 else "&"
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # a lone escape character: keep it literally
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append("|")
        elif seq == "S":
            out.append(comp)
        elif seq == "T":
            out.append(sub)
        elif seq == "R":
            out.append(rep)
        elif seq == "E":
            out.append(esc)
        elif seq == ".br":
            out.append("\n")
        elif seq.startswith("X") and len(seq) > 1:
            with contextlib.suppress(ValueError):  # malformed hex: drop the sequence
                out.append(bytes.fromhex(seq[1:]).decode(codec, "replace"))
        # \H\ \N\ highlighting, \Cxxyy\ \Mxxyyzz\ charset switches, \Z..\ custom: dropped.
    return "".join(out)


# -- the parsed message -----------------------------------------------------------------


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
    charset: str  # HL7 table 0211 name used to decode
    codec: str
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

    def unescape(self, value: str) -> str:
        return unescape(value, self.enc, self.codec)

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


_WARMED: set[str] = set()


def warm_up() -> None:
    """Load hl7apy's models for every supported version once (the first parse of a
    version costs 12–18 ms of imports); call in a worker parent before forking."""
    for version in SUPPORTED_VERSIONS[2:]:
        if version in _WARMED:
            continue
        text = (
            f"MSH|^~\\&|A|B|C|D|20260101||ORM^O01|1|P|{version}\r"
            "PID|1||1^^^X||A^B\rORC|NW|1\rOBR|1|1||X^Y\rZDS|1.2^A^B^C"
        )
        _hl7apy_parse(text)
        _WARMED.add(version)


def _hl7apy_parse(text: str) -> object:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    return parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)


def parse(raw: bytes, default_charset: str = "8859/1") -> Message:
    """Decode, normalise, coerce the version, parse once with hl7apy; see the module doc."""
    msh = read_msh(raw)
    text, charset = decode(raw[raw.find(b"MSH") :], msh.charset, default_charset)
    text = normalise(text)
    enc = msh.encoding_chars
    if len(enc) < 3 or len(set(enc + msh.field_sep)) != len(enc) + 1:
        raise MessageRejected("MSH-1/MSH-2 delimiters are invalid", Hl7Error.DATA_TYPE, "MSH-2")
    version = coerce_version(msh.version)
    segments = split_segments(text, enc, msh.field_sep)
    if msh.version != version:
        # Tell hl7apy the version we coerced to; the stored raw copy keeps the original.
        msh_fields = segments[0].fields
        while len(msh_fields) <= 12:
            msh_fields.append("")
        comps = msh_fields[12].split(enc[0])
        msh_fields[12] = enc[0].join([version, *comps[1:]])
        first = msh.field_sep.join(["MSH", *msh_fields[2:]])
        text = "\r".join([first, *text.split("\r")[1:]])
    try:
        parsed = _hl7apy_parse(text)
    except Exception as exc:  # hl7apy raises many unrelated types; all mean "cannot parse"
        raise MessageRejected(
            f"hl7apy cannot parse the message ({type(exc).__name__})", Hl7Error.DATA_TYPE, "MSH"
        ) from exc
    children = getattr(parsed, "children", [])
    if len(children) != len(segments):
        raise MessageRejected(
            "hl7apy and the segment split disagree on the segment count",
            Hl7Error.SEGMENT_SEQUENCE,
            "",
        )
    return Message(segments, enc, version, charset, codec_for(charset))
