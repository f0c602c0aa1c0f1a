"""HL7 v2 in: raw bytes → decoded text → hl7apy parse → a :class:`Message`.

The steps, in order (each a function so tests and ``mapping test`` can reuse them):

1. :func:`bridge.hl7.msh.split_msh` reads the MSH delimiters from the *bytes*.
2. :func:`decode` decodes the whole message with the listener's charset decision (the
   ``charset_used`` it recorded at ACK time, :mod:`bridge.hl7.charsets`); a message
   stored by an older release has none, and the same decision is then made here from
   MSH-18/MSH-20 and the same settings. Strict: an unknown charset is HL7 103, bytes
   that do not decode are 102. The whole message is decoded *before* it is split on
   delimiters: with ISO 2022 (MSH-20) a 7-bit JIS X 0208 run holds ``| ^ ~ \\ &``
   bytes as halves of kanji.
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

from collections.abc import Mapping

from bridge.core.codes import Hl7Error
from bridge.core.errors import MessageRejected
from bridge.hl7.charsets import DEFAULT_CHARSET, CharsetError, Decision, DecodeError
from bridge.hl7.message import Message, split_segments
from bridge.hl7.msh import MshError, RawMsh, decision_for, split_msh

#: Versions with an ORM^O01 model in hl7apy, oldest first (ORM was withdrawn after 2.5.1).
SUPPORTED_VERSIONS: tuple[str, ...] = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1")


def read_head(raw: bytes) -> RawMsh:
    """The MSH delimiters and fields as bytes; no MSH is a rejection (HL7 100)."""
    start = raw.find(b"MSH")
    try:
        return split_msh(raw[start:] if start >= 0 else raw)
    except MshError as exc:
        raise MessageRejected(exc.reason, Hl7Error.SEGMENT_SEQUENCE, "MSH") from None


def decide(
    head: RawMsh, default_charset: str, sender_charsets: Mapping[str, str] | None = None
) -> Decision:
    """The charset decision for a message without a recorded one (stored by a release
    before the listener recorded it): the listener's own rule. Unknown name → 103."""
    try:
        return decision_for(head, default_charset, sender_charsets)
    except CharsetError as exc:
        raise MessageRejected(exc.reason, Hl7Error.TABLE_VALUE_NOT_FOUND, exc.location) from None


def decode(raw: bytes, decision: Decision, escape_char: str = "\\") -> str:
    """Decode ``raw`` with ``decision``; bytes that do not decode are rejected (102),
    never replaced: a silently mangled patient name is worse than an AE."""
    try:
        return decision.decode(raw, escape_char)
    except DecodeError as exc:
        raise MessageRejected(
            f"message bytes are not valid {decision.label}: {exc.reason}",
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


def parse(
    raw: bytes,
    decision: Decision | None = None,
    default_charset: str = DEFAULT_CHARSET,
    sender_charsets: Mapping[str, str] | None = None,
) -> Message:
    """Decode (with ``decision``, else the listener's rule over ``default_charset`` and
    ``sender_charsets``), normalise, coerce the version, parse once with hl7apy; see the
    module doc."""
    head = read_head(raw)
    if decision is None:
        decision = decide(head, default_charset, sender_charsets)
    enc = head.encoding_chars
    start = raw.find(b"MSH")
    text = decode(raw[start:], decision, enc[2:3])
    text = normalise(text)
    if len(enc) < 3:
        raise MessageRejected("MSH-1/MSH-2 delimiters are invalid", Hl7Error.DATA_TYPE, "MSH-2")
    sent_version = head.text(12).split(enc[0])[0].strip()
    version = coerce_version(sent_version)
    segments = split_segments(text, enc, head.field_sep)
    if sent_version != version:
        # Tell hl7apy the version we coerced to; the stored raw copy keeps the original.
        msh_fields = segments[0].fields
        while len(msh_fields) <= 12:
            msh_fields.append("")
        comps = msh_fields[12].split(enc[0])
        msh_fields[12] = enc[0].join([version, *comps[1:]])
        first = head.field_sep.join(["MSH", *msh_fields[2:]])
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
    return Message(segments, enc, version, decision)
