"""MSH-only pre-read from raw bytes: just enough to gate a message and build its ACK.

No HL7 library here on purpose: the ACK path must answer even when the body is not
parseable (HL7 v2.5 chapter 2.9 processing rules check only MSH-9, MSH-11 and MSH-12
before accepting), and it must stay at microseconds per message. The delimiters come
from MSH-1 (field separator) and MSH-2 (component, repetition, escape, subcomponent).

Two passes: the MSH segment is split on the field separator *as bytes* to find MSH-18
and MSH-20 (ASCII in every charset), which with the sender's default give the charset
decision (:func:`bridge.hl7.charsets.decide`); then the segment is decoded with that
decision and split again *as text*. The second pass matters for GB 18030, Big5 and 7-bit
ISO 2022, whose multi-byte characters may contain the bytes of ``|`` or ``^``; if it does
not find the same MSH-18/MSH-20, the message is refused rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bridge.hl7.charsets import (
    DEFAULT_CHARSET,
    CharsetError,
    Decision,
    DecodeError,
    decide,
    default_for,
)

#: MSH field numbers read (1-based, HL7 numbering: MSH-1 is the field separator itself).
MSH_FIELDS = (3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16, 18, 20)

#: Bytes that can never be HL7 delimiters (letters, digits, segment ends).
_FORBIDDEN_DELIMITERS = frozenset(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n"
)

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


class MshError(Exception):
    """The MSH could not be read. ``partial`` holds whatever was read (for the NAK)."""

    STRUCTURE = "structure"  # no MSH, bad delimiters: not HL7 as far as we can tell
    UNKNOWN_CHARSET = "unknown_charset"  # MSH-18/MSH-20 name no character set we decode
    UNDECODABLE = "undecodable"  # MSH bytes invalid in the decided character set

    def __init__(
        self,
        reason: str,
        partial: Msh | None = None,
        kind: str = STRUCTURE,
        location: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.kind = kind
        self.location = location  # HL7 field to blame (MSH-18, MSH-20), "" = none


def normalise_version(raw: str) -> str:
    """MSH-12 version id as compared with the accepted list.

    Only the first component (VID.1) counts; a ``.0`` patch level names the same
    version ("2.3.0" is 2.3), other patch levels are kept ("2.3.1").
    """
    value = raw.strip()
    m = _VERSION_RE.match(value)
    if not m:
        return value
    major, minor, patch = m.groups()
    if patch is None or patch == "0":
        return f"{int(major)}.{int(minor)}"
    return f"{int(major)}.{int(minor)}.{int(patch)}"


def version_tuple(version: str) -> tuple[int, ...] | None:
    m = _VERSION_RE.match(version.strip())
    if not m:
        return None
    return tuple(int(p) for p in m.groups() if p is not None)


class Msh:
    """The MSH fields the listener needs, decoded; empty string = absent.

    Everything is computed once at construction: the gate, the intake record, the ACK
    and the log line each read these values, and this runs once per message on the
    event loop, so plain attributes beat properties here.
    """

    __slots__ = (
        "accept_ack_type",
        "application_ack_type",
        "charset",
        "charset_scheme",
        "component_sep",
        "control_id",
        "decision",
        "encoding_chars",
        "enhanced_mode",
        "field_sep",
        "fields",
        "message_type",
        "processing_id",
        "processing_id_raw",
        "receiving_app",
        "receiving_facility",
        "repetition_sep",
        "sending_app",
        "sending_facility",
        "trigger",
        "type_code",
        "version",
        "version_raw",
        "version_tuple",
    )

    def __init__(
        self,
        field_sep: str = "|",
        encoding_chars: str = "^~\\&",
        fields: dict[int, str] | None = None,
        decision: Decision | None = None,
    ) -> None:
        self.field_sep = field_sep
        self.encoding_chars = encoding_chars
        self.component_sep = encoding_chars[0] if encoding_chars else "^"
        self.repetition_sep = encoding_chars[1] if len(encoding_chars) > 1 else "~"
        #: The charset decision the message is decoded with (and its ACK encoded in);
        #: a partial MSH read for a NAK gets the Latin-1 default.
        self.decision = decision or _FALLBACK
        self.fields: dict[int, str] = fields or {}
        get = self.fields.get
        self.sending_app = get(3, "")
        self.sending_facility = get(4, "")
        self.receiving_app = get(5, "")
        self.receiving_facility = get(6, "")
        self.control_id = get(10, "")
        self.processing_id_raw = get(11, "")
        self.version_raw = get(12, "")
        #: MSH-18 as received, every repetition (``~ISO IR87``), and MSH-20.
        self.charset = get(18, "").strip()
        self.charset_scheme = get(20, "").strip()
        self.type_code = self.component(9, 1)
        self.trigger = self.component(9, 2)
        #: ``TYPE^TRIGGER`` (MSH-9.1 and MSH-9.2), always with ``^``, e.g. ``ORM^O01``.
        self.message_type = f"{self.type_code}^{self.trigger}" if self.trigger else self.type_code
        #: MSH-11.1: P production, D debugging, T training.
        self.processing_id = self.component(11, 1)
        self.version = normalise_version(self.component(12, 1))
        self.version_tuple = version_tuple(self.version)
        self.accept_ack_type = self.component(15, 1).upper()
        self.application_ack_type = self.component(16, 1).upper()
        #: HL7 v2 2.9.3: enhanced acknowledgement mode when MSH-15 or MSH-16 is valued.
        self.enhanced_mode = bool(get(15, "").strip() or get(16, "").strip())

    @property
    def escape_char(self) -> str:
        return self.encoding_chars[2] if len(self.encoding_chars) > 2 else ""

    def get(self, number: int) -> str:
        return self.fields.get(number, "")

    def component(self, number: int, index: int) -> str:
        """Component ``index`` (1-based) of the first repetition of MSH-``number``."""
        value = self.fields.get(number, "")
        if not value:
            return ""
        parts = value.split(self.repetition_sep, 1)[0].split(self.component_sep)
        return parts[index - 1].strip() if index <= len(parts) else ""

    def meta(self) -> dict[str, str]:
        """Header metadata safe to log and keep with a dead letter (no patient data)."""
        return {
            "sending_app": self.sending_app,
            "sending_facility": self.sending_facility,
            "receiving_app": self.receiving_app,
            "receiving_facility": self.receiving_facility,
            "control_id": self.control_id,
            "message_type": self.message_type,
            "version": self.version_raw,
            "processing_id": self.processing_id_raw,
            "charset": self.charset,
        }


_FALLBACK = Decision((DEFAULT_CHARSET,), source="mllp.default_charset")


def _segment_end(raw: bytes, start: int) -> int:
    ends = [i for i in (raw.find(b"\r", start), raw.find(b"\n", start)) if i >= 0]
    return min(ends) if ends else len(raw)


class RawMsh:
    """The MSH segment split as bytes: where it starts, its delimiters, its fields.
    (A plain slotted class: built once per message on the event loop.)"""

    __slots__ = ("encoding_chars", "field_sep", "fields", "segment", "start")

    def __init__(
        self, start: int, segment: bytes, field_sep: str, encoding_chars: str,
        fields: dict[int, bytes],
    ) -> None:  # fmt: skip
        self.start = start  # offset of "MSH" in the frame
        self.segment = segment
        self.field_sep = field_sep
        self.encoding_chars = encoding_chars
        self.fields = fields  # MSH-n → raw bytes, for n in MSH_FIELDS

    def text(self, number: int) -> str:
        """A field read as Latin-1 (bijective: for the charset fields and NAKs only)."""
        return self.fields.get(number, b"").decode("latin-1")

    @property
    def repetition_sep(self) -> str:
        return self.encoding_chars[1] if len(self.encoding_chars) > 1 else "~"

    def partial(self) -> Msh:
        """What a NAK can echo when the charset is unknown or the MSH undecodable."""
        return Msh(self.field_sep, self.encoding_chars, {n: self.text(n) for n in self.fields})


def split_msh(raw: bytes) -> RawMsh:
    """Find the MSH segment at the start of ``raw`` (leading CR/LF/space/NUL skipped),
    check MSH-1/MSH-2 and split it as bytes. Raises MshError (no partial)."""
    start = 0
    while start < len(raw) and raw[start] in b"\r\n \t\x00":
        start += 1
    if raw[start : start + 3] != b"MSH" or len(raw) < start + 8:
        raise MshError("message does not start with an MSH segment")
    sep = raw[start + 3 : start + 4]
    end = _segment_end(raw, start)
    segment = raw[start:end]
    parts = segment.split(sep)
    enc = parts[1] if len(parts) > 1 else b""
    delimiters = sep + enc
    if (
        sep.isalnum()
        or sep in b"\r\n"
        or not 2 <= len(enc) <= 5
        or len(set(delimiters)) != len(delimiters)
        or not _FORBIDDEN_DELIMITERS.isdisjoint(enc)
        or not delimiters.isascii()
    ):
        raise MshError("invalid MSH-1/MSH-2 delimiters")
    # parts[0] = "MSH", parts[1] = MSH-2, parts[n] = MSH-(n+1)
    fields = {n: parts[n - 1] for n in MSH_FIELDS if n - 1 < len(parts)}
    return RawMsh(start, segment, chr(sep[0]), enc.decode("ascii"), fields)


def decision_for(
    head: RawMsh, default_charset: str, sender_charsets: Mapping[str, str] | None = None
) -> Decision:
    """The listener's charset decision for this MSH (raises CharsetError, HL7 103)."""
    default, source = default_for(
        head.text(3), head.text(4), sender_charsets or {}, default_charset or DEFAULT_CHARSET
    )
    return decide(
        head.text(18),
        head.text(20),
        default,
        repetition_sep=head.repetition_sep,
        default_source=source,
    )


def read_msh(
    raw: bytes,
    default_charset: str = DEFAULT_CHARSET,
    sender_charsets: Mapping[str, str] | None = None,
    decision: Decision | None = None,
) -> Msh:
    """Read the MSH segment at the start of ``raw`` (frame content without VT/FS/CR).

    The charset is ``decision`` when given (a replay of a recorded decision), else
    decided from MSH-18/MSH-20 with ``default_charset`` / ``sender_charsets`` for an
    empty MSH-18. Segment separators CR, LF and CRLF are all tolerated. Raises
    :class:`MshError` with ``partial`` filled as far as it got (delimiters, fields read
    as Latin-1) so a NAK can still echo MSH-10.
    """
    head = split_msh(raw)
    try:
        if decision is None:
            decision = decision_for(head, default_charset, sender_charsets)
    except CharsetError as exc:
        raise MshError(exc.reason, head.partial(), MshError.UNKNOWN_CHARSET, exc.location) from None
    try:
        text = decision.decode(head.segment, head.encoding_chars[2:3])
    except DecodeError as exc:
        reason = f"MSH not decodable as {decision.label}: {exc.reason}"
        raise MshError(reason, head.partial(), MshError.UNDECODABLE) from None
    parts = text.split(head.field_sep)
    fields = {n: parts[n - 1] for n in MSH_FIELDS if n - 1 < len(parts)}
    if any(fields.get(n, "") != head.text(n) for n in (18, 20)) or _lead_byte_ambiguity(head):
        # A multi-byte character before MSH-18 held a delimiter byte: the byte split
        # found another MSH-18 than the text does. Refuse rather than guess.
        reason = "MSH-18 is ambiguous: a multi-byte character in MSH-3..17 holds a delimiter byte"
        raise MshError(reason, head.partial(), MshError.UNKNOWN_CHARSET, "MSH-18")
    return Msh(head.field_sep, head.encoding_chars, fields, decision)


def _lead_byte_ambiguity(head: RawMsh) -> bool:
    """True when GB 18030 or Big5 would put MSH-18 elsewhere than the plain byte split.

    Their trail bytes include ``|`` and ``^``: a Chinese sending facility may hide the
    real MSH-18 from the byte split, which would then find an empty one and decide on
    the default (Latin-1 would accept any bytes: names mangled, ACKed AA). Splitting again
    with "a byte >= 0x81 and the byte after it are one character" finds such an MSH-18;
    if it names one of these sets, the header is ambiguous. Only for non-ASCII MSHs."""
    segment = head.segment
    if segment.isascii():
        return False
    sep = ord(head.field_sep)
    parts: list[bytes] = []
    i, start, n = 0, 0, len(segment)
    while i < n:
        b = segment[i]
        if b >= 0x81:
            i += 2
            continue
        if b == sep:
            parts.append(segment[start:i])
            start = i + 1
        i += 1
    parts.append(segment[start:])
    msh18 = parts[17].decode("latin-1") if len(parts) > 17 else ""
    msh20 = parts[19].decode("latin-1") if len(parts) > 19 else ""
    if (msh18, msh20) == (head.text(18), head.text(20)):
        return False
    try:
        other = decide(msh18, msh20, repetition_sep=head.repetition_sep)
    except CharsetError:
        return False
    return other.names[0] in ("GB 18030-2000", "BIG-5")
