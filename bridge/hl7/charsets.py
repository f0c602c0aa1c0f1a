"""Character sets: the one table both stages use, the decision made at ACK time, and a
strict decoder for ISO 2022 code extension.

References: HL7 v2.5 2.16.9.18 (MSH-18 character set, repeating: the first repetition is
the default set, the others are alternate sets), 2.16.9.20 (MSH-20 alternate character
set handling scheme), 2.7.2/2.7.3 (the ``\\Cxxyy\\`` and ``\\Mxxyyzz\\`` escapes), tables
0211 (names) and 0356 (schemes); ISO/IEC 2022 (designation escape sequences); DICOM
PS3.3 C.12.1.1.2 (Specific Character Set defined terms) and PS3.5 6.1.2.5 (how DICOM uses
the same escape sequences).

One truth from MLLP to C-FIND:

* :data:`CHARSETS` — HL7 table 0211 names plus the aliases real senders use
  (:data:`ALIASES`), each with its Python codec and DICOM defined term. The listener's
  MSH pre-read (:mod:`bridge.hl7.msh`), the worker's decode (:mod:`bridge.hl7.parse`) and
  the mapping's ``charset`` transform all read this table.
* :func:`decide` — the listener's decision for one message: MSH-18 repetitions + MSH-20,
  else the sender's default (``mllp.sender_charsets``), else ``mllp.default_charset``.
  An unknown or refused name is :class:`CharsetError` (HL7 103). The decision is stored
  with the message (:meth:`Decision.to_record`, the ``charset_used`` hash field) and the
  worker decodes with exactly it.
* :meth:`Decision.decode` — strict: bytes that do not decode are :class:`DecodeError`
  (HL7 102), never U+FFFD. With code extension the escape sequences (real ``ESC``
  bytes, or HL7's ``\\C..\\``/``\\M..\\``) are honoured for the declared sets only, and
  the whole message is decoded *before* it is split on delimiters: inside a 7-bit JIS X
  0208 run the bytes ``| ^ ~ \\ &`` are halves of kanji, not delimiters.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.core.errors import ConfigError
from bridge.core.settings import MllpSettings, sender_keys

ESC = 0x1B
#: The default when MSH-18 and every setting are empty (table 0211: ASCII is the default
#: when MSH-18 is omitted; the bridge's historical default is Latin-1, a superset).
DEFAULT_CHARSET = "8859/1"
#: HL7 table 0356 (MSH-20): "" = no switching, ``2.3`` = the HL7 escapes of v2.5 2.7.2,
#: ``ISO 2022-1994`` = ISO 2022 escape sequences in the data.
SCHEMES: tuple[str, ...] = ("", "2.3", "ISO 2022-1994")


class CharsetError(ValueError):
    """MSH-18/MSH-20 (or a setting) names no character set the bridge decodes: HL7 103."""

    def __init__(self, reason: str, location: str = "MSH-18") -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location


class DecodeError(ValueError):
    """Bytes not valid in the decided character set: HL7 102. ``offset`` is the byte
    offset in what was decoded; the reason names sets and offsets, never content."""

    def __init__(self, reason: str, offset: int = -1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


# -- ISO 2022 graphic sets --------------------------------------------------------------


@dataclass(frozen=True)
class GraphicSet:
    """One ISO 2022 graphic character set: its designation escape sequence (the bytes
    after ESC), the element it is designated to (0 = G0, invoked in GL 0x21-0x7E; 1 = G1,
    invoked in GR 0xA1-0xFE) and how a run of its bytes decodes with a Python codec.

    ``prefix`` is prepended before decoding (Python's ISO-2022-JP codecs need the
    designation to know the set); ``gr_bytes`` restricts single-byte G1 sets whose codec
    would accept more (Shift_JIS reads 0xE0 as a lead byte, JIS X 0201 has none)."""

    key: str  # ISO-IR registration, as DICOM spells it (PS3.3 Table C.12-3/-4)
    escape: bytes
    g: int
    width: int
    codec: str
    prefix: bytes = b""
    gr_bytes: tuple[int, int] | None = None

    def decode_run(self, run: bytes) -> str:
        if self.gr_bytes is not None:
            low, high = self.gr_bytes
            if any(not low <= b <= high for b in run):
                raise UnicodeDecodeError(self.codec, run, 0, len(run), "outside the set")
        return (self.prefix + run).decode(self.codec)

    def encode_char(self, ch: str) -> bytes | None:
        """The bytes of ``ch`` in this set, or None (for the ACK encoder)."""
        try:
            data = ch.encode(self.codec)
        except UnicodeEncodeError:
            return None
        if self.prefix:
            if not data.startswith(self.prefix):
                return None
            data = data[len(self.prefix) :].removesuffix(b"\x1b(B")
        elif self.g == 1 and any(b < 0xA0 for b in data):
            return None
        if len(data) != self.width or (self.gr_bytes and not self.decode_ok(data)):
            return None
        return data

    def decode_ok(self, data: bytes) -> bool:
        try:
            self.decode_run(data)
        except UnicodeDecodeError:
            return False
        return True


#: Every set the decoder knows, keyed by ISO-IR name. The escape sequences and codecs
#: agree with pydicom's public ``pydicom.charset.CODES_TO_ENCODINGS`` (checked by
#: tests/test_charsets.py), except ESC ( B, which pydicom reads as Latin-1 and we read as
#: ASCII: strictly, G0 ASCII has no byte above 0x7F.
GRAPHIC_SETS: dict[str, GraphicSet] = {
    s.key: s
    for s in (
        GraphicSet("ISO-IR 6", b"(B", 0, 1, "ascii"),
        GraphicSet("ISO-IR 14", b"(J", 0, 1, "iso2022_jp", prefix=b"\x1b(J"),
        GraphicSet("ISO-IR 13", b")I", 1, 1, "shift_jis", gr_bytes=(0xA1, 0xDF)),
        GraphicSet("ISO-IR 87", b"$B", 0, 2, "iso2022_jp", prefix=b"\x1b$B"),
        GraphicSet("ISO-IR 159", b"$(D", 0, 2, "iso2022_jp_1", prefix=b"\x1b$(D"),
        GraphicSet("ISO-IR 149", b"$)C", 1, 2, "euc_kr"),
        GraphicSet("ISO-IR 58", b"$)A", 1, 2, "gb2312"),
        GraphicSet("ISO-IR 100", b"-A", 1, 1, "latin_1"),
        GraphicSet("ISO-IR 101", b"-B", 1, 1, "iso8859_2"),
        GraphicSet("ISO-IR 109", b"-C", 1, 1, "iso8859_3"),
        GraphicSet("ISO-IR 110", b"-D", 1, 1, "iso8859_4"),
        GraphicSet("ISO-IR 144", b"-L", 1, 1, "iso8859_5"),
        GraphicSet("ISO-IR 127", b"-G", 1, 1, "iso8859_6"),
        GraphicSet("ISO-IR 126", b"-F", 1, 1, "iso8859_7"),
        GraphicSet("ISO-IR 138", b"-H", 1, 1, "iso8859_8"),
        GraphicSet("ISO-IR 148", b"-M", 1, 1, "iso8859_9"),
        GraphicSet("ISO-IR 203", b"-b", 1, 1, "iso8859_15"),
    )
}
_BY_ESCAPE: dict[bytes, GraphicSet] = {s.escape: s for s in GRAPHIC_SETS.values()}
_ASCII = GRAPHIC_SETS["ISO-IR 6"]


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Charset:
    """One character set a sender may name in MSH-18."""

    name: str  # canonical name: the HL7 table 0211 value, or the documented extra name
    #: Python codec for a message in this set alone, without code extension ("" = the
    #: ISO 2022 decoder is always used: the set needs escape sequences or G1 invocation).
    codec: str
    #: DICOM Specific Character Set defined term (PS3.3 C.12.1.1.2) for the item.
    dicom: str
    #: The ISO 2022 graphic sets this name declares (designations allowed with it).
    sets: tuple[str, ...] = ()
    #: G0 and G1 at the start of the message when this is the default (first) set.
    initial: tuple[str, str] = ("ISO-IR 6", "")
    #: Not empty: a known name the bridge refuses (HL7 103), and why.
    refused: str = ""
    #: False for the few names real senders use that table 0211 lacks.
    in_0211: bool = True

    @property
    def code_extension(self) -> bool:
        """Alone, this name already means ISO 2022 decoding (no plain Python codec)."""
        return not self.codec and not self.refused


def _8859(part: int, ir: int, codec: str) -> Charset:
    return Charset(
        f"8859/{part}", codec, f"ISO_IR {ir}", ("ISO-IR 6", f"ISO-IR {ir}"),
        ("ISO-IR 6", f"ISO-IR {ir}"),
    )  # fmt: skip


_MLLP_WIDE = (
    "cannot travel over MLLP: its code units contain the bytes 0x0B, 0x1C and 0x0D that "
    "frame MLLP messages (MLLP R1); send UNICODE UTF-8"
)

#: HL7 table 0211 (plus WINDOWS-1252), canonical name → entry.
CHARSETS: dict[str, Charset] = {
    c.name: c
    for c in (
        Charset("ASCII", "ascii", "", ("ISO-IR 6",)),
        Charset("ISO IR6", "ascii", "", ("ISO-IR 6",)),
        _8859(1, 100, "latin_1"),
        _8859(2, 101, "iso8859_2"),
        _8859(3, 109, "iso8859_3"),
        _8859(4, 110, "iso8859_4"),
        _8859(5, 144, "iso8859_5"),
        _8859(6, 127, "iso8859_6"),
        _8859(7, 126, "iso8859_7"),
        _8859(8, 138, "iso8859_8"),
        _8859(9, 148, "iso8859_9"),
        _8859(15, 203, "iso8859_15"),
        # JIS X 0201 (DICOM ISO_IR 13): half-width Katakana in G1 (8-bit). G0 starts as
        # ASCII, not JIS-Roman: Roman reads 0x5C as ¥ and 0x7E as ‾, which would turn
        # the HL7 escape and repetition characters into text. ESC ( J switches to Roman.
        Charset("ISO IR14", "", "ISO_IR 13", ("ISO-IR 14", "ISO-IR 13"), ("ISO-IR 6", "ISO-IR 13")),
        # JIS X 0208 and JIS X 0212: 7-bit double-byte sets reached by ESC $ B / ESC $ ( D
        # from ASCII (0211's own comment: "the escape technique is ISO 2022"). Alone in
        # MSH-18 they mean ISO-2022-JP style text; JAHIS sends ~ISO IR87 (ASCII default).
        Charset("ISO IR87", "", "ISO 2022 IR 87", ("ISO-IR 87",)),
        Charset("ISO IR159", "", "ISO 2022 IR 159", ("ISO-IR 159",)),
        # KS X 1001 in G1 over ASCII: alone, that is EUC-KR; ESC $ ) C may designate it.
        Charset("KS X 1001", "", "ISO 2022 IR 149", ("ISO-IR 149",), ("ISO-IR 6", "ISO-IR 149")),
        # Alone: the whole message in GB 18030. With code extension (~GB 18030-2000) its
        # ISO 2022 form is GB 2312 in G1 (ESC $ ) A), GB 18030's two-byte core.
        Charset("GB 18030-2000", "gb18030", "GB18030", ("ISO-IR 58",), ("ISO-IR 6", "ISO-IR 58")),
        # No DICOM term for Big5: items are stored as Unicode and answered in UTF-8.
        Charset("BIG-5", "big5", "ISO_IR 192"),
        Charset(
            "CNS 11643-1992",
            "",
            "",
            refused="CNS 11643-1992 is not supported: Python ships no codec for it (EUC-TW), "
            "and reading it as Big5 would change the characters",
        ),
        # "UNICODE" (ISO/IEC 10646) names no encoding form; UCS-2 cannot cross MLLP, so
        # the only readable meaning is UTF-8.
        Charset("UNICODE", "utf_8", "ISO_IR 192"),
        Charset("UNICODE UTF-8", "utf_8", "ISO_IR 192"),
        Charset("UNICODE UTF-16", "", "", refused=f"UNICODE UTF-16 {_MLLP_WIDE}"),
        Charset("UNICODE UTF-32", "", "", refused=f"UNICODE UTF-32 {_MLLP_WIDE}"),
        # Not in 0211 but common in RIS feeds. Not every cp1252 character is in ISO_IR 100
        # (€, „, “…), so the item says ISO_IR 192 (items are stored as Unicode anyway).
        Charset("WINDOWS-1252", "cp1252", "ISO_IR 192", in_0211=False),
    )
}

#: Spellings real senders put in MSH-18 (IANA names, DICOM-ish, missing spaces) → the
#: table 0211 name they mean. Matching is case-insensitive and ignores repeated spaces.
ALIASES: dict[str, str] = {
    "US-ASCII": "ASCII",
    "UTF-8": "UNICODE UTF-8",
    "UTF8": "UNICODE UTF-8",
    "LATIN1": "8859/1",
    "LATIN-1": "8859/1",
    "ISO IR100": "8859/1",
    "CP1252": "WINDOWS-1252",
    "UTF-16": "UNICODE UTF-16",
    "UTF-32": "UNICODE UTF-32",
    **{f"ISO-8859-{n}": f"8859/{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    **{f"ISO8859-{n}": f"8859/{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


def _normalise(name: str) -> str:
    return " ".join(name.split()).upper()


def lookup(name: str) -> Charset | None:
    """The table entry for a 0211 name or alias (any case); None = unknown."""
    key = _normalise(name)
    return CHARSETS.get(key) or CHARSETS.get(ALIASES.get(key, ""))


def dicom_term(name: str) -> str:
    """DICOM Specific Character Set term for a 0211 name or alias ("" when unknown)."""
    entry = lookup(name)
    return entry.dicom if entry is not None else ""


# -- the decision -----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The character set(s) one message is decoded with, decided once by the listener.

    ``names`` are canonical table entries, the first being the default set (an empty
    first MSH-18 repetition is ASCII); ``scheme`` is MSH-20 (table 0356) when code
    extension is in use; ``source`` says where the default came from (``MSH-18``,
    ``mllp.sender_charsets``, ``mllp.default_charset``).
    """

    names: tuple[str, ...]
    scheme: str = ""
    source: str = "MSH-18"

    @functools.cached_property
    def charsets(self) -> tuple[Charset, ...]:
        return tuple(CHARSETS[n] for n in self.names)

    @functools.cached_property
    def code_extension(self) -> bool:
        """ISO 2022 decoding: alternate sets, a switching scheme, or a set that needs it."""
        return len(self.names) > 1 or bool(self.scheme) or self.charsets[0].code_extension

    @property
    def label(self) -> str:
        """``8859/1``, ``ASCII~ISO IR87``: for logs, dead letters and ``mapping test``."""
        return "~".join(self.names)

    @property
    def dicom_terms(self) -> tuple[str, ...]:
        return tuple(c.dicom for c in self.charsets)

    def to_record(self) -> str:
        """The ``charset_used`` field of the message hash (compact JSON)."""
        return json.dumps(
            {"names": list(self.names), "scheme": self.scheme, "source": self.source},
            separators=(",", ":"),
        )

    @classmethod
    def from_record(cls, data: bytes | str) -> Decision:
        """Read ``charset_used``; CharsetError when it names a set this release lacks."""
        try:
            doc = json.loads(data)
            names = tuple(str(n) for n in doc["names"])
            scheme = str(doc.get("scheme") or "")
            source = str(doc.get("source") or "MSH-18")
        except (ValueError, TypeError, KeyError) as exc:
            reason = f"stored charset decision unreadable ({type(exc).__name__})"
            raise CharsetError(reason) from None
        for name in names:
            if name not in CHARSETS or CHARSETS[name].refused:
                raise CharsetError(f"stored charset decision names {name!r}, unknown here")
        if not names or scheme not in SCHEMES:
            raise CharsetError("stored charset decision is incomplete")
        return cls(names, scheme, source)

    # -- decoding ---------------------------------------------------------------------

    def decode(self, raw: bytes, escape_char: str = "\\") -> str:
        """The text of ``raw`` (a whole message, or an MSH segment). Strict: DecodeError
        for any byte that is not valid, an escape sequence for a set not declared, or a
        code-extension escape in a message that declares none."""
        esc = escape_char.encode("latin-1") if escape_char else b""
        if self.code_extension:
            return _decode_2022(raw, self._allowed(), self._initial(), esc)
        entry = self.charsets[0]
        if ESC in raw:
            # ESC is never HL7 text: this is ISO 2022 data whose sets MSH-18 does not
            # declare. Read as Latin-1 it became "$B;3ED (B" instead of 山田.
            raise DecodeError(
                f"ESC byte at offset {raw.index(ESC)}: ISO 2022 escape sequences need MSH-18 "
                f"to declare the sets (it declares only {entry.name})",
                raw.index(ESC),
            )
        if esc:
            m = _hl7_switch_re(esc).search(raw)
            if m is not None:
                raise DecodeError(
                    f"character set escape at offset {m.start()}, but MSH-18 declares only "
                    f"{entry.name} (no code extension)",
                    m.start(),
                )
        try:
            return raw.decode(entry.codec)
        except UnicodeDecodeError as exc:
            reason = f"byte not valid in {entry.name} at offset {exc.start}"
            raise DecodeError(reason, exc.start) from None

    def decode_fragment(self, data: bytes) -> str:
        """Bytes of an ``\\Xhh..\\`` escape, in the message's default set (strict)."""
        return self.decode(data, "")

    def encode(self, text: str) -> bytes:
        """``text`` in this decision's charset, for the ACK; what cannot be represented
        becomes ``?`` (the ACK echoes header fields only, never patient data)."""
        if not self.code_extension:
            return text.encode(self.charsets[0].codec, errors="replace")
        return _encode_2022(text, self._allowed(), self._initial())

    def _initial(self) -> tuple[GraphicSet, GraphicSet | None]:
        g0, g1 = self.charsets[0].initial
        return GRAPHIC_SETS[g0], GRAPHIC_SETS[g1] if g1 else None

    def _allowed(self) -> tuple[GraphicSet, ...]:
        # ASCII is always allowed: the delimiters and the MSH are ASCII, and table 0211
        # calls it the default when MSH-18 is empty.
        keys = ["ISO-IR 6"]
        for c in self.charsets:
            keys += [k for k in c.sets if k not in keys]
        return tuple(GRAPHIC_SETS[k] for k in keys)


def decide(
    msh18: str,
    msh20: str = "",
    default: str = DEFAULT_CHARSET,
    *,
    repetition_sep: str = "~",
    default_source: str = "mllp.default_charset",
) -> Decision:
    """The decision for a message whose MSH-18 is ``msh18`` (all repetitions, as text)
    and MSH-20 ``msh20``; ``default`` (same syntax, ``~`` between sets) applies when
    MSH-18 is empty. Raises :class:`CharsetError` (HL7 103) naming the field."""
    # A sender sends the same few headers over and over: decided once (errors are not
    # cached, and the cache is bounded against a sender inventing names).
    return _decide(msh18, msh20, default, repetition_sep, default_source)


@functools.lru_cache(maxsize=256)
def _decide(
    msh18: str, msh20: str, default: str, repetition_sep: str, default_source: str
) -> Decision:
    # ``location`` is the ERR field to blame; ``where`` names what held the bad name.
    source, location, where = "MSH-18", "MSH-18", "MSH-18"
    text = msh18.strip()
    if not text.replace(repetition_sep, "").strip():
        text, source, where, repetition_sep = default.strip(), default_source, default_source, "~"
    reps = [r.strip() for r in text.split(repetition_sep)]
    while len(reps) > 1 and not reps[-1]:
        reps.pop()  # "8859/1~" names one set
    names: list[str] = []
    for i, rep in enumerate(reps):
        if not rep:
            if i == 0:
                names.append("ASCII")  # HL7 2.16.9.18: an empty default is ASCII
                continue
            raise CharsetError(f"empty repetition {i + 1} in {where}", location)
        entry = lookup(rep)
        if entry is None:
            raise CharsetError(f"unknown character set in {where}: {rep!r}", location)
        if entry.refused:
            raise CharsetError(entry.refused, location)
        names.append(entry.name)
    scheme = _normalise(msh20)
    if scheme not in SCHEMES:
        raise CharsetError(f"MSH-20 {msh20.strip()!r} is not in HL7 table 0356", "MSH-20")
    decision = Decision(tuple(names), scheme, source)
    if decision.code_extension:
        for entry in decision.charsets:
            if not entry.sets:
                raise CharsetError(
                    f"{entry.name} cannot be combined with character set switching "
                    "(it has no ISO 2022 designation)",
                    "MSH-20" if len(names) == 1 else location,
                )
    return decision


def default_for(
    sending_app: str, sending_facility: str, sender_charsets: Mapping[str, str], default: str
) -> tuple[str, str]:
    """(default charset, setting it came from) for a sender: ``mllp.sender_charsets``
    by the key convention of ``worker.sender_mappings``, else ``mllp.default_charset``."""
    for key in sender_keys(sending_app, sending_facility):
        if key in sender_charsets:
            return sender_charsets[key], "mllp.sender_charsets"
    return default, "mllp.default_charset"


def check_settings(m: MllpSettings) -> None:
    """ConfigError (exit code 2) for a charset setting the table does not know."""
    for key, value in [
        ("mllp.default_charset", m.default_charset),
        *(("mllp.sender_charsets", v) for v in m.sender_charsets.values()),
    ]:
        try:
            decide("", "", value or DEFAULT_CHARSET, default_source=key)
        except CharsetError as exc:
            raise ConfigError(
                key, f"{exc.reason} (HL7 table 0211 names, e.g. 8859/1, UNICODE UTF-8)"
            ) from None
    for sender in m.sender_charsets:
        if not sender.strip() or sender.strip("|") != sender.strip():
            raise ConfigError("mllp.sender_charsets", f"{sender!r} is not MSH3 or MSH3|MSH4")


# -- ISO 2022 ---------------------------------------------------------------------------

#: One designation escape sequence: ESC, intermediate bytes 0x20-0x2F, a final byte.
_ISO_ESCAPE = rb"\x1b[\x20-\x2f]+[\x30-\x7e]"
#: Byte classes of a run between escape sequences: C0, GL, C1, GR.
_CLASSES = re.compile(rb"([\x00-\x1f]+)|([\x20-\x7f]+)|([\x80-\x9f]+)|([\xa0-\xff]+)")
#: C0 controls that are code extension themselves (SO, SI, ESC): never plain text.
_SHIFTS = frozenset(b"\x0e\x0f\x1b")


@functools.lru_cache(maxsize=8)
def _hl7_switch_re(esc: bytes) -> re.Pattern[bytes]:
    """HL7 v2.5 2.7.2 ``\\Cxxyy\\`` (single-byte set) and ``\\Mxxyy[zz]\\`` (multi-byte
    set): the bytes of an ISO 2022 escape sequence without the ESC, in hex."""
    e = re.escape(esc)
    return re.compile(
        e + rb"(?:C(?P<c>[0-9A-Fa-f]{4})|M(?P<m>[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?))" + e
    )


@functools.lru_cache(maxsize=8)
def _switch_re(esc: bytes) -> re.Pattern[bytes]:
    if not esc:
        return re.compile(_ISO_ESCAPE)
    return re.compile(_ISO_ESCAPE + b"|" + _hl7_switch_re(esc).pattern)


def _decode_2022(
    raw: bytes,
    allowed: tuple[GraphicSet, ...],
    initial: tuple[GraphicSet, GraphicSet | None],
    esc: bytes,
) -> str:
    g0, g1 = initial
    out: list[str] = []
    pos = 0
    for m in _switch_re(esc).finditer(raw):
        out.append(_decode_run(raw, pos, m.start(), g0, g1))
        pos = m.end()
        hexa = (m.group("c") or m.group("m")) if esc else None
        seq = bytes.fromhex(hexa.decode("ascii")) if hexa else m.group(0)[1:]
        target = _BY_ESCAPE.get(seq)
        if target is None:
            raise DecodeError(f"unknown escape sequence at offset {m.start()}", m.start())
        if target not in allowed:
            raise DecodeError(
                f"escape sequence for {target.key} at offset {m.start()}, a set MSH-18 does "
                "not declare",
                m.start(),
            )
        if hexa and (m.group("c") is not None) != (target.width == 1):
            kind = "\\C..\\ (single-byte)" if m.group("c") else "\\M..\\ (multi-byte)"
            raise DecodeError(f"{kind} escape for {target.key} at offset {m.start()}", m.start())
        if target.g == 0:
            g0 = target
        else:
            g1 = target
    out.append(_decode_run(raw, pos, len(raw), g0, g1))
    return "".join(out)


def _decode_run(raw: bytes, start: int, end: int, g0: GraphicSet, g1: GraphicSet | None) -> str:
    out: list[str] = []
    for m in _CLASSES.finditer(raw, start, end):
        c0, gl, c1, gr = m.groups()
        at = m.start()
        try:
            if c0 is not None:
                bad = next((i for i, b in enumerate(c0) if b in _SHIFTS), None)
                if bad is not None:
                    raise DecodeError(f"unsupported control byte at offset {at + bad}", at + bad)
                if g0.width != 1:
                    # ISO 2022 / RFC 1468: a line ends in a single-byte set; a CR inside a
                    # JIS X 0208 run means the sender forgot the switch back (ESC ( B).
                    raise DecodeError(f"control byte inside a {g0.key} run at offset {at}", at)
                out.append(c0.decode("ascii"))
            elif gl is not None:
                out.append(g0.decode_run(gl))
            elif c1 is not None:
                raise DecodeError(f"C1 control byte at offset {at}", at)
            else:
                if g1 is None:
                    raise DecodeError(f"byte above 0x7F at offset {at}, but no G1 set", at)
                out.append(g1.decode_run(gr))
        except UnicodeDecodeError as exc:
            where = at + exc.start
            which = g0.key if gl is not None else g1.key if g1 else "?"
            raise DecodeError(f"bytes not valid in {which} at offset {where}", where) from None
    return "".join(out)


def _encode_2022(
    text: str, allowed: tuple[GraphicSet, ...], initial: tuple[GraphicSet, GraphicSet | None]
) -> bytes:
    """ISO 2022 encoding with the declared sets: ASCII characters in ASCII (designated
    back before every delimiter, as HL7 needs), others in the first set that has them."""
    g0, g1 = initial
    out = bytearray()

    def designate(s: GraphicSet) -> None:
        nonlocal g0, g1
        if s.g == 0 and s is not g0:
            out.extend(b"\x1b" + s.escape)
            g0 = s
        elif s.g == 1 and s is not g1:
            out.extend(b"\x1b" + s.escape)
            g1 = s

    for ch in text:
        if ch.isascii():
            designate(_ASCII)
            out.extend(ch.encode("ascii"))
            continue
        for s in (g1, *allowed):
            data = s.encode_char(ch) if s is not None else None
            if data is not None:
                designate(s)
                out.extend(data)
                break
        else:
            designate(_ASCII)
            out.extend(b"?")
    designate(initial[0])
    return bytes(out)
