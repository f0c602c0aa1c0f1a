"""A worklist item → the C-FIND response Identifier (PS3.4 K.4.1.3.1, Table K.6-1).

* exactly the requested keys: matching and return keys, nothing unrequested;
* a requested key without a stored value is present and zero-length (Type 2);
* the Scheduled Procedure Step Sequence holds exactly one item;
* an empty SQ return key (zero-length or one empty item) is expanded to the item's
  supported attributes (:data:`bridge.matching.SEQUENCE_KEYS`);
* Specific Character Set (0008,0005) is present whenever a value is outside the
  default repertoire (Table K.6-1, Type 1C), and when the query asked for it; the set is
  the query's, the smallest standard one that represents the text, or the one forced for
  the calling AE (:class:`CharsetPolicy`, docs/conformance.md §8).

Every element is built with pydicom's RAISE validation and every text value is encoded
here (:mod:`bridge.scp.charsets`), so an item that pynetdicom could not encode (its
C312) is caught as :class:`ResponseError` before anything is sent, and a value is sent
exactly or, when a forced set cannot represent it, transliterated if the calling AE's
rule says so, else not at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom.dsutils import decode, encode

from bridge.core.codes import specific_character_set
from bridge.core.settings import QUERY, TRANSLITERATE, ScpSettings
from bridge.scp.charsets import ESC, Charset, Unrepresentable, automatic, charset_for
from bridge.scp.matching import SEQUENCE_KEYS, SPS_KEYWORD, KeySpec
from bridge.scp.query import RequestedKey, WorklistQuery
from bridge.scp.transliteration import Untransliterable, transliterate

#: VRs whose values may use the extended character set (PS3.5 6.1.2.3); all others
#: must be in the default repertoire.
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})


class ResponseError(Exception):
    """The item cannot be encoded as a valid response (bad stored value, or text the
    required character set cannot represent). Carries no patient data."""


class UnrepresentableText(ResponseError):
    """Text of the item cannot be represented in the response character set ``charset``
    (its (0008,0005) terms joined by ``\\``), even after transliteration if allowed."""

    def __init__(self, message: str, charset: str) -> None:
        super().__init__(message)
        self.charset = charset


@dataclass(frozen=True)
class CharsetPolicy:
    """How the responses to one calling AE are encoded: ``forced`` (0008,0005) terms
    (None = the query's character set or the automatic choice) and whether text a forced
    set cannot represent is transliterated (else the item is skipped)."""

    forced: tuple[str, ...] | None = None
    transliterate: bool = False

    @classmethod
    def for_calling_ae(cls, scp: ScpSettings, calling_ae: str) -> CharsetPolicy:
        """From ``scp.response_charset[_by_ae]`` and ``scp.unrepresentable_text[_by_ae]``
        (validated at start-up, so the terms are known to be valid)."""
        charset = scp.response_charset_by_ae.get(calling_ae, scp.response_charset)
        rule = scp.unrepresentable_text_by_ae.get(calling_ae, scp.unrepresentable_text)
        forced = None if charset == QUERY else specific_character_set(charset)
        return cls(forced, rule == TRANSLITERATE)


def choose_charset(texts: Iterable[str], query_charset: Sequence[str]) -> Charset:
    """The response character set under the ``query`` policy: the query's Specific
    Character Set when it represents every value (PS3.4 C.4.1.1.3.2 lets the SCP answer
    in another one, and a set the SCU named is the safest bet), else the smallest standard
    set that does (:func:`bridge.scp.charsets.automatic`)."""
    texts = list(texts)
    if query_charset:
        try:
            charset = charset_for(tuple(query_charset))
        except ValueError:
            charset = None  # an unknown or malformed query charset is not used
        if charset is not None and all(charset.encodes(ch) for t in texts for ch in t):
            return charset
    return automatic(texts)


@dataclass(frozen=True)
class Transliterated:
    """What transliteration changed in one response: attribute keywords (never values)
    and the number of characters replaced."""

    keywords: tuple[str, ...] = ()
    characters: int = 0


def _convert(vr: str, value: Any) -> Any:
    """A stored value (str / list[str]) as the Python value pydicom expects for ``vr``."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        vals = [_convert(vr, v) for v in value if isinstance(v, str) and v != ""]
        return vals or None
    if not isinstance(value, str):
        return str(value)
    if vr in _INT_VRS:
        return int(value)
    if vr in _FLOAT_VRS:
        return float(value)
    return value


def _element(tag: int, vr: str, value: Any) -> DataElement:
    # RAISE: a value pydicom would only warn about would make pynetdicom send C312, or
    # worse, reach the modality malformed.
    return DataElement(tag, vr, value, validation_mode=pydicom_config.RAISE)


def _expand(keyword: str, stored_item: Mapping[str, Any]) -> tuple[RequestedKey, ...]:
    """Attributes an empty SQ return key expands to: all Type 1/2 (1C/2C) keys of the
    item's table, plus Type 3 keys the stored item has."""
    table: dict[str, KeySpec] = SEQUENCE_KEYS.get(keyword, {})
    keys = []
    for spec in table.values():
        if spec.return_type.startswith(("1", "2")) or spec.keyword in stored_item:
            if keyword != SPS_KEYWORD and spec.keyword not in stored_item:
                continue  # code/reference items: only what the stored item carries
            keys.append(RequestedKey(spec.tag, spec.keyword, spec.vr, None))
    return tuple(keys)


#: Changes a text value before it is encoded (transliteration): (keyword, value) → value.
Transform = Callable[[str, str], str]


def _build(
    requested: Iterable[RequestedKey],
    attrs: Mapping[str, Any],
    text: list[str],
    transform: Transform | None = None,
) -> Dataset:
    ds = Dataset()
    for key in requested:
        stored = attrs.get(key.keyword)
        if key.vr == "SQ":
            entries = [e for e in stored if isinstance(e, dict)] if isinstance(stored, list) else []
            if key.keyword == SPS_KEYWORD:
                entries = entries[:1] or [{}]  # exactly one SPS item per response
            items = DicomSequence()
            for entry in entries:
                sub = key.items if key.items is not None else _expand(key.keyword, entry)
                items.append(_build(sub, entry, text, transform))
            ds.add(_element(key.tag, "SQ", items))
            continue
        vr = key.vr
        if " or " in vr:
            vr = vr.split(" or ")[0]
        value = _convert(vr, stored)
        if transform is not None and vr in TEXT_VRS and value is not None:
            value = (
                [transform(key.keyword, v) for v in value]
                if isinstance(value, list)
                else transform(key.keyword, value)
            )
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str):
                continue
            if not v.isascii():
                if vr not in TEXT_VRS:
                    raise ResponseError(f"{key.keyword}: non-ASCII text in VR {vr}")
                text.append(v)
            elif vr in TEXT_VRS and ("\\" in v or "~" in v or ESC in v):
                text.append(v)
        ds.add(_element(key.tag, vr, value))
    return ds


def build_response(
    attrs: Mapping[str, Any],
    query: WorklistQuery,
    policy: CharsetPolicy = CharsetPolicy(),
) -> Dataset:
    """The response Identifier for one matching item (``attrs`` = the item's DICOM
    content), its text already encoded. Raises :class:`ResponseError` when it cannot be
    encoded losslessly (transliteration aside, when the policy allows it)."""
    return _respond(attrs, query, policy)[0]


def _respond(
    attrs: Mapping[str, Any], query: WorklistQuery, policy: CharsetPolicy
) -> tuple[Dataset, Charset, Transliterated]:
    # Text values whose characters decide the character set: the non-ASCII ones, and
    # ASCII ones with characters some sets lack (\ and ~ in JIS X 0201) or ESC.
    texts: list[str] = []
    ds = _checked_build(query.requested, attrs, texts)
    changed = Transliterated()
    if policy.forced is None:
        charset = choose_charset(texts, query.charset)
    elif not query.charset_requested and all(t.isascii() for t in texts):
        # PS3.4 C.4.1.1.3.2: (0008,0005) only when an extended or replacement set may be
        # used; ASCII text in the default repertoire needs none.
        charset = Charset.of(())
    else:
        charset = Charset.of(policy.forced)
        if not _represents(charset, texts):
            if not policy.transliterate:
                raise UnrepresentableText(
                    f"item text not representable in {charset.label}", charset.label
                )
            ds, changed = _transliterated(query, attrs, charset)
    try:
        if not (charset.ascii_initial and all(t.isascii() and ESC not in t for t in texts)):
            _encode_text(ds, charset)  # else every text value is plain ASCII: as it is
    except Unrepresentable:
        # Every character was checked against the set, so only the automatic choice's
        # last resort gets here: a value not even UTF-8 may carry (ESC, a lone surrogate).
        raise UnrepresentableText(
            f"item text not representable in {charset.label}", charset.label
        ) from None
    terms = charset.terms
    if terms or query.charset_requested:
        # Requested in the query but the default repertoire: zero-length, as any other
        # requested key without a value.
        value: Any = list(terms) if len(terms) > 1 else (terms[0] if terms else None)
        ds.add(DataElement(0x00080005, "CS", value))
    return ds, charset, changed


def _checked_build(
    requested: Iterable[RequestedKey],
    attrs: Mapping[str, Any],
    text: list[str],
    transform: Transform | None = None,
) -> Dataset:
    try:
        return _build(requested, attrs, text, transform)
    except (ValueError, TypeError, OverflowError) as exc:
        # pydicom's messages quote the value: keep only the type in ours (no PHI).
        raise ResponseError(f"stored value invalid for its VR ({type(exc).__name__})") from None


def _represents(charset: Charset, texts: Iterable[str]) -> bool:
    return all(charset.encodes(ch) for text in texts for ch in set(text))


def _transliterated(
    query: WorklistQuery, attrs: Mapping[str, Any], charset: Charset
) -> tuple[Dataset, Transliterated]:
    """The response rebuilt with unrepresentable characters transliterated; the rebuilt
    values pass pydicom's validation again (a longer value may no longer fit its VR)."""
    keywords: list[str] = []
    count = 0

    def transform(keyword: str, value: str) -> str:
        nonlocal count
        try:
            new, replaced = transliterate(value, charset)
        except Untransliterable:
            raise UnrepresentableText(
                f"{keyword}: text not representable in {charset.label} and not transliterable",
                charset.label,
            ) from None
        if replaced:
            count += replaced
            if keyword not in keywords:
                keywords.append(keyword)
        return new

    try:
        ds = _build(query.requested, attrs, [], transform)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UnrepresentableText(
            f"transliterated value invalid for its VR ({type(exc).__name__})", charset.label
        ) from None
    return ds, Transliterated(tuple(keywords), count)


def _encode_text(ds: Dataset, charset: Charset) -> None:
    """Replace each text value by its bytes in ``charset`` (PS3.5 6.1.2.5.3, see
    :mod:`bridge.scp.charsets`). pydicom writes a bytes value as it is (padded to even
    length); a RawDataElement it would decode and encode again with its own encoder."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _encode_text(item, charset)
            continue
        if elem.VR not in TEXT_VRS or elem.is_empty:
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        texts = [str(v) for v in values]
        if charset.ascii_initial and all(t.isascii() and ESC not in t for t in texts):
            continue  # pydicom writes ASCII as ASCII in such sets
        data = b"\\".join(charset.encode(t, pn=elem.VR == "PN") for t in texts)
        # Validated as text when built; the bytes are final.
        ds[elem.tag] = DataElement(elem.tag, elem.VR, data, validation_mode=pydicom_config.IGNORE)


def keyword_vr(keyword: str) -> str:
    """Dictionary VR of a keyword (for callers building requested keys by name)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return str(dictionary_VR(tag))


class ResponseCache:
    """Encoded responses, keyed by the item's stored bytes and everything that shapes the
    response (requested keys, charset policy, query charset, VR encoding): the character
    set is chosen from these alone. Modalities repeat the same query every few minutes,
    and pydicom building + encoding costs far more than the rest of a response; a changed
    item has other bytes, so it can never hit a stale entry. Bounded LRU, thread-safe
    (one per SCP)."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._max = max_entries
        self._data: OrderedDict[Hashable, EncodedResponse] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> EncodedResponse | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: EncodedResponse) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)


@dataclass(frozen=True)
class EncodedResponse:
    """One item's response Identifier as bytes, the character set it is in (its
    (0008,0005) label, for logs and metrics) and what transliteration changed."""

    data: bytes
    charset: str
    transliterated: Transliterated = Transliterated()


def encoded_response(
    raw: bytes,
    attrs: Mapping[str, Any],
    query: WorklistQuery,
    policy: CharsetPolicy,
    implicit_vr: bool,
    cache: ResponseCache | None = None,
) -> tuple[Dataset, EncodedResponse]:
    """The response Identifier for one item, encoded once and checked: the returned
    Dataset holds raw (already encoded) elements, which pynetdicom writes as they are,
    so its own encoding step (and its C312) cannot fail. Raises :class:`ResponseError`."""
    key = (raw, query.requested, policy, query.charset, query.charset_requested, implicit_vr)
    response = cache.get(key) if cache is not None else None
    if response is None:
        ds, charset, changed = _respond(attrs, query, policy)
        encoded = encode(ds, implicit_vr, True)
        if not encoded:
            raise ResponseError("response could not be encoded")
        response = EncodedResponse(encoded, charset.label, changed)
        if cache is not None:
            cache.put(key, response)
    return decode(BytesIO(response.data), implicit_vr, True), response
