"""A worklist item → the C-FIND response Identifier (PS3.4 K.4.1.3.1, Table K.6-1).

* exactly the requested keys: matching and return keys, nothing unrequested;
* a requested key without a stored value is present and zero-length (Type 2);
* the Scheduled Procedure Step Sequence holds exactly one item;
* an empty SQ return key (zero-length or one empty item) is expanded to the item's
  supported attributes (:data:`bridge.matching.SEQUENCE_KEYS`);
* Specific Character Set (0008,0005) is present whenever a value is outside the
  default repertoire (Table K.6-1, Type 1C), and when the query asked for it.

Every element is built with pydicom's RAISE validation and the text is checked against
the chosen character set, so an item that pynetdicom could not encode (its C312) is
caught here as :class:`ResponseError`, before anything is sent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from io import BytesIO
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom.dsutils import decode, encode

from bridge.scp.matching import SEQUENCE_KEYS, SPS_KEYWORD, KeySpec
from bridge.scp.query import RequestedKey, WorklistQuery

#: VRs whose values may use the extended character set (PS3.5 6.1.2.3); all others
#: must be in the default repertoire.
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
UTF8 = "ISO_IR 192"
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})


class ResponseError(Exception):
    """The item cannot be encoded as a valid response (bad stored value, or text the
    required character set cannot represent). Carries no patient data."""


def _codecs(terms: Sequence[str]) -> list[str] | None:
    """Python codecs for DICOM defined terms; None if a term is unknown."""
    out: list[str] = []
    for i, term in enumerate(terms):
        term = term.strip()
        if not term or term == "ISO_IR 6":
            out.append("ascii")
            continue
        codec = python_encoding.get(term)
        if codec is None:
            return None
        if i == 0 and term.startswith("ISO 2022") and term != "ISO 2022 IR 6":
            out.append("ascii")  # ISO 2022 G0 is the default repertoire
        out.append(codec)
    return out or ["ascii"]


def can_encode(texts: Iterable[str], terms: Sequence[str]) -> bool:
    """True when every character of ``texts`` is representable in the charset ``terms``
    (single term: strictly; ISO 2022 code extensions: each character in one of them)."""
    codecs = _codecs(terms)
    if codecs is None:
        return False
    text = "".join(texts)
    if len(codecs) == 1:
        try:
            text.encode(codecs[0])
        except UnicodeEncodeError:
            return False
        return True
    return all(any(_encodes(ch, c) for c in codecs) for ch in set(text))


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def choose_charset(
    non_ascii: Sequence[str], policy: str, query_charset: Sequence[str]
) -> tuple[str, ...] | None:
    """The response's Specific Character Set terms, or None if none is needed.

    ``policy`` ``query``: the query's charset if it can encode the text, else ISO_IR 192.
    Any other value forces that charset (lossless or :class:`ResponseError`)."""
    if policy == "query":
        if not non_ascii:
            return None
        if query_charset and can_encode(non_ascii, query_charset):
            return tuple(query_charset)
        return (UTF8,)
    forced = tuple(t.strip() for t in policy.split("\\"))
    if non_ascii and not can_encode(non_ascii, forced):
        raise ResponseError(f"item text cannot be encoded losslessly in {policy}")
    return forced if non_ascii else None


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


def _build(requested: Iterable[RequestedKey], attrs: Mapping[str, Any], text: list[str]) -> Dataset:
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
                items.append(_build(sub, entry, text))
            ds.add(_element(key.tag, "SQ", items))
            continue
        vr = key.vr
        if " or " in vr:
            vr = vr.split(" or ")[0]
        value = _convert(vr, stored)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and not v.isascii():
                if vr not in TEXT_VRS:
                    raise ResponseError(f"{key.keyword}: non-ASCII text in VR {vr}")
                text.append(v)
        ds.add(_element(key.tag, vr, value))
    return ds


def build_response(
    attrs: Mapping[str, Any], query: WorklistQuery, charset_policy: str = "query"
) -> Dataset:
    """The response Identifier for one matching item (``attrs`` = the item's DICOM
    content). Raises :class:`ResponseError` when it cannot be encoded losslessly."""
    non_ascii: list[str] = []
    try:
        ds = _build(query.requested, attrs, non_ascii)
    except (ValueError, TypeError, OverflowError) as exc:
        # pydicom's messages quote the value: keep only the type in ours (no PHI).
        raise ResponseError(f"stored value invalid for its VR ({type(exc).__name__})") from None
    terms = choose_charset(non_ascii, charset_policy, query.charset)
    if terms is None and query.charset_requested:
        terms = (
            query.charset
            if charset_policy == "query"
            else tuple(t.strip() for t in charset_policy.split("\\"))
        )
    if terms is not None:
        value: Any = list(terms) if len(terms) > 1 else (terms[0] if terms else None)
        ds.add(DataElement(0x00080005, "CS", value))
    return ds


def keyword_vr(keyword: str) -> str:
    """Dictionary VR of a keyword (for callers building requested keys by name)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return str(dictionary_VR(tag))


class ResponseCache:
    """Encoded response Identifiers, keyed by the item's stored bytes and everything
    that shapes the response (requested keys, charset policy, query charset, VR
    encoding). Modalities repeat the same query every few minutes, and pydicom building
    + encoding costs far more than the rest of a response; a changed item has other
    bytes, so it can never hit a stale entry. Bounded LRU, thread-safe (one per SCP)."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._max = max_entries
        self._data: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)


def encoded_response(
    raw: bytes,
    attrs: Mapping[str, Any],
    query: WorklistQuery,
    charset_policy: str,
    implicit_vr: bool,
    cache: ResponseCache | None = None,
) -> Dataset:
    """The response Identifier for one item, encoded once and checked: the returned
    Dataset holds raw (already encoded) elements, which pynetdicom writes as they are,
    so its own encoding step (and its C312) cannot fail. Raises :class:`ResponseError`."""
    key = (raw, query.requested, charset_policy, query.charset, query.charset_requested)
    key += (implicit_vr,)
    data = cache.get(key) if cache is not None else None
    if data is None:
        ds = build_response(attrs, query, charset_policy)
        encoded = encode(ds, implicit_vr, True)
        if not encoded:
            raise ResponseError("response could not be encoded")
        data = encoded
        if cache is not None:
            cache.put(key, data)
    return decode(BytesIO(data), implicit_vr, True)
