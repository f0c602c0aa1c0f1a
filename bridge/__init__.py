"""mwl-bridge: HL7 v2 orders over MLLP to a DICOM Modality Worklist SCP.

Data flows one way, and the sub-packages show it::

    mllp/    MLLP bytes → frames → gate → ACK (the only asyncio code)
    intake/  the durable Redis write before the ACK, dead letters
    worker/  rq workers: parse (hl7/), map (worker/mapping/), lifecycle, apply in ACK order
    store/   Redis keys, the worklist item, the indexed store, Redis clients
    scp/     the DICOM Modality Worklist SCP: query, matching, responses
    hl7/     HL7 v2 text: MSH pre-read, charsets, escapes, parse, ACKs
    core/    settings, logs, metrics, codes, errors (below everything)
    ops/     CLI, role verbs, supervisor, admin commands (above everything)

Each sub-package's ``__init__`` says what it takes in, what it hands on and which
sub-packages it may import (``MAY_IMPORT``); ``tests/test_layout.py`` checks the imports.
"""

__version__ = "0.1.0"
