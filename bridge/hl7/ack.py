"""HL7 v2 acknowledgements built from the inbound MSH only (no full parse).

Rules (HL7 v2.5 chapter 2.9 and 2.14–2.15; the same in 2.3–2.5.1 except where noted):

* MSH-3/4 of the ACK are the inbound MSH-5/6 and vice versa; MSH-7 is now; MSH-10 is new;
  MSH-11 and MSH-12 are copied; MSH-18 (every repetition) and MSH-20 are echoed and the
  ACK is encoded with the inbound charset decision (ISO 2022 escapes included);
  MSH-15/16 stay empty so nobody acknowledges an ACK.
* MSH-9 is ``ACK^<trigger>^ACK`` from v2.4 on (the message structure component exists
  since 2.3.1 but 2.3-era receivers choke on it) and plain ``ACK`` before.
* MSA-1 the code, MSA-2 the inbound MSH-10 exactly, MSA-3 a short text.
* ERR for every non-positive code: v2.5+ ``ERR||<ERL location>|<code>^<text>^HL70357|E``,
  older versions ``ERR|<segment>^<seq>^<field>^<code>&<text>&HL70357`` (ERR-1, ELD type).
* Enhanced mode (MSH-15 or MSH-16 valued, table 0155): the accept acknowledgement is
  CA/CE/CR and is sent or not according to MSH-15 (AL always, NE never, ER only when
  not accepted, SU only when accepted; empty or unknown = AL, so nobody is left waiting).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import time
from dataclasses import dataclass
from enum import Enum

from bridge.core.codes import AckCode, AckCondition, Hl7Error
from bridge.hl7.charsets import CharsetError, decide
from bridge.hl7.msh import Msh

DEFAULT_VERSION = "2.5"
_DEFAULT_VERSION_TUPLE = (2, 5)
_LOCATION_RE = re.compile(r"^([A-Z][A-Z0-9]{2})[-.](\d+)(?:[-.](\d+))?(?:[-.](\d+))?$")


class Outcome(Enum):
    """What happened to the message; mapped to a code per mode and settings."""

    ACCEPTED = "accepted"
    ERROR = "error"  # content the sender must fix
    REJECTED = "rejected"  # not this interface, or a transient failure worth a resend


@dataclass(frozen=True)
class AckPolicy:
    """Configurable codes (``mllp.reject_code`` / ``mllp.error_code``) and mode handling."""

    reject_code: str = "AR"
    error_code: str = "AE"
    enhanced_mode: bool = True
    default_charset: str = "8859/1"


@dataclass(frozen=True)
class Ack:
    code: AckCode
    content: bytes  # encoded ACK message (segments ending in CR), not MLLP-framed
    send: bool  # False when MSH-15 says this acknowledgement is not wanted


def choose_code(outcome: Outcome, msh: Msh | None, policy: AckPolicy) -> AckCode:
    enhanced = policy.enhanced_mode and msh is not None and msh.enhanced_mode
    if outcome is Outcome.ACCEPTED:
        code = AckCode.AA
    elif outcome is Outcome.ERROR:
        code = AckCode(policy.error_code)
    else:
        code = AckCode(policy.reject_code)
    if enhanced:
        code = {AckCode.AA: AckCode.CA, AckCode.AE: AckCode.CE, AckCode.AR: AckCode.CR}[code]
    return code


def should_send(code: AckCode, msh: Msh | None, policy: AckPolicy) -> bool:
    """Table 0155 condition of MSH-15 for the accept acknowledgement (enhanced mode only)."""
    if not (policy.enhanced_mode and msh is not None and msh.enhanced_mode):
        return True
    condition = msh.accept_ack_type
    if condition == AckCondition.NEVER:
        return False
    if condition == AckCondition.ERROR:
        return not code.is_positive
    if condition == AckCondition.SUCCESS:
        return code.is_positive
    return True


@functools.lru_cache(maxsize=256)  # the same few fixed texts, once per message
def escape(text: str, field_sep: str = "|", encoding_chars: str = "^~\\&") -> str:
    """HL7 escape sequences (chapter 2.7) for free text placed in a field."""
    specials = field_sep + encoding_chars + "\r\n"
    if not any(ch in specials for ch in text):
        return text  # the common case: our fixed texts
    esc = encoding_chars[2] if len(encoding_chars) > 2 else "\\"
    names = {field_sep: "F", esc: "E"}
    for ch, name in zip(encoding_chars[:2], "SR", strict=False):
        names[ch] = name
    if len(encoding_chars) > 3:
        names[encoding_chars[3]] = "T"
    out = []
    for ch in text:
        if ch in names:
            out.append(f"{esc}{names[ch]}{esc}")
        elif ch in "\r\n":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _location_components(location: str) -> tuple[str, str, str, str] | None:
    """``PID-3`` / ``PID.3.1`` → (segment, sequence, field, component)."""
    m = _LOCATION_RE.match(location.strip().upper())
    if not m:
        return None
    seg, fld, comp, _sub = m.groups()
    return seg, "1", fld, comp or ""


_stamp_cache: tuple[int, str] = (0, "")


def _now_stamp() -> str:
    """MSH-7 for now, local time with UTC offset; formatted once per second."""
    global _stamp_cache
    second = int(time.time())
    if _stamp_cache[0] != second:
        stamp = dt.datetime.fromtimestamp(second).astimezone().strftime("%Y%m%d%H%M%S%z")
        _stamp_cache = (second, stamp)
    return _stamp_cache[1]


def new_control_id() -> str:
    """A fresh MSH-10 (20 characters: the ST length limit of v2.3)."""
    return os.urandom(10).hex()


def build_ack(
    msh: Msh | None,
    outcome: Outcome,
    policy: AckPolicy,
    *,
    error: Hl7Error | None = None,
    text: str = "",
    location: str = "",
    now: dt.datetime | None = None,
    control_id: str | None = None,
) -> Ack:
    """The acknowledgement for a message whose MSH is ``msh`` (None when unreadable).

    ``error`` defaults to 207 for non-accepted outcomes; ``text`` goes to MSA-3 (and to
    ERR). ``location`` names the field to blame (``MSH-9``, ``PID-3``) for ERR.
    """
    code = choose_code(outcome, msh, policy)
    h = msh or Msh()
    fs = h.field_sep
    enc = h.encoding_chars
    cs = h.component_sep
    sub = enc[3] if len(enc) > 3 else "&"
    version_raw = h.version_raw
    version = h.version_tuple or _DEFAULT_VERSION_TUPLE
    if not version_raw.strip():
        version_raw = DEFAULT_VERSION
    if version >= (2, 4):
        trigger = h.trigger
        msh9 = f"ACK{cs}{trigger}{cs}ACK" if trigger else f"ACK{cs}{cs}ACK"
    else:
        msh9 = "ACK"
    stamp = now.strftime("%Y%m%d%H%M%S%z") if now else _now_stamp()
    processing = h.processing_id_raw or "P"
    charset, scheme = h.charset, h.charset_scheme
    msh_fields = [
        "MSH",
        enc,
        h.receiving_app,
        h.receiving_facility,
        h.sending_app,
        h.sending_facility,
        stamp,
        "",
        msh9,
        control_id or new_control_id(),
        processing,
        version_raw,
    ]
    if charset or scheme:
        msh_fields += ["", "", "", "", "", charset]  # MSH-13..17 empty, MSH-18 echoed
    if scheme:
        msh_fields += ["", scheme]  # MSH-20: the ACK switches sets the same way
    segments = [fs.join(msh_fields)]

    if not code.is_positive and error is None:
        error = Hl7Error.INTERNAL_ERROR
    default_text = error.text if error is not None else Hl7Error.ACCEPTED.text
    msa_text = escape(text or default_text, fs, enc)
    segments.append(fs.join(["MSA", code.value, h.control_id, msa_text]))
    if not code.is_positive and error is not None:
        err_text = escape(error.text, fs, enc)
        loc = _location_components(location)
        if version >= (2, 5):
            erl = cs.join(loc).rstrip(cs) if loc else ""
            cwe = cs.join([str(int(error)), err_text, "HL70357"])
            segments.append(fs.join(["ERR", "", erl, cwe, "E"]))
        else:
            seg, seq, fld, _comp = loc or ("", "", "", "")
            ce = sub.join([str(int(error)), err_text, "HL70357"])
            segments.append(fs.join(["ERR", cs.join([seg, seq, fld, ce])]))

    text = "\r".join(segments) + "\r"
    if msh is not None:
        content = msh.decision.encode(text)
    else:
        try:
            content = decide("", "", policy.default_charset).encode(text)
        except CharsetError:  # settings are checked at start; never fail a NAK on them
            content = text.encode("latin-1", errors="replace")
    return Ack(code=code, content=content, send=should_send(code, msh, policy))
