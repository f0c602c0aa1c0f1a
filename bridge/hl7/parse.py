"""HL7 v2 in: raw bytes → decoded text → hl7apy parse → a :class:`Message`.

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
5. :class:`~bridge.hl7.message.Message` answers HL7 paths and unescapes values
   (:mod:`bridge.hl7.escapes`) only when a leaf value is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.hl7.charsets import CHARSETS
from bridge.hl7.message import Message, split_segments

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
