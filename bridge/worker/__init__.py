"""rq workers: the job entry point (``jobs``), the worker process (``rq_worker``), parse
in parallel and apply in ACK order (``sequencer`` = ``claim`` + ``apply`` +
``recovery``, ``background``, ``lua/``), the order lifecycle (``lifecycle``), the
integrator's mapping files (``mapping/``) and rq's internals behind a version guard
(``rq_compat``).

Takes in: message ids from the ingest line. Hands on: worklist items in the store, dead
letters through ``intake``. May import: ``core``, ``hl7``, ``store``, ``intake``; never
``mllp`` or ``scp``.
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core", "hl7", "store", "intake")
