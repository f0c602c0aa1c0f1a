"""Running and operating the bridge: the CLI (``cli``), the role verbs (``roles``, the
delivery of procedure status to the RIS among them), the
``run`` supervisor, role runtime (heartbeat, metrics HTTP with the Redis collector,
health check), and the admin commands (worklist, dead letters, status, find, mapping;
``worklist import`` of DICOM worklist files: ``worklist_files`` reads, ``worklist_import``
writes).

Takes in: the command line and settings. Hands on: processes, exit codes, tables. May
import: every stage (it is the top layer); nothing imports ``ops``.
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = (
    "core", "hl7", "store", "intake", "mllp", "outbound", "worker", "scp",
)  # fmt: skip
