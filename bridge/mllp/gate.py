"""The header gate: may this message enter the bridge at all? (pure, no I/O)

HL7 v2 (chapter 2, processing rules) has the receiver check MSH-9 (type and trigger),
MSH-11 (processing id) and MSH-12 (version) before anything else, and reject what the
interface does not take. The listener applies this gate to every frame;
``mwl-bridge deadletter replay`` applies the same gate before re-queueing a message, so
a replay can never admit what the front door refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.codes import Hl7Error
from bridge.core.settings import MllpSettings
from bridge.hl7.charsets import DecodeError
from bridge.hl7.escapes import first_bad_escape
from bridge.hl7.msh import Msh


@dataclass(frozen=True)
class Refusal:
    """Why a header is not admitted."""

    error: Hl7Error
    reason: str  # names fields and header values, never patient data
    location: str  # HL7 field to blame
    label: str  # metrics.FRAMES_REJECTED reason label
    #: True: "not this interface" (AR/CR); False: a content error the sender fixes (AE/CE).
    reject: bool = True


def check_header(h: Msh, m: MllpSettings) -> Refusal | None:
    """The first reason ``h`` is not admitted under ``m``, or None."""
    if h.message_type not in m.accepted_message_types:
        types = {t.split("^", 1)[0] for t in m.accepted_message_types}
        known_type = h.type_code in types
        error = Hl7Error.UNSUPPORTED_EVENT if known_type else Hl7Error.UNSUPPORTED_MESSAGE_TYPE
        return Refusal(
            error, f"message type {h.message_type or '(empty)'} not accepted", "MSH-9", "type"
        )
    if h.processing_id not in m.accepted_processing_ids:
        return Refusal(
            Hl7Error.UNSUPPORTED_PROCESSING_ID,
            f"processing id {h.processing_id or '(empty)'} not accepted",
            "MSH-11",
            "processing_id",
        )
    if h.version not in m.accepted_versions:
        return Refusal(
            Hl7Error.UNSUPPORTED_VERSION,
            f"version {h.version_raw or '(empty)'} not accepted",
            "MSH-12",
            "version",
        )
    if not h.control_id.strip():
        return Refusal(
            Hl7Error.REQUIRED_FIELD_MISSING,
            "MSH-10 (message control id) is empty",
            "MSH-10",
            "bad_msh",
            reject=False,
        )
    return None


def check_decodable(content: bytes, h: Msh, m: MllpSettings) -> Refusal | None:
    """The whole message must decode with the charset decision the listener records
    (MSH-18/MSH-20, else the sender's or the default charset), escape sequences
    included, and every ``\\X..\\`` escape must decode too: whatever is ACKed AA, the
    worker can read (HL7 102 otherwise, never a later dead letter)."""
    try:
        text = h.decision.decode(content, h.escape_char)
    except DecodeError as exc:
        reason = exc.reason
    else:
        decode = h.decision.decode_fragment
        reason = first_bad_escape(text, h.field_sep, h.encoding_chars, decode)
        if not reason:
            return None
    return Refusal(
        Hl7Error.DATA_TYPE,
        f"{reason} (character set {h.decision.label})",
        "",
        "charset",
        reject=False,
    )
