"""Protocol codes as named values: HL7 acknowledgement and error codes, DICOM statuses,
worklist item states. Each table cites the clause of the standard it comes from."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class AckCode(StrEnum):
    """HL7 table 0008 acknowledgement codes (MSA-1)."""

    # Original mode (MSH-15 and MSH-16 empty): one application acknowledgement.
    AA = "AA"  # accepted
    AE = "AE"  # error: the sender must fix the content
    AR = "AR"  # reject: not this interface, or a transient failure worth a resend
    # Enhanced mode (MSH-15 or MSH-16 valued): accept acknowledgement.
    CA = "CA"  # commit accept: in safe storage, do not resend
    CE = "CE"  # commit error
    CR = "CR"  # commit reject

    @property
    def is_positive(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)


class AckCondition(StrEnum):
    """HL7 table 0155 (MSH-15/MSH-16): when an acknowledgement is wanted."""

    ALWAYS = "AL"
    NEVER = "NE"
    ERROR = "ER"  # only on error or reject
    SUCCESS = "SU"  # only on success


class Hl7Error(IntEnum):
    """HL7 table 0357 message error condition codes (ERR-3 in v2.5+, ERR-1 before)."""

    ACCEPTED = 0
    SEGMENT_SEQUENCE = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE = 102
    TABLE_VALUE_NOT_FOUND = 103
    VALUE_TOO_LONG = 104
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION = 203
    UNKNOWN_KEY = 204
    DUPLICATE_KEY = 205
    RECORD_LOCKED = 206
    INTERNAL_ERROR = 207

    @property
    def text(self) -> str:
        return _HL7_ERROR_TEXT[self]


_HL7_ERROR_TEXT: dict[Hl7Error, str] = {
    Hl7Error.ACCEPTED: "Message accepted",
    Hl7Error.SEGMENT_SEQUENCE: "Segment sequence error",
    Hl7Error.REQUIRED_FIELD_MISSING: "Required field missing",
    Hl7Error.DATA_TYPE: "Data type error",
    Hl7Error.TABLE_VALUE_NOT_FOUND: "Table value not found",
    Hl7Error.VALUE_TOO_LONG: "Value too long",
    Hl7Error.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    Hl7Error.UNSUPPORTED_EVENT: "Unsupported event code",
    Hl7Error.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    Hl7Error.UNSUPPORTED_VERSION: "Unsupported version id",
    Hl7Error.UNKNOWN_KEY: "Unknown key identifier",
    Hl7Error.DUPLICATE_KEY: "Duplicate key identifier",
    Hl7Error.RECORD_LOCKED: "Application record locked",
    Hl7Error.INTERNAL_ERROR: "Application internal error",
}


class SpsStatus(StrEnum):
    """Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms, plus the
    final states the bridge keeps (hidden from the default worklist) until purged."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    DISCONTINUED = "DISCONTINUED"


FINAL_SPS_STATUSES = frozenset({SpsStatus.COMPLETED, SpsStatus.CANCELED, SpsStatus.DISCONTINUED})


class CFindStatus(IntEnum):
    """C-FIND response statuses of the Basic Worklist Management service.

    PS3.4 Table K.4-1 (service statuses), PS3.7 Annex C (general DIMSE statuses).
    Codes C100–C1FF are the bridge's own "Unable to process" causes (PS3.4 K.4.1.1.4
    leaves C000–CFFF to the implementation); pynetdicom itself uses C001, C002 and
    C310–C312, which we avoid so a log line tells whose code it was.
    """

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # optional key(s) not supported for matching
    CANCEL = 0xFE00
    OUT_OF_RESOURCES = 0xA700
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # C-FIND on a Q/R FIND context (PS3.7 C.4.1)
    # Our "Unable to process" causes (C000–CFFF range of Table K.4-1):
    UNABLE_BAD_RANGE = 0xC101  # range matching value not of the form a-b / -b / a-
    UNABLE_STORE_DATA_CORRUPT = 0xC102  # a stored item could not be read or encoded
    UNABLE_CHARSET = 0xC103  # response cannot be encoded in the forced character set
    UNABLE_INTERNAL = 0xC1FF  # any other unexpected failure, logged with a traceback


class PpsStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14 enumerated values. An
    MPPS instance is created IN PROGRESS and changes once, to one of the two final
    states (PS3.4 F.1.5, Table F.1-4)."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @property
    def is_final(self) -> bool:
        return self is not PpsStatus.IN_PROGRESS


class NStatus(IntEnum):
    """N-CREATE / N-SET response statuses of the MPPS SCP.

    PS3.4 F.7.2.1.4 and F.7.2.2.4 define no statuses of their own: these are the general
    DIMSE-N statuses of PS3.7 Annex C (C.5.x) that PS3.7 10.1.5 (N-CREATE) and 10.1.3
    (N-SET) allow, with the Error Comment and Error ID of PS3.4 Table F.7.2-2.
    """

    SUCCESS = 0x0000
    INVALID_ATTRIBUTE_VALUE = 0x0106  # C.5.11; F.7.2.1.3: N-CREATE not IN PROGRESS
    PROCESSING_FAILURE = 0x0110  # C.5.21; F.7.2.2.3: N-SET after a final state
    DUPLICATE_SOP_INSTANCE = 0x0111  # C.5.8
    NO_SUCH_SOP_INSTANCE = 0x0112  # C.5.19
    INVALID_SOP_INSTANCE = 0x0117  # C.5.12: the UID breaks the construction rules
    MISSING_ATTRIBUTE = 0x0120  # C.5.13: a Type 1 attribute is absent
    MISSING_ATTRIBUTE_VALUE = 0x0121  # C.5.14: a Type 1 attribute is empty
    RESOURCE_LIMITATION = 0x0213  # C.5.22: the store is unreachable, try again


#: Error ID (0000,0903) and Error Comment (0000,0902) of an N-SET on a COMPLETED or
#: DISCONTINUED instance: PS3.4 F.7.2.2.3, Table F.7.2-2.
MPPS_FINAL_ERROR_ID = 0xA710
MPPS_FINAL_COMMENT = "Performed Procedure Step Object may no longer be updated"


# -- Specific Character Set (0008,0005) defined terms, PS3.3 C.12.1.1.2 ------------------
#: Single-byte character sets without code extensions (Table C.12-2), in the table's
#: order. ISO_IR 203 (Latin-9) is left out: pydicom 3.0 cannot decode it.
CHARSETS_SINGLE_BYTE = (
    "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127",
    "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 13", "ISO_IR 166",
)  # fmt: skip
#: Single-byte character sets with code extensions (Table C.12-3): value 1 or an extension.
CHARSETS_ISO2022_SINGLE_BYTE = (
    "ISO 2022 IR 6", "ISO 2022 IR 100", "ISO 2022 IR 101", "ISO 2022 IR 109",
    "ISO 2022 IR 110", "ISO 2022 IR 144", "ISO 2022 IR 127", "ISO 2022 IR 126",
    "ISO 2022 IR 138", "ISO 2022 IR 148", "ISO 2022 IR 13", "ISO 2022 IR 166",
)  # fmt: skip
#: Multi-byte character sets with code extensions (Table C.12-4): never value 1.
CHARSETS_ISO2022_MULTI_BYTE = ("ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149",
                               "ISO 2022 IR 58")  # fmt: skip
#: Multi-byte character sets without code extensions (Table C.12-5): the only value.
CHARSETS_STAND_ALONE = ("ISO_IR 192", "GB18030", "GBK")
#: The default repertoire (ISO-IR 6) named as one value: no (0008,0005) is sent for it.
CHARSET_DEFAULT = "ISO_IR 6"


def specific_character_set(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A (0008,0005) value (``\\``-separated or a list) as checked, normalised terms; ``()``
    is the default repertoire. Raises ValueError naming the rule that is broken.

    PS3.3 C.12.1.1.2: several values are the ISO 2022 code extension technique, value 1
    (empty = ISO 2022 IR 6) is a single-byte set, the others are extensions; the sets of
    Table C.12-5 allow no extensions. A lone multi-byte extension (``ISO 2022 IR 87``, as
    operators tend to write it) gets the empty value 1 that the standard's examples use."""
    terms = tuple(t.strip() for t in (value.split("\\") if isinstance(value, str) else value))
    if terms in ((), ("",), (CHARSET_DEFAULT,)):
        return ()
    if len(terms) == 1:
        term = terms[0]
        if term in CHARSETS_ISO2022_MULTI_BYTE:
            return ("", term)
        if term in (*CHARSETS_SINGLE_BYTE, *CHARSETS_STAND_ALONE, *CHARSETS_ISO2022_SINGLE_BYTE):
            return terms
        raise ValueError(f"{term!r} is not a Specific Character Set defined term")
    first, extensions = terms[0], terms[1:]
    if first not in ("", *CHARSETS_ISO2022_SINGLE_BYTE):
        raise ValueError(
            f"value 1 {first!r} of a multi-valued Specific Character Set must be empty or an "
            "ISO 2022 single-byte term (e.g. ISO 2022 IR 6)"
        )
    for term in extensions:
        if term not in (*CHARSETS_ISO2022_SINGLE_BYTE, *CHARSETS_ISO2022_MULTI_BYTE):
            raise ValueError(f"{term!r} is not an ISO 2022 code extension defined term")
    return terms
