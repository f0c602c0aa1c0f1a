"""The DICOM side: the SCP's Application Entity (``server``), its event handlers
(``handlers``), the identifier parsed into a query (``query``), PS3.4 matching
(``matching``, pure), encoded responses (``response``) with their character sets
(``charsets``: choice and ISO 2022 encoding; ``transliteration``), the MPPS SCP
(``mpps`` handlers, ``mpps_rules`` PS3.4 F.7 pure, ``mpps_store`` Redis) and pynetdicom's
internals behind a version guard (``pynetdicom_compat``).

Takes in: DICOM associations, C-FIND identifiers, MPPS N-CREATE/N-SET data sets. Hands
on: Pending/final responses built from the store; MPPS instances and, for each status
change, an internal message in the ingest line. May import: ``core``, ``store``,
``intake``; never ``worker`` (an effect on the worklist goes through ``intake``, in
ingest order).
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core", "store", "intake")
