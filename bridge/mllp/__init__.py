"""The HL7 front door: MLLP framing (sans-IO ``framing``), the header gate (``gate``), the
asyncio listener (``listener``, the only asyncio code) and an MLLP client (``client``,
for ``mwl-bridge send``).

Takes in: TCP bytes. Hands on: durably stored messages (through ``intake``) and ACKs.
May import: ``core``, ``hl7``, ``store``, ``intake``; never ``worker`` or ``scp``.
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core", "hl7", "store", "intake")
