"""The durable write before every positive ACK (``submit``: raw bytes, metadata, ingest
order, dedupe key and rq job in one transaction), dead letters (``deadletter``) and the
outbound record layout with its delivery job named by string (``outbound``).

Takes in: a message whose MSH was read. Hands on: a message id in the ingest line and
an rq job that names the worker's entry point *by string* (no import of ``worker``).
A stage that needs another's effect (a dead letter from the worker, a status message
from the SCP) goes through here. May import: ``core``, ``hl7``, ``store``.
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core", "hl7", "store")
