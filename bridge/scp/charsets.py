"""Character sets of C-FIND responses: which Specific Character Set (0008,0005) a response
is sent in, and the bytes of each text value in it.

* :func:`automatic` picks the smallest standard set that represents every text value of
  a response: the default repertoire (no (0008,0005)), ISO_IR 100, the other single-byte
  sets of PS3.3 Table C.12-2 (:data:`SINGLE_BYTE_ORDER`), ISO 2022 code extensions for
  Japanese, Korean or Chinese text (PS3.3 C.12.1.1.2, :data:`CJK_FAMILIES`), ISO_IR 192
  last.
* :class:`Charset` encodes a value by the ISO 2022 rules of PS3.5 6.1.2.5: a code
  element is designated by its escape sequence when first needed, and the designations of
  value 1 are active again before every ``^`` and ``=`` of a PN, before every control
  character, at the end of the value (PS3.5 6.1.2.5.3); multiple values are encoded one
  by one, so that also holds before each ``\\``. pydicom 3.0 gets this wrong for Korean
  and Chinese (no re-designation after a control character; no escape sequence at all
  for ISO 2022 IR 58), so the bridge encodes text itself and pydicom only writes bytes.
  Every character's bytes are decoded back with the same codec before they are used: a
  value is sent exactly or not at all.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bridge.core.codes import CHARSETS_STAND_ALONE, specific_character_set

ESC = "\x1b"
#: PN delimiters of component groups and components (PS3.5 6.2, PS3.5 6.1.2.5.3).
PN_DELIMITERS = frozenset("^=")
UTF8 = "ISO_IR 192"


class Unrepresentable(Exception):
    """A character cannot be represented in the character set (no patient data: only
    the position is kept)."""

    def __init__(self, position: int) -> None:
        super().__init__(f"character at position {position} not representable")
        self.position = position


@dataclass(frozen=True)
class CodeElement:
    """A graphic character set as ISO 2022 designates it (PS3.3 Tables C.12-3, C.12-4):
    into G0 (7-bit bytes) or G1 (bytes with the high bit set) by ``escape``."""

    name: str
    g: int
    escape: bytes
    encode: Callable[[str], bytes | None]


def _checked(codec: str, ch: str, data: bytes) -> bytes | None:
    """``data`` if it decodes back to exactly ``ch``: a codec that maps two characters to
    one code (e.g. compatibility forms) must not change a name."""
    try:
        return data if data.decode(codec) == ch else None
    except UnicodeDecodeError:
        return None


def _ascii(ch: str) -> bytes | None:
    return ch.encode("ascii") if ch < "\x80" and ch != ESC else None


def _romaji(ch: str) -> bytes | None:
    # JIS X 0201 Roman (ISO-IR 14) has the yen sign and overline where ASCII has \ and ~.
    return None if ch in "\\~" else _ascii(ch)


def _high_half(codec: str) -> Callable[[str], bytes | None]:
    """A 96-character set in G1 (ISO 8859 upper half, PS3.3 Table C.12-3)."""

    @functools.lru_cache(maxsize=4096)
    def encode(ch: str) -> bytes | None:
        try:
            data = ch.encode(codec)
        except UnicodeEncodeError:
            return None
        return _checked(codec, ch, data) if len(data) == 1 and data[0] >= 0xA0 else None

    return encode


@functools.lru_cache(maxsize=4096)
def _katakana(ch: str) -> bytes | None:
    """JIS X 0201 half-width katakana (ISO-IR 13) in G1: one byte A1–DF."""
    try:
        data = ch.encode("shift_jis")
    except UnicodeEncodeError:
        return None
    return _checked("shift_jis", ch, data) if len(data) == 1 and 0xA1 <= data[0] <= 0xDF else None


def _designated_g0(codec: str, escape: bytes) -> Callable[[str], bytes | None]:
    """A 94²-character set in G0 (JIS X 0208, JIS X 0212): Python's ISO-2022-JP codecs
    give ``escape`` + two 7-bit bytes + ESC ( B for one character."""

    @functools.lru_cache(maxsize=8192)
    def encode(ch: str) -> bytes | None:
        try:
            data = ch.encode(codec)
        except UnicodeEncodeError:
            return None
        if not (data.startswith(escape) and data.endswith(b"\x1b(B")):
            return None  # e.g. the yen sign comes as JIS X 0201 Roman, not this set
        inner = data[len(escape) : -3]
        return inner if len(inner) == 2 and _checked(codec, ch, data) else None

    return encode


def _designated_g1(codec: str) -> Callable[[str], bytes | None]:
    """A 94²-character set in G1 (KS X 1001, GB 2312): the EUC form, two bytes A1–FE.
    Longer EUC-KR sequences (Python's KS X 1001 make-up of other Hangul) are refused:
    they are not ISO-IR 149."""

    @functools.lru_cache(maxsize=8192)
    def encode(ch: str) -> bytes | None:
        try:
            data = ch.encode(codec)
        except UnicodeEncodeError:
            return None
        if len(data) != 2 or min(data) < 0xA1:
            return None
        return _checked(codec, ch, data)

    return encode


IR6 = CodeElement("ISO-IR 6", 0, b"\x1b(B", _ascii)
IR14 = CodeElement("ISO-IR 14", 0, b"\x1b(J", _romaji)
IR13 = CodeElement("ISO-IR 13", 1, b"\x1b)I", _katakana)
IR87 = CodeElement("ISO-IR 87", 0, b"\x1b$B", _designated_g0("iso2022_jp", b"\x1b$B"))
IR159 = CodeElement("ISO-IR 159", 0, b"\x1b$(D", _designated_g0("iso2022_jp_2", b"\x1b$(D"))
IR149 = CodeElement("ISO-IR 149", 1, b"\x1b$)C", _designated_g1("euc_kr"))
IR58 = CodeElement("ISO-IR 58", 1, b"\x1b$)A", _designated_g1("gb2312"))
#: ISO 8859 parts in G1 (PS3.3 Table C.12-3: ESC 02/13 F).
_UPPER_HALVES = {
    "100": ("latin_1", b"\x1b-A"),
    "101": ("iso8859_2", b"\x1b-B"),
    "109": ("iso8859_3", b"\x1b-C"),
    "110": ("iso8859_4", b"\x1b-D"),
    "144": ("iso8859_5", b"\x1b-L"),
    "127": ("iso8859_6", b"\x1b-G"),
    "126": ("iso8859_7", b"\x1b-F"),
    "138": ("iso8859_8", b"\x1b-H"),
    "148": ("iso8859_9", b"\x1b-M"),
    "166": ("tis_620", b"\x1b-T"),
}
_G1_SETS = {
    number: CodeElement(f"ISO-IR {number}", 1, escape, _high_half(codec))
    for number, (codec, escape) in _UPPER_HALVES.items()
}


def _elements(term: str) -> tuple[CodeElement | None, CodeElement | None]:
    """(G0, G1) that a defined term designates (PS3.3 Tables C.12-2 to C.12-4)."""
    if term in ("", "ISO 2022 IR 6"):
        return IR6, None
    number = term.rsplit(" ", 1)[-1]
    if number == "13":
        return IR14, IR13
    if number in _G1_SETS:
        return IR6, _G1_SETS[number]
    return {"87": (IR87, None), "159": (IR159, None), "149": (None, IR149), "58": (None, IR58)}[
        number
    ]


class Charset:
    """A response character set: its (0008,0005) terms (``()`` = default repertoire, no
    (0008,0005)) and the encoder of its values. Get one with :meth:`of` (cached)."""

    def __init__(self, terms: tuple[str, ...]) -> None:
        self.terms = terms
        self.label = "\\".join(terms) if terms else "ISO_IR 6"
        #: Stand-alone sets (PS3.3 Table C.12-5) are a plain codec for the whole value.
        self.codec: str | None = None
        first = terms[0] if terms else ""
        if first in CHARSETS_STAND_ALONE:
            self.codec = {"ISO_IR 192": "utf-8", "GB18030": "gb18030", "GBK": "gbk"}[first]
        self.g0, self.g1 = _elements(first) if self.codec is None else (None, None)
        # Code extensions only when (0008,0005) uses ISO 2022 (several values, or an
        # "ISO 2022 IR" term): a single ISO_IR term is one fixed G0/G1 pair. Value 1's own
        # sets come first, so text after a switch designates them again.
        extensions: list[CodeElement] = []
        for term in terms if first.startswith("ISO 2022") or len(terms) > 1 else ():
            for element in _elements(term):
                if element is not None and element not in extensions:
                    extensions.append(element)
        self.extensions = tuple(extensions)
        # A single ISO 8859 term (no code extensions) is its Python codec byte for byte:
        # encode whole values at C speed, refusing the C1 controls the codec lets through.
        self.iso8859: str | None = None
        if len(terms) == 1 and not extensions and self.g1 in _G1_SETS.values():
            self.iso8859 = _UPPER_HALVES[first.rsplit(" ", 1)[-1]][0]
        # ASCII is the same bytes in every set whose G0 starts as ISO-IR 6 (and in UTF-8,
        # GB18030, GBK): such values need no work.
        self.ascii_initial = self.g0 is IR6 or self.codec is not None

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(terms: tuple[str, ...]) -> Charset:
        """The character set of normalised terms (see :func:`charset_for`)."""
        return Charset(terms)

    def __repr__(self) -> str:
        return f"Charset({self.label!r})"

    def encodes(self, ch: str) -> bool:
        """True when ``ch`` is representable (through any code element of the set)."""
        if self.codec is not None:
            return ch != ESC and _codec_encodes(self.codec, ch)
        return any(e is not None and e.encode(ch) is not None for e in self._all())

    def _all(self) -> Iterable[CodeElement | None]:
        yield self.g0
        yield self.g1
        yield from self.extensions

    def encode(self, text: str, pn: bool = False) -> bytes:
        """One value's bytes (PS3.5 6.1.2.5.3). Raises :class:`Unrepresentable`."""
        if self.ascii_initial and text.isascii() and ESC not in text:
            return text.encode("ascii")  # G0 stays ISO-IR 6: nothing to designate
        if self.codec is not None:
            return self._encode_codec(text)
        if self.iso8859 is not None:
            try:
                data = text.encode(self.iso8859)
            except UnicodeEncodeError as exc:
                raise Unrepresentable(exc.start) from None
            if ESC not in text and not any(0x80 <= b < 0xA0 for b in data):
                return data
        out = bytearray()
        g0, g1 = self.g0, self.g1
        for i, ch in enumerate(text):
            if ch < " " or (pn and ch in PN_DELIMITERS):
                if ch == ESC:
                    raise Unrepresentable(i)
                out += self._restore(g0, g1)
                g0, g1 = self.g0, self.g1
                out += ch.encode("ascii")
                continue
            data = None
            for current in (g0, g1):
                if current is not None and (data := current.encode(ch)) is not None:
                    break
            else:
                for element in self.extensions:
                    if (data := element.encode(ch)) is not None:
                        out += element.escape
                        if element.g == 0:
                            g0 = element
                        else:
                            g1 = element
                        break
            if data is None:
                raise Unrepresentable(i)
            out += data
        out += self._restore(g0, g1)
        return bytes(out)

    def _restore(self, g0: CodeElement | None, g1: CodeElement | None) -> bytes:
        """Escape sequences that make value 1's sets active again. A G1 that value 1 left
        empty is not re-designated: the decoder resets it at the delimiter and the next
        part designates again (PS3.5 Annex I, Korean example)."""
        out = b""
        if g0 is not self.g0 and self.g0 is not None:
            out += self.g0.escape
        if g1 is not self.g1 and self.g1 is not None:
            out += self.g1.escape
        return out

    def _encode_codec(self, text: str) -> bytes:
        assert self.codec is not None
        for i, ch in enumerate(text):
            if ch == ESC or not _codec_encodes(self.codec, ch):
                raise Unrepresentable(i)
        return text.encode(self.codec)


@functools.lru_cache(maxsize=8192)
def _codec_encodes(codec: str, ch: str) -> bool:
    try:
        data = ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return _checked(codec, ch, data) is not None


def charset_for(value: str | tuple[str, ...]) -> Charset:
    """The :class:`Charset` of a (0008,0005) value or setting (ValueError if invalid)."""
    return Charset.of(specific_character_set(value))


#: Single-byte sets (PS3.3 Table C.12-2), tried in this order. Only Latin sets overlap:
#: Latin-1, then Latin-2 (Central Europe), Latin-5 (Turkish: ISO_IR 109 holds Turkish
#: too, but Latin-5 is what Turkish systems use), Latin-4 (Baltic), Latin-3 (Maltese,
#: Esperanto); the Cyrillic, Greek, Arabic, Hebrew and Thai sets share no letters. ISO_IR
#: 13 is left to the Japanese code extensions (its G0 has no backslash and no tilde).
SINGLE_BYTE_ORDER = (
    "ISO_IR 100", "ISO_IR 101", "ISO_IR 148", "ISO_IR 110", "ISO_IR 109",
    "ISO_IR 144", "ISO_IR 126", "ISO_IR 127", "ISO_IR 138", "ISO_IR 166",
)  # fmt: skip
#: ISO 2022 code extensions tried for East Asian text, each family with value 1 empty
#: (ISO 2022 IR 6) as in the standard's examples (PS3.5 Annexes H, I, K), and only the
#: extensions the text needs: Japanese (JIS X 0208, half-width katakana), Korean,
#: Chinese, then Japanese with JIS X 0212 (rarely supported, so after the others).
CJK_FAMILIES = (
    ("ISO 2022 IR 87", "ISO 2022 IR 13"),
    ("ISO 2022 IR 149",),
    ("ISO 2022 IR 58",),
    ("ISO 2022 IR 87", "ISO 2022 IR 13", "ISO 2022 IR 159"),
)


def _east_asian(ch: str) -> bool:
    # Wide, fullwidth and halfwidth characters (Unicode UAX #11): Han, kana, Hangul and
    # their forms. Greek or Cyrillic alone must not end up in a Japanese set.
    return unicodedata.east_asian_width(ch) in ("W", "F", "H")


def automatic(texts: Iterable[str]) -> Charset:
    """The smallest standard character set that represents every character of ``texts``
    (PS3.3 C.12.1.1.2; the order is documented in docs/conformance.md §8)."""
    # ASCII is in every candidate (value 1 is ISO-IR 6 or an ISO 8859 part): only the
    # other characters (and ESC, which no set may carry) decide.
    chars = {ch for text in texts for ch in text if ch >= "\x80" or ch == ESC}
    if not chars:
        return Charset.of(())
    for term in SINGLE_BYTE_ORDER:
        charset = Charset.of((term,))
        if all(charset.encodes(ch) for ch in chars):
            return charset
    if any(_east_asian(ch) for ch in chars):
        for family in CJK_FAMILIES:
            needed: set[str] = set()
            for ch in chars:
                term = next((t for t in family if _term_encodes(t, ch)), None)
                if term is None:
                    break
                needed.add(term)
            else:
                return Charset.of(("", *(t for t in family if t in needed)))
    return Charset.of((UTF8,))


def _term_encodes(term: str, ch: str) -> bool:
    return any(e is not None and e.encode(ch) is not None for e in _elements(term))
