"""Transliteration of the characters a forced response character set cannot represent
(``scp.unrepresentable_text = transliterate``).

Only those characters change: ``é`` stays ``é`` in ISO_IR 100, ``Ł`` becomes ``L``.
German umlauts and ß follow DIN 5007-2 (Ä → AE, Ö → OE, Ü → UE, ß → ss, upper case in an
upper-case word, ``Ue`` before lower case); everything else goes through ``anyascii``
(ISC licence, tables generated from Unicode data and maintained upstream).

Refused (the item is skipped instead), because a wrong name on a scan is worse than a
missing worklist entry:

* letters outside the Latin, Greek and Cyrillic scripts: Han ideographs have one
  romanisation per language (山田 would become the Chinese ``ShanTian``), abjads lose
  their vowels, syllabaries have competing systems;
* symbols and other non-text characters;
* a letter that would vanish, or a replacement holding a DICOM delimiter (``\\ ^ =``) or a
  control character, which would change the structure of the value.
"""

from __future__ import annotations

import unicodedata

from anyascii import anyascii

from bridge.scp.charsets import Charset

#: DIN 5007-2 ("Variante 2", names): the umlaut as the vowel + e.
DIN_5007_2 = {"Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss",
              "ẞ": "SS"}  # fmt: skip
_SCRIPTS = ("LATIN ", "GREEK ", "CYRILLIC ")
_FORBIDDEN = frozenset("\\^=")


class Untransliterable(Exception):
    """A character may not or cannot be transliterated (no patient data kept)."""


def transliterate(text: str, charset: Charset) -> tuple[str, int]:
    """``text`` with every character ``charset`` cannot represent transliterated, and how
    many were. Raises :class:`Untransliterable`."""
    if all(charset.encodes(ch) for ch in text):
        return text, 0
    # Canonical composition first: "e" + combining acute is é, which may be representable.
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    replaced = 0
    for i, ch in enumerate(text):
        if charset.encodes(ch):
            out.append(ch)
            continue
        replacement = _replacement(ch, text, i)
        if not all(charset.encodes(c) for c in replacement):
            raise Untransliterable(f"position {i}: replacement not representable")
        out.append(replacement)
        replaced += 1
    return "".join(out), replaced


def _replacement(ch: str, text: str, i: int) -> str:
    # Compatibility forms first (full-width Ａ → A, ligature ﬁ → fi), then per character.
    parts = []
    for c in unicodedata.normalize("NFKC", ch):
        category = unicodedata.category(c)
        if category.startswith("L"):
            if not unicodedata.name(c, "").startswith(_SCRIPTS):
                raise Untransliterable(f"position {i}: script not transliterated")
            rep = DIN_5007_2.get(c) or anyascii(c)
            if not rep:
                raise Untransliterable(f"position {i}: letter without transliteration")
        elif category[0] in "MNP" or category == "Zs":
            rep = anyascii(c)  # combining marks vanish (as the accent of é → e)
        else:
            raise Untransliterable(f"position {i}: {category} character not transliterated")
        parts.append(rep)
    rep = "".join(parts)
    if any(c in _FORBIDDEN or c < " " or c == "\x7f" for c in rep):
        raise Untransliterable(f"position {i}: replacement holds a delimiter")
    if ch.isupper() and len(rep) > 1 and _upper_context(text, i):
        rep = rep.upper()
    return rep


def _upper_context(text: str, i: int) -> bool:
    """True when the letters around ``text[i]`` are upper case (MÜLLER → MUELLER but
    Über → Ueber); a letter alone counts as upper case, as DICOM names mostly are."""
    for j in (i + 1, i - 1):
        if 0 <= j < len(text) and text[j].isalpha():
            return text[j].isupper()
    return True
