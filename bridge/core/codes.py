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
