"""HL7 escape sequences (v2.5 chapter 2.7), resolved when a leaf value is read.

``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` give back the delimiters, ``\\.br\\`` a line break,
``\\Xhh..\\`` bytes in the message's character set (2.7.3). The character set switches
``\\Cxxyy\\`` and ``\\Mxxyyzz\\`` (2.7.2) are resolved earlier, while the whole message is
decoded (:meth:`bridge.hl7.charsets.Decision.decode`), because the bytes they switch
may hold delimiter bytes; one that is still here was not resolvable and is an error.

Strict: ``\\X..\\`` that is not hex or does not decode is an :class:`EscapeError` (HL7
102), never U+FFFD and never silently dropped — a mangled patient name is where
wrong-patient images come from. Formatting (``\\H\\ \\N\\``, ``\\.sp\\``...) and local
``\\Z..\\`` escapes carry no text and are dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

#: Decodes the bytes of an ``\\X..\\`` escape in the message's character set.
Decoder = Callable[[bytes], str]


#: ``\Cxxyy\`` / ``\Mxxyy[zz]\`` between the escape characters (v2.5 2.7.2).
_CHARSET_SWITCH = re.compile(r"C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?")


class EscapeError(ValueError):
    """An escape sequence that does not resolve (the reason names no content)."""


def _decoder(decode: str | Decoder) -> Decoder:
    if callable(decode):
        return decode
    return lambda data: data.decode(decode)


def unescape(value: str, enc: str, decode: str | Decoder = "latin-1") -> str:
    """Resolve the escape sequences of one leaf value (a component or subcomponent).

    ``decode`` is the message's charset for ``\\Xhh..\\``: a Python codec name or a
    function (the message's :class:`~bridge.hl7.charsets.Decision`), strict either way.
    Raises :class:`EscapeError`."""
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
        elif seq.startswith("X"):
            out.append(_hex(seq[1:], decode))
        elif _CHARSET_SWITCH.fullmatch(seq):
            # The decode consumes every switch it can resolve, or refuses the message.
            raise EscapeError("character set escape that was not resolved (HL7 v2.5 2.7.2)")
        # \H\ \N\ highlighting, \.sp\ \.in\ ... formatting, \Z..\ custom: dropped.
    return "".join(out)


def _hex(digits: str, decode: str | Decoder) -> str:
    """HL7 v2.5 2.7.3 ``\\Xdddd..\\``: hexadecimal bytes in the message's charset."""
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise EscapeError("\\X..\\ escape that is not an even number of hex digits") from None
    try:
        return _decoder(decode)(data)
    except (UnicodeDecodeError, ValueError):
        # ValueError: the charsets module's DecodeError.
        reason = "\\X..\\ escape whose bytes do not decode in the message charset"
        raise EscapeError(reason) from None


def first_bad_escape(text: str, field_sep: str, enc: str, decode: str | Decoder) -> str:
    """The reason the first unresolvable escape of a decoded message fails, or "".

    The listener calls this at ACK time so that what it ACKs AA the worker can read: it
    cuts the message into leaf values exactly as the worker's field access does (every
    delimiter and segment end) and unescapes each leaf that holds the escape character.
    MSH-1/MSH-2 are the delimiters themselves and are skipped."""
    esc = enc[2] if len(enc) > 2 else ""
    if not esc:
        return ""
    text = text.lstrip("\r\n \t\x00")
    body = text[3 + len(field_sep) + len(enc) :] if text.startswith("MSH") else text
    if not any(esc + kind in body for kind in "XCM"):
        return ""  # only \X..\ and charset switches can fail; most messages have neither
    for m in _leaves_with_escapes(field_sep, enc).finditer(body):
        try:
            unescape(m.group(0), enc, decode)
        except EscapeError as exc:
            return str(exc)
    return ""


@functools.lru_cache(maxsize=16)
def _leaves_with_escapes(field_sep: str, enc: str) -> re.Pattern[str]:
    """Leaf values (between any two delimiters or segment ends) holding the escape char."""
    delimiters = "".join(re.escape(d) for d in {field_sep, enc[0], enc[1], *enc[3:4]})
    other = f"[^{delimiters}\r\n]*"
    return re.compile(f"{other}{re.escape(enc[2])}{other}")
