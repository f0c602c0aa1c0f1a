"""C-FIND Pending responses sent with their command set encoded once per query.

Why: for every response pynetdicom builds a C-FIND-RSP command set as a pydicom Dataset
and encodes it twice (once to learn the group length): measured ~60 % of the ~0.5 ms
each match cost, so a query returning 167 items spent ~50 ms there. Within one query
every Pending response has the same command set — Command Field, Message ID Being
Responded To, Affected SOP Class UID, Status, Command Data Set Type — so this sends
the bytes pynetdicom produced for the first one with each later identifier, fragmented
into P-DATA exactly as ``DIMSEMessage.encode_msg`` does (command PDVs, then data set
PDVs, each within the peer's maximum PDU length). ``tests/test_find_sender.py``
compares the PDUs on the wire with pynetdicom's own.

Anything else — another message, a final or failure status, a bound EVT_DIMSE_SENT
handler of our own, pynetdicom's logger at DEBUG (its standard handler logs each
message) — goes through pynetdicom's ``send_msg`` unchanged. Installed per association
(:func:`install`, from EVT_CONN_OPEN), not on the library.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

_PENDING = (0xFF00, 0xFF01)
_PYNETDICOM_LOG = logging.getLogger("pynetdicom")


def install(assoc: Any) -> None:
    dimse = assoc.dimse
    pynetdicom_send = dimse.send_msg
    cached: dict[tuple[Any, ...], bytes] = {}

    def send_msg(primitive: Any, context_id: int) -> None:
        max_pdu = dimse.maximum_pdu_size
        if not _pending_find_response(primitive) or _observed(assoc) or 0 < max_pdu < 7:
            # (A peer maximum PDU of 1-6 bytes cannot carry a PDV: pynetdicom refuses it.)
            pynetdicom_send(primitive, context_id)
            return
        key = (
            context_id,
            primitive.MessageIDBeingRespondedTo,
            primitive.AffectedSOPClassUID,
            primitive.Status,
        )
        command = cached.get(key)
        if command is None:
            message = C_FIND_RSP()
            message.primitive_to_message(primitive)
            command = encode(message.command_set, True, True)
            cached.clear()  # one query at a time per association
            cached[key] = command
        for data, more, last in (
            (command, b"\x01", b"\x03"),
            (primitive.Identifier.getvalue(), b"\x00", b"\x02"),
        ):
            fragments = _fragments(data, max_pdu)
            for n, fragment in enumerate(fragments, start=1):
                pdata = P_DATA()
                flags = last if n == len(fragments) else more
                pdata.presentation_data_value_list.append((context_id, flags + fragment))
                dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg


def _pending_find_response(primitive: Any) -> bool:
    return (
        isinstance(primitive, C_FIND)
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status in _PENDING
        and primitive.Identifier is not None
        and bool(primitive.Identifier.getvalue())
    )


def _observed(assoc: Any) -> bool:
    """Someone wants to see each DIMSE message: let pynetdicom build them."""
    if _PYNETDICOM_LOG.isEnabledFor(logging.DEBUG):
        return True
    return any(
        h is not standard_dimse_sent_handler for h, _ in assoc.get_handlers(evt.EVT_DIMSE_SENT)
    )


def _fragments(data: bytes, max_pdu: int) -> list[bytes]:
    """As DIMSEMessage._generate_pdv_fragments: PDV values of at most max_pdu - 6 bytes
    (0 = no limit)."""
    if not max_pdu:
        return [data]
    size = max_pdu - 6
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
