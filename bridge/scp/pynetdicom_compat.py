"""Every use of pynetdicom's internals, in one place, behind a version guard.

Verified against pynetdicom **3.0.4** (:data:`VERIFIED_VERSIONS`). On any other version
(or with ``MWL_BRIDGE_STOCK_LIBRARIES=1``) :data:`FAST` is False, one WARNING is logged
at import (:mod:`bridge.core.library_guard`), and every function below takes pynetdicom's
stock public-API path: associations keep pynetdicom's socket settings and its own
``send_msg``, and the C-FIND handler does not wait on the send queue. Queries then cost
more (see ``bench/RESULTS.md``) but answer the same bytes (``tests/test_find_sender.py``
runs both paths).

What the fast path does, and the internals it touches:

* **Pending C-FIND responses with their command set encoded once per query**
  (:func:`install`; ``Association.dimse.send_msg``, ``dimse.dul.send_pdu``,
  ``dimse.maximum_pdu_size``, ``pynetdicom._handlers.standard_dimse_sent_handler``,
  ``dimse_messages.C_FIND_RSP``). For every response pynetdicom builds a C-FIND-RSP
  command set as a pydicom Dataset and encodes it twice (once to learn the group
  length): measured ~60 % of the ~0.5 ms each match cost, so a query returning 167 items
  spent ~50 ms there. Within one query every Pending response has the same command set
  — Command Field, Message ID Being Responded To, Affected SOP Class UID, Status, Command
  Data Set Type — so the bytes pynetdicom produced for the first one are sent with each
  later identifier, fragmented into P-DATA exactly as ``DIMSEMessage.encode_msg`` does
  (command PDVs, then data set PDVs, each within the peer's maximum PDU length). Anything
  else — another message, a final or failure status, a bound EVT_DIMSE_SENT handler of
  our own, pynetdicom's logger at DEBUG (its standard handler logs each message) — goes
  through pynetdicom's ``send_msg`` unchanged. Installed per association, not on the
  library.
* **TCP_NODELAY and an ACK after every read** (:func:`tune_association`;
  ``Association.dul.socket`` and its ``recv``): pynetdicom writes a C-FIND-RSP as two
  small PDUs, and DCMTK peers leave Nagle on and write a PDU in two pieces, so both
  sides otherwise wait ~40 ms for a delayed ACK on every association.
* **Waiting for the send queue to drain** (:func:`wait_for_send_queue`;
  ``Association.dul.to_provider_queue``) so a C-CANCEL-FIND-RQ is read in time.
* **Status fields pynetdicom's N-CREATE and N-SET responses cannot carry**
  (:func:`add_status_fields`, :func:`install_status_fields`; ``dimse.send_msg``,
  ``dimse_messages.N_CREATE_RSP``/``N_SET_RSP`` and their ``_set_command_group_length``,
  ``dimse.dul.send_pdu``): the MPPS SCP names the attributes of a refused request in
  Offending Element (0000,0901), and those of a 0120 in Attribute Identifier List
  (0000,1005, PS3.7 C.5.13), but pynetdicom builds those responses only with Error
  Comment and Error ID (and drops anything else a handler returns, with a WARNING). The
  response pynetdicom was about to send is built as it would build it, the fields are
  added to its command set, and it is encoded and sent as ``send_msg`` would. On the
  stock path they are not sent; the Error Comment still names the attributes.

:func:`hide_identifiers` sets pynetdicom's documented configuration flags
(``pynetdicom._config``) on both paths: PHI must never reach the logs.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import weakref
from typing import Any

from pynetdicom import _config, evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.dimse_messages import C_FIND_RSP, N_CREATE_RSP, N_SET_RSP
from pynetdicom.dimse_primitives import C_FIND, N_CREATE, N_SET
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from bridge.core.library_guard import fast_path_allowed

log = logging.getLogger(__name__)

VERIFIED_VERSIONS = ("3.0.4",)
#: Whether the fast paths below are used (decided once at import; tests flip it).
FAST = fast_path_allowed("pynetdicom", VERIFIED_VERSIONS)

_PENDING = (0xFF00, 0xFF01)
_PYNETDICOM_LOG = logging.getLogger("pynetdicom")



def hide_identifiers() -> None:
    """pynetdicom logs whole C-FIND identifiers (patient names, IDs) at INFO by default:
    switch that off (its documented configuration module, set on every path). Its
    logger's level is set with the others by :func:`bridge.core.logs.configure`."""
    for flag in ("LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS"):
        if hasattr(_config, flag):
            setattr(_config, flag, False)


def tune_association(assoc: Any) -> None:
    """EVT_CONN_OPEN: Nagle off, an ACK after every read, fast Pending responses.

    Best effort on the fast path (another build of the same version may lack an
    attribute); nothing at all on the stock path.
    """
    if not FAST:
        return
    try:
        assoc_socket = assoc.dul.socket
        sock = assoc_socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _ack_every_read(assoc_socket, sock)
        install(assoc)
        install_status_fields(assoc)
    except (AttributeError, OSError):  # pragma: no cover - an odd build of the version
        log.debug("scp.tuning_unavailable")


#: Linux only; elsewhere delayed ACKs stay as the kernel has them.
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _ack_every_read(assoc_socket: Any, sock: socket.socket) -> None:
    """ACK the peer's data as soon as it is read, not ~40 ms later.

    DCMTK (findscu, echoscu, wlmscu and the many modalities built on it) leaves
    Nagle's algorithm on and writes a PDU's header and body, or a C-FIND-RQ's command
    and identifier, in separate writes: the second write waits until we ACK the first.
    Once a connection has seen a request and a reply, Linux delays that ACK (delayed
    ACK, 40 ms minimum), so every association paid 40 ms or more of idle time
    (measured: C-ECHO 75 ms → 25 ms, query (a) at 100k items 163 ms → 118 ms). The
    kernel resets TCP_QUICKACK by itself, so it is set again after every read; setting
    it also sends an ACK that is pending. ``recv`` is pynetdicom's AssociationSocket
    method, wrapped on this association's socket only.
    """
    if _TCP_QUICKACK is None:
        return
    read = assoc_socket.recv

    def recv_and_ack(nr_bytes: int) -> bytearray:
        data = read(nr_bytes)
        # A closing socket may refuse the option; the read's result is what matters.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data

    assoc_socket.recv = recv_and_ack


def wait_for_send_queue(assoc: Any, limit_s: float = 30.0) -> None:
    """Let pynetdicom's DUL drain the responses already queued before yielding more.

    The DUL reactor always sends a queued PDU before it reads the socket, so if the
    handler queues matches faster than they go out, an incoming C-CANCEL-FIND-RQ is
    only read after every queued response was sent and ``is_cancelled`` never sees it
    in time. Waiting for an empty send queue gives the reactor a read turn between
    responses; it costs little, the reactor paces sending anyway. The queue is polled
    every 0.1 ms: at 0.5 ms the wait itself cost ~10 ms of a 167-match query. On the
    stock path this is a no-op (a cancel is then noticed later, never missed at the end).
    """
    if not FAST:
        return
    queue = getattr(getattr(assoc, "dul", None), "to_provider_queue", None)
    if queue is None:
        return
    deadline = time.monotonic() + limit_s
    while queue.qsize() > 0 and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0001)


def install(assoc: Any) -> None:
    """Send this association's Pending C-FIND responses with a cached command set."""
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


#: Per association: Message ID → the extra command fields of its response.
_STATUS_FIELDS: weakref.WeakKeyDictionary[Any, dict[int, dict[str, list[int]]]] = (
    weakref.WeakKeyDictionary()
)
#: The status fields :func:`add_status_fields` may add (AT, 1-n).
STATUS_FIELD_KEYWORDS = ("OffendingElement", "AttributeIdentifierList")


def add_status_fields(assoc: Any, message_id: int, fields: dict[str, list[int]]) -> bool:
    """Put ``fields`` (keyword → tags) into the command set of the N-CREATE-RSP or
    N-SET-RSP answering ``message_id`` on ``assoc``. False on the stock path (where they
    are not sent), or when the association was not tuned."""
    pending = _STATUS_FIELDS.get(assoc)
    if pending is None:
        return False
    unknown = set(fields) - set(STATUS_FIELD_KEYWORDS)
    assert not unknown, unknown
    pending[message_id] = {k: list(v) for k, v in fields.items() if v}
    return True


def install_status_fields(assoc: Any) -> None:
    """Send this association's N-CREATE/N-SET responses with the fields registered by
    :func:`add_status_fields` (see the module docstring)."""
    dimse = assoc.dimse
    pynetdicom_send = dimse.send_msg
    pending: dict[int, dict[str, list[int]]] = {}
    _STATUS_FIELDS[assoc] = pending

    def send_msg(primitive: Any, context_id: int) -> None:
        fields = None
        responding = getattr(primitive, "MessageIDBeingRespondedTo", None)
        if isinstance(primitive, N_CREATE | N_SET) and responding is not None:
            fields = pending.pop(responding, None)
        if not fields:
            pynetdicom_send(primitive, context_id)
            return
        message = N_CREATE_RSP() if isinstance(primitive, N_CREATE) else N_SET_RSP()
        message.primitive_to_message(primitive)
        for keyword, tags in fields.items():
            setattr(message.command_set, keyword, tags if len(tags) > 1 else tags[0])
        message._set_command_group_length()
        message.context_id = context_id
        evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})
        for pdata in message.encode_msg(context_id, dimse.maximum_pdu_size):
            dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg
