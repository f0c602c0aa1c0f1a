"""HL7 v2 text: the MSH pre-read from raw bytes (``msh``), character sets
(``charsets``), escapes, the hl7apy parse into a :class:`~bridge.hl7.message.Message`
with field access by HL7 path (``parse``, ``message``), ACK building (``ack``), and
hl7apy's internals behind a version guard (``hl7apy_compat``).

Takes in: bytes as received over MLLP. Hands on: decoded MSH fields, parsed messages,
ACK bytes. May import: ``core``.
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core",)
