"""MSH-only pre-read from raw bytes: just enough to gate a message and build its ACK.

No HL7 library here on purpose: the ACK path must answer even when the body is not
parseable (HL7 v2.5 chapter 2.9 processing rules check only MSH-9, MSH-11 and MSH-12
before accepting), and it must stay at microseconds per message. The delimiters come
from MSH-1 (field separator) and MSH-2 (component, repetition, escape, subcomponent).

The MSH segment is split on the field separator *as bytes*, and each field is decoded
with the codec named by MSH-18 (HL7 table 0211), or the configured default when MSH-18
is empty, so that non-ASCII sender names survive into the ACK unchanged.
"""

from __future__ import annotations

import re

#: HL7 table 0211 (alternate character sets) → Python codec. UTF-16/32 are absent on
#: purpose: their code units can contain the MLLP framing bytes, so they cannot travel
#: over MLLP R1.
CHARSETS_0211: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR6": "ascii",
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE UTF-8": "utf-8",
}

#: Non-standard spellings seen in the field (IANA names); accepted with the same meaning.
_CHARSET_ALIASES: dict[str, str] = {
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ISO-8859-1": "latin-1",
    "ISO8859-1": "latin-1",
    "LATIN1": "latin-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
    "US-ASCII": "ascii",
}

#: MSH field numbers read (1-based, HL7 numbering: MSH-1 is the field separator itself).
MSH_FIELDS = (3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16, 18)

#: Bytes that can never be HL7 delimiters (letters, digits, segment ends).
_FORBIDDEN_DELIMITERS = frozenset(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n"
)

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


class MshError(Exception):
    """The MSH could not be read. ``partial`` holds whatever was read (for the NAK)."""

    STRUCTURE = "structure"  # no MSH, bad delimiters: not HL7 as far as we can tell
    UNKNOWN_CHARSET = "unknown_charset"  # MSH-18 names no character set we know
    UNDECODABLE = "undecodable"  # MSH bytes invalid in the declared character set

    def __init__(self, reason: str, partial: Msh | None = None, kind: str = STRUCTURE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.kind = kind


def codec_for(charset: str) -> str | None:
    """Python codec for an HL7 table 0211 name (or a common IANA alias); None = unknown."""
    name = charset.strip().upper()
    return CHARSETS_0211.get(name) or _CHARSET_ALIASES.get(name)


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
        "codec",
        "component_sep",
        "control_id",
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
        codec: str = "latin-1",
    ) -> None:
        self.field_sep = field_sep
        self.encoding_chars = encoding_chars
        self.component_sep = encoding_chars[0] if encoding_chars else "^"
        self.repetition_sep = encoding_chars[1] if len(encoding_chars) > 1 else "~"
        self.codec = codec  # codec the message (and its ACK) is encoded in
        self.fields: dict[int, str] = fields or {}
        get = self.fields.get
        self.sending_app = get(3, "")
        self.sending_facility = get(4, "")
        self.receiving_app = get(5, "")
        self.receiving_facility = get(6, "")
        self.control_id = get(10, "")
        self.processing_id_raw = get(11, "")
        self.version_raw = get(12, "")
        self.charset = get(18, "")
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


def _segment_end(raw: bytes, start: int) -> int:
    ends = [i for i in (raw.find(b"\r", start), raw.find(b"\n", start)) if i >= 0]
    return min(ends) if ends else len(raw)


def read_msh(raw: bytes, default_charset: str = "8859/1") -> Msh:
    """Read the MSH segment at the start of ``raw`` (frame content without VT/FS/CR).

    Segment separators CR, LF and CRLF are all tolerated. Raises :class:`MshError` with
    ``partial`` filled as far as it got (delimiters, any fields decodable as Latin-1) so
    a NAK can still echo MSH-10.
    """
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
    ):
        raise MshError("invalid MSH-1/MSH-2 delimiters")
    # parts[0] = "MSH", parts[1] = MSH-2, parts[n] = MSH-(n+1)
    n_parts = len(parts)
    raw_fields = {n: parts[n - 1] for n in MSH_FIELDS if n - 1 < n_parts}
    field_sep = chr(sep[0])
    enc_text = enc.decode("latin-1")
    rep = enc_text[1] if len(enc_text) > 1 else "~"
    charset = raw_fields.get(18, b"").decode("latin-1").split(rep, 1)[0].strip()
    codec = codec_for(charset or default_charset)
    try:
        if codec is None:
            raise LookupError(charset)
        fields = {n: v.decode(codec) for n, v in raw_fields.items()}
    except (UnicodeDecodeError, LookupError):
        partial = Msh(field_sep, enc_text, {n: v.decode("latin-1") for n, v in raw_fields.items()})
        if codec is None:
            reason = f"unknown character set in MSH-18: {charset!r}"
            raise MshError(reason, partial, MshError.UNKNOWN_CHARSET) from None
        reason = f"MSH not decodable as {charset or default_charset}"
        raise MshError(reason, partial, MshError.UNDECODABLE) from None
    return Msh(field_sep, enc_text, fields, codec)
