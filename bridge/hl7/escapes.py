"""HL7 escape sequences (v2 chapter 2.7), resolved when a leaf value is read."""

from __future__ import annotations

import contextlib


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
